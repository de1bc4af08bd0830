"""RTCWorkerClient: the worker of the specification. It receives jobs, validates their inputs,
runs them and reports.

One worker serves many client sessions at once (one :class:`WorkerSession` each) and one job at
a time per session. A session starts with mutual authentication (``HELLO``, ``AUTH_CHALLENGE``,
``AUTH_PROOF``, ``WELCOME``; see :mod:`rtcxfer.protocol.auth`); until the client has proved the token no
job frame is looked at. A job is announced with ``JOB_SUBMIT``, its input arrives by any
transport (``SHARED_INPUT_PATH`` or ``FILE_META``...), it runs once the input is complete, and
its results go back by shared path or by a byte-moving transport before ``JOB_COMPLETE``.
A client that speaks only the specification's messages (no ``JOB_SUBMIT``) gets an implicit
job for each input it sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import shutil
import stat
import tempfile
import time
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import attrs

from rtcxfer.files import kept_partials as resume
from rtcxfer.files import paths as security
from rtcxfer.files.filesystem import FilesystemAdapter
from rtcxfer.files.safezip import ZipLimits, extract_zip
from rtcxfer.files.shared_storage import detect_shared_root
from rtcxfer.log import logger
from rtcxfer.net.link import Link
from rtcxfer.net.rate_limits import LogThrottle, Startups, TokenBucket, WorkerLimits
from rtcxfer.net.signaling import PeerLeft, Relay, SignalingServerError
from rtcxfer.net.signaling.handshake import HandshakeRefusal, SdpAnswer, SdpOffer, decode_handshake
from rtcxfer.protocol import auth, texts
from rtcxfer.protocol.engine import APPLICATION, Session
from rtcxfer.protocol.errors import (
    ArchiveError,
    JobError,
    PathError,
    RtcxferError,
    SignalingError,
    StorageFullError,
    describe,
)
from rtcxfer.protocol.frames import (
    PROTOCOL_VERSION,
    AuthChallenge,
    AuthFailed,
    AuthProof,
    Frame,
    Hello,
    JobAccepted,
    JobCancel,
    JobComplete,
    JobFailed,
    JobLog,
    JobProgress,
    JobStatus,
    JobSubmit,
    PathErrorFrame,
    ProtocolErrorFrame,
    Welcome,
    WorkerBusy,
    quote_for_log,
)
from rtcxfer.protocol.manifest import Manifest, ManifestError
from rtcxfer.protocol.worker_description import validate_description
from rtcxfer.transport.base import ReceivedFile, Transport, TransportContext
from rtcxfer.transport.host import PluginHost
from rtcxfer.worker.description import build_description, gather_hardware
from rtcxfer.worker.jobs import SUPERVISOR_MARGIN, Executor, JobContext, run_manifest_command
from rtcxfer.worker.slots import JobSlots

#: Frames the worker application handles itself.
APPLICATION_FRAMES: tuple[type[Frame], ...] = (Hello, AuthProof, JobSubmit, JobCancel, ProtocolErrorFrame)
#: Signaling error codes that end the worker: its own configuration is wrong, not a peer's doing.
FATAL_SIGNALING_CODES = frozenset({"bad-token", "bad-message"})
#: Seconds between attempts to get back onto the signaling server (doubling up to the maximum).
RECONNECT_FIRST_DELAY, RECONNECT_MAX_DELAY = 0.5, 30.0
#: Log lines queued for sending before further lines are counted and dropped.
LOG_QUEUE_LINES = 10_000
UNAUTHENTICATED = "unauthenticated"
MIB = 1024 * 1024
#: How long a stopped job's input may take to stop arriving before its partial is kept (seconds).
INPUT_SETTLE_SECONDS = 3.0


@attrs.define
class Job:
    """One job of a session, from JOB_SUBMIT (or its implicit input) to its report."""

    job_id: str
    directory: Path
    results_via: str | None = None
    task: asyncio.Task | None = None
    #: The client cancelled it; its processes are being stopped.
    cancelled: bool = False
    #: When it was accepted (``time.monotonic()``), for the operator's log line.
    accepted_at: float = attrs.field(factory=time.monotonic)

    @property
    def incoming_dir(self) -> Path:
        return self.directory / "incoming"

    @property
    def output_dir(self) -> Path:
        return self.directory / "output"


class RTCWorkerClient:
    """The worker. Give it a token; it finds shared storage by itself (see :meth:`__init__`)."""

    def __init__(
        self,
        *,
        token: str | None = None,
        insecure_no_token: bool = False,
        shared_storage_root: str | os.PathLike[str] | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        executor: Executor | None = None,
        plugins: PluginHost | None = None,
        job_timeout: float | None = None,
        zip_limits: ZipLimits = ZipLimits(),
        max_file_bytes: int = 1 << 40,
        kill_grace_seconds: float = 5.0,
        transport_options: dict | None = None,
        limits: WorkerLimits = WorkerLimits(),
        job_env_allow: tuple[str, ...] = (),
        legacy: bool = False,
        slots: int = 1,
        labels: dict[str, str] | None = None,
    ) -> None:
        """Shared storage: ``shared_storage_root`` if given, else ``$SHARED_STORAGE_ROOT``,
        else a known container mount point (``/home/jovyan/vast/amick``...); none means the
        worker offers no shared-fs transport. ``executor`` replaces the manifest command (an
        async callable taking a :class:`~rtcxfer.worker.jobs.JobContext`).

        A worker without a ``token`` would run any peer's job: it is refused unless
        ``insecure_no_token=True`` says that is really wanted. ``limits`` bound what peers that
        have not authenticated may cost; ``job_env_allow`` names environment variables passed
        to jobs beyond :data:`rtcxfer.worker.jobs.DEFAULT_JOB_ENV`. ``legacy`` also serves clients of
        sleap-rtc's existing data-channel protocol (:mod:`rtcxfer.legacy`): a session whose first
        message is not ``HELLO``, on a channel of any label."""
        if token is None and not insecure_no_token:
            raise ValueError(
                "a worker needs a token (every client must prove it knows it); "
                "pass insecure_no_token=True to serve anyone who can reach it"
            )
        if token is not None and not token:
            raise ValueError("the token must not be empty")
        choice = detect_shared_root(shared_storage_root)
        #: The shared storage root (a resolved Path), or None when none was found.
        self.shared_storage_root: Path | None = choice.root
        self.shared_storage_source = choice.source
        #: The FilesystemAdapter over the shared storage, or None.
        self.fs_adapter: FilesystemAdapter | None = FilesystemAdapter(choice.root) if choice.root else None
        if choice.root is not None:
            logger.info("worker shared storage root: {} (from {})", choice.root, choice.source)
        self.token = token
        if token is None:
            logger.warning("worker runs WITHOUT a token: anyone who reaches it can run jobs on it")
        elif (weakness := auth.weak_token_reason(token)) is not None:
            logger.warning(
                "weak token: {}. A peer in the room posing as this worker gets each client's proof and can "
                "try guesses offline; use a long random one: python3 -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'",
                weakness,
            )
        if work_dir:
            # Absolute: jobs run inside their package folder and get paths under this one.
            self.work_dir = Path(work_dir).absolute()
            self.work_dir.mkdir(parents=True, exist_ok=True)
            self._remove_work_dir = None
        else:
            self.work_dir = Path(tempfile.mkdtemp(prefix="rtcxfer-worker-"))
            # A directory the worker made for itself goes with it (close(), or at exit at the latest).
            self._remove_work_dir = weakref.finalize(self, _remove_quietly, self.work_dir)
        #: Partial uploads of interrupted sessions, for a re-run to resume (:mod:`rtcxfer.files.kept_partials`).
        self.kept_partials_dir = self.work_dir / resume.DIRECTORY_NAME
        resume.prune(self.kept_partials_dir)
        self.plugins = plugins or PluginHost()
        self.executor: Executor = executor or run_manifest_command
        self.job_timeout = job_timeout
        self.zip_limits = zip_limits
        self.max_file_bytes = max_file_bytes
        self.kill_grace_seconds = kill_grace_seconds
        self.transport_options = dict(transport_options or {})
        self.limits = limits
        self.job_env_allow = tuple(job_env_allow)
        self.legacy = legacy
        self._on_notice: Callable[[str], None] | None = None
        #: Set once the worker itself is stopping: jobs it cuts short are reported as such.
        self.stopping = False
        self.sessions: set = set()
        #: Counts of finished jobs by outcome, for status output and tests.
        self.stats = {"completed": 0, "failed": 0}
        self._startups = Startups(limits)
        self._refusal_log = LogThrottle()
        self._signaling_error_log = LogThrottle()
        #: Replies to relayed payloads that are not offers: they cost this worker's own signaling budget.
        self._payload_replies = TokenBucket(1.0, 5)
        self._background: set[asyncio.Task] = set()
        #: Job slots and draining; every change is published to the room (see :meth:`description`).
        self.job_slots = JobSlots(slots, on_change=self._publish_description)
        self.labels = validate_description({"labels": dict(labels or {})})["labels"]  # DescriptionError now, not later
        self.started_at = time.time()
        self._hardware: dict | None = None
        self._signaling = None

    def description(self) -> dict:
        """What this worker tells its room about itself (:mod:`rtcxfer.worker.description`)."""
        if self._hardware is None:
            self._hardware = gather_hardware(self.work_dir, self.shared_storage_root)
        return build_description(
            self._hardware,
            work_dir=self.work_dir,
            transports=self.offered_transports(),
            labels=self.labels,
            slots=self.job_slots.slots,
            running=self.job_slots.running,
            draining=self.job_slots.draining,
            started_at=self.started_at,
        )

    def drain(self) -> None:
        """Finish the running jobs and accept no new ones (``--drain``, SIGUSR1)."""
        logger.warning("worker draining: {} running job(s) finish, no new ones are accepted", self.job_slots.running)
        self.job_slots.drain()

    def _publish_description(self) -> None:
        signaling = self._signaling
        if signaling is None or not signaling.connected:
            return
        task = asyncio.ensure_future(self._send_description(signaling))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_description(self, signaling) -> None:
        try:
            await signaling.describe(self.description())
        except SignalingError as error:
            logger.debug("description not sent: {}", describe(error))

    def close(self) -> None:
        """Remove the work directory if the worker created it (a temporary one)."""
        if self._remove_work_dir is not None:
            self._remove_work_dir()

    def tell_operator(self, text: str) -> None:
        """One line for whoever runs the worker (``on_notice`` of :meth:`serve`, else the log)."""
        if self._on_notice is not None:
            self._on_notice(text)
        else:
            logger.info("{}", text)

    def offered_transports(self) -> list[str]:
        """Names of the transports this worker can use, best first."""
        context = self._context_template()
        return [info.name for info in self.plugins.transports() if info.transport.usable(context)]

    def _context_template(self) -> TransportContext:
        return TransportContext(
            role="worker",
            incoming_dir=self.work_dir,
            shared_root=self.shared_storage_root,
            max_file_bytes=self.max_file_bytes,
            options={**self.transport_options, "shared-fs": {"fs_adapter": self.fs_adapter}},
            kept_partials_dir=self.kept_partials_dir,
        )

    async def serve_channel(
        self,
        channel,
        name: str = "session",
        *,
        auth_deadline: float | None = None,
        on_authenticated: Callable[[], None] | None = None,
    ) -> None:
        """Serve one client over an open data channel until it closes.

        The client must authenticate within ``auth_deadline`` seconds (default: the limits'
        ``auth_timeout``) or the session is closed.
        """
        auth_deadline = self.limits.auth_timeout if auth_deadline is None else auth_deadline
        if self.legacy:
            from rtcxfer.worker.legacy_session import LegacySession, peek_dialect

            # The dialect is the first message's: HELLO is rtcxfer's, anything else legacy.
            peeked = await asyncio.wait_for(peek_dialect(channel), auth_deadline)
            if peeked is None:
                return
            channel, speaks_legacy = peeked
            if speaks_legacy:
                # Admitted by the signaling server's token alone (see the start-up warning).
                if on_authenticated is not None:
                    on_authenticated()
                await self._run_session(LegacySession(self, channel, name))
                return
        await self._run_session(WorkerSession(self, channel, name, on_authenticated=on_authenticated), auth_deadline)

    async def _run_session(self, session, *args) -> None:
        self.sessions.add(session)
        try:
            await session.run(*args)
        finally:
            self.sessions.discard(session)

    async def serve(
        self,
        signaling_url: str,
        room: str,
        *,
        peer_id: str = "worker",
        signaling_token: str | None = None,
        peer_options=None,
        on_ready: Callable[[], None] | None = None,
        on_notice: Callable[[str], None] | None = None,
    ) -> None:
        """Register on the signaling server and serve every client that connects, until cancelled.

        ``on_notice`` receives one line of text about a session worth showing an operator
        (the SCTP packet size each connection uses, and why).

        Nothing a peer or the server does ends this: errors the server sends are logged, and a
        lost connection (the server restarted, or closed this socket) or a peer squatting this
        worker's id is met by registering again after a growing pause. Only a failure of the
        first connection or a refusal of the worker's own configuration (a wrong signaling
        token) raises :class:`~rtcxfer.protocol.errors.SignalingError`.
        """
        from rtcxfer.net import peer as rtc

        if signaling_token is None and self.token:
            # What `rtcxfer signal --token` expects when given the worker's token.
            signaling_token = auth.signaling_token(self.token)
        self._on_notice = on_notice
        if self.legacy:
            logger.warning(
                "legacy protocol on: a session in sleap-rtc's protocol cannot present this worker's token "
                "and is authenticated only by the signaling server's token"
            )

        options = peer_options or rtc.PeerOptions()
        tasks: dict[asyncio.Task, str] = {}  # each session's task -> its client's peer id
        delay = RECONNECT_FIRST_DELAY
        registrations = 0

        def registered() -> None:
            nonlocal delay, registrations
            registrations += 1
            delay = RECONNECT_FIRST_DELAY
            if registrations == 1 and on_ready is not None:
                on_ready()

        try:
            while True:
                try:
                    await self._serve_registration(signaling_url, room, peer_id, signaling_token, options, tasks,
                                                   registered)
                except SignalingServerError as error:
                    if error.code in FATAL_SIGNALING_CODES or (not registrations and error.code != "duplicate-peer"):
                        raise
                    if error.code == "duplicate-peer":
                        logger.error(
                            "another peer is registered as {!r} in room {!r}: another worker (give each worker its own "
                            "id with --peer-id NAME), this worker's previous connection not gone yet, or an impostor "
                            "if the signaling server has no token (clients authenticate this worker and refuse "
                            "impostors); retrying",
                            peer_id,
                            room,
                        )
                    else:
                        logger.warning("the signaling server refused the worker: {}; retrying", describe(error))
                except SignalingError as error:
                    if not registrations:
                        raise
                    logger.warning("cannot reach the signaling server ({}); retrying", describe(error))
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_DELAY)
        finally:
            await self._stop_sessions(tasks)

    async def _stop_sessions(self, tasks: dict[asyncio.Task, str]) -> None:
        self.stopping = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve_registration(self, signaling_url, room, peer_id, signaling_token, options, tasks, registered):
        """One registration on the signaling server: answer offers until the connection ends
        (returns normally) or registration is refused (raises)."""
        from rtcxfer.net.signaling import SignalingClient

        if self._hardware is None:
            self._hardware = await asyncio.to_thread(gather_hardware, self.work_dir, self.shared_storage_root)
        async with (
            SignalingClient(
                signaling_url, room, "worker", peer_id, signaling_token, description=self.description()
            ) as signaling,
            self._sessions_stopped_before_leaving(tasks),
        ):
            logger.info("worker {} ready in room {} at {}", peer_id, room, signaling_url)
            self._signaling = signaling
            registered()
            while True:
                try:
                    event = await signaling.receive()
                except SignalingServerError as error:
                    self._signaling_error(error, tasks)
                    continue
                except SignalingError as error:
                    logger.warning("signaling connection ended: {}; registering again", describe(error))
                    return
                if isinstance(event, Relay):
                    offer = decode_handshake(event.payload)
                    if isinstance(offer, SdpOffer):
                        self._offer(signaling, event.sender, offer, options, tasks)
                    else:
                        self._unexpected_payload(signaling, event.sender, event.payload)
                elif isinstance(event, PeerLeft):
                    # Clients stay in the room for their whole session, so leaving it ends
                    # the session: a killed client is noticed now, not when ICE consent
                    # expires half a minute later, and its job is stopped.
                    self._end_sessions_of(event.peer_id, tasks, "left the room")

    @contextlib.asynccontextmanager
    async def _sessions_stopped_before_leaving(self, tasks: dict[asyncio.Task, str]):
        """When the worker stops, its sessions report their jobs as stopped while the clients
        can still hear it, before leaving the room tells them it is gone."""
        try:
            yield
        except asyncio.CancelledError:
            await self._stop_sessions(tasks)
            raise

    def _signaling_error(self, error: SignalingServerError, tasks: dict[asyncio.Task, str]) -> None:
        """An error from the server about something this worker sent: never a reason to stop."""
        quiet = self._signaling_error_log.check()
        if quiet is not None:
            more = f" ({quiet} more since the last report)" if quiet else ""
            logger.warning("signaling server reports: {}{}", describe(error), more)
        if error.code == "unknown-peer" and error.peer_id:
            # The answer went to a client that already left: nothing can come of that session.
            self._end_sessions_of(error.peer_id, tasks, "is gone")

    def _end_sessions_of(self, client_id: object, tasks: dict[asyncio.Task, str], why: str) -> None:
        for task, owner in list(tasks.items()):
            if owner == client_id:
                logger.info("client {} {}; ending its session", client_id, why)
                task.cancel()

    def _unexpected_payload(self, signaling, sender: str, payload: object) -> None:
        """Tell the sender of a relayed payload that is not an offer what a worker expects
        (a browser's ``{"type": "offer"}``, say), instead of leaving it waiting in silence;
        at a bounded rate, and never in answer to an error."""
        if isinstance(payload, dict) and payload.get("kind") == "error":
            return
        if not self._payload_replies.take():
            return
        if isinstance(payload, dict):
            keys = ", ".join(sorted(quote_for_log(str(key), 32) for key in payload)[:8]) or "none"
            got = f"a payload with the keys {keys}"
        else:
            got = f"a {type(payload).__name__}"
        message = f'a worker expects the payload {{"kind": "offer", "sdp": <the SDP offer>}}; got {got}'
        logger.info("relay from {} is not an offer ({}); told it what is expected", sender, got)
        task = asyncio.create_task(self._send_quietly(signaling, sender, HandshakeRefusal(message).to_payload()))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    async def _send_quietly(signaling, peer_id: str, payload: dict) -> None:
        try:
            await signaling.send_to(peer_id, payload)
        except SignalingError as error:
            logger.debug("could not relay to {}: {}", peer_id, describe(error))

    def _offer(self, signaling, client_id: str, offer: SdpOffer, options, tasks: dict[asyncio.Task, str]) -> None:
        refusal = self._startups.admit(client_id)
        if refusal is not None:
            # Dropped unanswered: an answer would cost signaling budget, a peer connection sockets.
            quiet = self._refusal_log.check()
            if quiet is not None:
                more = f" ({quiet} more dropped since the last report)" if quiet else ""
                logger.warning("dropped an offer from {}: {}{}", client_id, refusal, more)
            return
        task = asyncio.create_task(self._answer(signaling, client_id, offer, options))
        tasks[task] = client_id
        task.add_done_callback(lambda done: tasks.pop(done, None))

    async def _answer(self, signaling, client_id: str, offer: SdpOffer, options) -> None:
        """Answer one admitted offer; its startup slot is held until the client authenticates."""
        from rtcxfer.net import peer as rtc

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.auth_timeout
        release = lambda: self._startups.release(client_id)  # noqa: E731
        peer = None
        try:
            # A legacy client labels its channel as it likes ("my-data-channel").
            peer = rtc.PeerConnection(options, any_channel_label=self.legacy)
            on_notice = self._on_notice
            if on_notice is not None:
                peer.watch_packet_size(lambda size: on_notice(f"client {client_id}: {size.describe()}"))
            await signaling.send_to(client_id, SdpAnswer(await peer.accept_offer(offer.sdp)).to_payload())
            channel = await peer.wait_channel_open(max(0.0, deadline - loop.time()))
            logger.info("client {} connected", client_id)
            await self.serve_channel(
                channel,
                name=f"session {client_id}",
                auth_deadline=max(0.0, deadline - loop.time()),
                on_authenticated=release,
            )
        except (RtcxferError, asyncio.TimeoutError, ValueError) as error:
            logger.warning("session with {} ended: {}", client_id, describe(error) or type(error).__name__)
        except Exception as error:  # noqa: BLE001
            # A peer's SDP that trips aiortc, or a bug of ours: it costs this session only.
            logger.opt(exception=error).error("session with {} failed", client_id)
        finally:
            release()
            if peer is not None:
                await complete_despite_cancellation(peer.close())
                logger.info("client {} disconnected", client_id)


class _Refuser:
    """Handles every frame of a session that has not authenticated yet."""

    def __init__(self, session: WorkerSession) -> None:
        self.session = session

    async def on_frame(self, frame: Frame) -> None:
        await self.session.refuse("authenticate with HELLO first")

    async def on_chunk(self, event) -> None:
        await self.session.refuse("authenticate with HELLO first")


class WorkerSession:
    """The worker's side of one client session.

    Until the client has proved the token (``HELLO``, ``AUTH_CHALLENGE``, ``AUTH_PROOF``; see
    :mod:`rtcxfer.protocol.auth`) nothing but those frames is looked at, nothing is created on disk, and
    the session is closed after a couple of unusable messages or when its deadline passes.
    """

    def __init__(
        self, worker: RTCWorkerClient, channel, name: str, *, on_authenticated: Callable[[], None] | None = None
    ) -> None:
        self.worker = worker
        self.name = name
        self.authenticated = False
        self._on_authenticated = on_authenticated
        self._client_nonce: str | None = None
        self._client_transports = ""
        self._worker_nonce: str | None = None
        host = worker.plugins
        self.engine = Session(self._claim, catalogue=host.catalogue, application_frames=APPLICATION_FRAMES)
        self.link = Link(channel, self.engine, name=name, max_violations=worker.limits.max_bad_frames_unauthenticated)
        #: The session's private directory, made once the client has authenticated.
        self.directory: Path | None = None
        self.context = worker._context_template()
        self.context.on_file = self._on_file
        self.transports: dict[str, Transport] = {
            info.name: info.transport(self.link, self.context) for info in host.transports()
        }
        for transport_name, transport in self.transports.items():
            self.link.add_handler(transport_name, transport)
        self.link.add_handler(APPLICATION, self)
        self.link.add_handler(UNAUTHENTICATED, _Refuser(self))
        self.job: Job | None = None
        #: Every job task not yet ended, the current one and one still removing its files.
        self._job_tasks: set[asyncio.Task] = set()
        self._log_queue: asyncio.Queue[Frame] = asyncio.Queue(LOG_QUEUE_LINES)
        self._dropped_lines = 0

    def _claim(self, frame: Frame) -> str | None:
        if not self.authenticated:
            return UNAUTHENTICATED
        return self.worker.plugins.claim(frame)

    async def run(self, auth_deadline: float | None = None) -> None:
        """Serve until the channel closes; unauthenticated after ``auth_deadline`` s: closed."""
        watchdog = None
        if auth_deadline is not None:
            watchdog = asyncio.create_task(self._enforce_auth_deadline(auth_deadline))
        try:
            await self.link.run()
        finally:
            if watchdog is not None:
                watchdog.cancel()
            # A cancel (the client left the room) must not cut the cleanup short: the job's
            # processes are stopped and the session's files removed in any case.
            await complete_despite_cancellation(self._clean_up(watchdog))

    async def _enforce_auth_deadline(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if not self.authenticated and not self.link.closed:
            await self.refuse(f"no authentication within {seconds:.3g} s")

    async def _clean_up(self, watchdog: asyncio.Task | None) -> None:
        if watchdog is not None:
            await asyncio.gather(watchdog, return_exceptions=True)
        job = self.job
        if job is not None and job.task is not None:
            job.task.cancel()
            await asyncio.gather(job.task, return_exceptions=True)
        elif job is not None:
            self.worker.tell_operator(f"job {job.job_id} stopped: the client left before its input arrived")
            await self._keep_partial_input(job)
        # A job that has reported may still be removing its directory: removing the session's
        # at the same time fails on names the other removal took first, and leaves it behind.
        await asyncio.gather(*self._job_tasks, return_exceptions=True)
        self.worker.job_slots.release(self)
        if self.directory is not None:
            await asyncio.to_thread(_remove_quietly, self.directory)

    async def refuse(self, reason: str) -> None:
        logger.warning("{}: refused: {}", self.name, reason)
        try:
            await self.link.send(AuthFailed(reason))
        except RtcxferError as error:
            logger.debug("{}: refusal not sent: {}", self.name, describe(error))
        self.link.close()

    # --- application frames -----------------------------------------------------------

    async def on_frame(self, frame: Frame) -> None:
        if isinstance(frame, Hello):
            await self._hello(frame)
        elif isinstance(frame, AuthProof):
            await self._proof(frame)
        elif not self.authenticated:
            await self.refuse("authenticate with HELLO first")
        elif isinstance(frame, JobSubmit):
            await self._submit(frame)
        elif isinstance(frame, JobCancel):
            await self._cancel(frame.job_id)
        elif isinstance(frame, ProtocolErrorFrame):
            logger.warning("{}: client reports a protocol error: {}", self.name, quote_for_log(frame.reason))

    def on_closed(self) -> None:
        if self.job is not None and self.job.task is not None:
            if self.worker.stopping:
                return  # the shutdown stops the job and reports it
            logger.warning("{}: client disconnected; stopping job {}", self.name, self.job.job_id)
            self.job.task.cancel()

    async def _hello(self, frame: Hello) -> None:
        if self.authenticated or self._client_nonce is not None:
            await self.refuse("HELLO was already sent in this session")
            return
        if frame.version != PROTOCOL_VERSION:
            await self.refuse(f"unsupported protocol version {frame.version} (this worker speaks {PROTOCOL_VERSION})")
            return
        if not auth.is_nonce(frame.client_nonce):
            await self.refuse(f"HELLO needs a nonce of {2 * auth.NONCE_BYTES} lowercase hex digits")
            return
        self._client_nonce, self._client_transports = frame.client_nonce, frame.transports
        self._worker_nonce = auth.new_nonce()
        await self.link.send(AuthChallenge(self._worker_nonce))

    def _transcript(self) -> auth.Transcript:
        assert self._client_nonce is not None and self._worker_nonce is not None
        local, remote = auth.channel_fingerprints(self.link.channel)
        return auth.Transcript(self._client_nonce, self._worker_nonce, remote, local, self._client_transports)

    async def _proof(self, frame: AuthProof) -> None:
        if self.authenticated or self._worker_nonce is None:
            await self.refuse("AUTH_PROOF out of order: send HELLO and answer its AUTH_CHALLENGE")
            return
        transcript = self._transcript()
        token = self.worker.token
        if token is not None and not auth.proofs_match(auth.client_proof(token, transcript), frame.proof):
            await self.refuse("invalid token")
            return
        busy = self.worker.job_slots.take(self)
        if busy is not None:
            # Only now, to a client that proved the token: the slots are the room's business.
            logger.info("{}: refused, busy: {}", self.name, busy)
            try:
                await self.link.send(WorkerBusy(busy))
            except RtcxferError as error:
                logger.debug("{}: busy reply not sent: {}", self.name, describe(error))
            self.link.close()
            return
        self.authenticated = True
        self.link.max_violations = self.worker.limits.max_bad_frames
        self.directory = Path(tempfile.mkdtemp(prefix="session-", dir=self.worker.work_dir))
        self.context.incoming_dir = self.directory
        if self._on_authenticated is not None:
            self._on_authenticated()
        logger.info("{}: authenticated", self.name)
        transports = ",".join(self.worker.offered_transports()) or "none"
        proof = auth.worker_proof(token, transcript, transports) if token is not None else auth.NO_PROOF
        await self.link.send(Welcome(PROTOCOL_VERSION, transports, proof))

    async def _submit(self, frame: JobSubmit) -> None:
        stale = None
        ending = self.job.task if self.job is not None and self.job.cancelled else None
        if ending is not None:
            # JOB_CANCEL then JOB_SUBMIT: let the cancelled job finish stopping its processes
            # (at most its grace and the supervisor's margin) rather than refuse the new one.
            await asyncio.wait({ending}, timeout=self.worker.kill_grace_seconds + SUPERVISOR_MARGIN + 5)
        if self.worker.job_slots.draining and (self.job is None or self.job.job_id != frame.job_id):
            await self.link.send(JobFailed(f"Job {frame.job_id}: this worker is draining and accepts no new jobs"))
            return
        if self.job is not None:
            if self.job.task is not None or self.job.job_id != frame.job_id:
                await self.link.send(ProtocolErrorFrame(f"job {self.job.job_id} is still running in this session"))
                return
            # The client's retry of a job whose input never arrived (its transport failed
            # before delivering, e.g. an s3 upload was refused): start that job over.
            logger.info("{}: job {} submitted again before its input arrived", self.name, frame.job_id)
            stale, self.job = self.job, None
        if frame.results_via not in self.transports:
            await self.link.send(JobFailed(f"Job {frame.job_id}: no transport {frame.results_via!r} on this worker"))
        else:
            self.job = self._new_job(frame.job_id, frame.results_via)
            await self.link.send(JobAccepted(frame.job_id))
        if stale is not None:
            await self._drop_input(stale)

    def _new_job(self, job_id: str, results_via: str | None) -> Job:
        assert self.directory is not None, "jobs exist only in authenticated sessions"
        job = Job(job_id, Path(tempfile.mkdtemp(prefix="job-", dir=self.directory)), results_via)
        job.incoming_dir.mkdir()
        job.output_dir.mkdir()
        self.context.incoming_dir = job.incoming_dir
        logger.info("{}: job {} accepted (results via {})", self.name, job_id, results_via or "whatever fits")
        self.worker.tell_operator(f"job {job_id} accepted ({self.name})")
        return job

    async def _cancel(self, job_id: str) -> None:
        job = self.job
        if job is None or job.job_id != job_id:
            return
        logger.info("{}: client cancelled job {}", self.name, job_id)
        job.cancelled = True
        if job.task is not None:
            job.task.cancel()  # its own ending reports JOB_FAILED and removes its files
            return
        # Accepted, but its input never arrived: nothing runs, so clear it here, or every later
        # JOB_SUBMIT in this session would be told the job is still running.
        self.job = None
        self.context.incoming_dir = self.directory
        self.worker.stats["failed"] += 1
        # A task the session's cleanup waits for: the client's Ctrl-C ends the session right
        # after its cancel, and the session's removal must not take the partial with it.
        dropping = asyncio.create_task(self._drop_input(job))
        self._job_tasks.add(dropping)
        dropping.add_done_callback(self._job_tasks.discard)
        await self._report(JobFailed(f"Job {job_id} was cancelled"))

    async def _drop_input(self, job: Job) -> None:
        """Keep a job's partial input for a resume, then remove the job's files."""
        await self._keep_partial_input(job)
        await asyncio.to_thread(_remove_quietly, job.directory)

    async def _keep_partial_input(self, job: Job) -> None:
        """An upload that stopped part-way is kept for the client's re-run to resume."""
        # The cancel comes over the data channel, the bytes may come over a connection of their
        # own (direct): let the receiver see the sender stop and let go of the partial first.
        deadline = time.monotonic() + INPUT_SETTLE_SECONDS
        while resume.receiving_into(job.incoming_dir) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        kept = self.worker.kept_partials_dir
        if await asyncio.to_thread(resume.keep_partials, job.incoming_dir, kept):
            await asyncio.to_thread(resume.prune, kept)

    # --- running a job ----------------------------------------------------------------

    async def _on_file(self, received: ReceivedFile) -> None:
        """A transport delivered an input file: it is the package of the current job."""
        if self.job is None:
            self.job = self._new_job(f"job-{secrets.token_hex(4)}", None)
        if self.job.task is not None:
            logger.warning(
                "{}: job {} already has its input; ignoring {}",
                self.name,
                self.job.job_id,
                quote_for_log(received.name),
            )
            return
        self.job.task = asyncio.create_task(self._run_job(self.job, received))
        self._job_tasks.add(self.job.task)
        self.job.task.add_done_callback(self._job_tasks.discard)

    async def _run_job(self, job: Job, received: ReceivedFile) -> None:
        sender = asyncio.create_task(self._send_logs())
        try:
            await self._run_job_steps(job, received)
        except asyncio.CancelledError:
            self.worker.stats["failed"] += 1
            if self.worker.stopping and not job.cancelled:
                await self._report(JobFailed(f"Job {job.job_id} stopped: {texts.WORKER_SHUTTING_DOWN}"))
            else:
                await self._report(JobFailed(f"Job {job.job_id} was cancelled"))
        except Exception as error:  # noqa: BLE001
            # A bug, or a limit of ours a package found (deep nesting...): the client must still
            # hear that the job ended, or it waits forever; the worker goes on serving.
            logger.opt(exception=error).error("{}: job {} failed unexpectedly", self.name, job.job_id)
            self.worker.stats["failed"] += 1
            reason = f"internal error on the worker ({type(error).__name__})"
            await self._report(JobFailed(f"Job {job.job_id} failed: {reason}"))
        finally:
            await self._log_queue.join()
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            self.context.incoming_dir = self.directory
            if self.job is job:
                self.job = None
            await complete_despite_cancellation(asyncio.to_thread(_remove_quietly, job.directory))

    async def _run_job_steps(self, job: Job, received: ReceivedFile) -> None:
        await self.link.send(JobStatus(job.job_id, "extracting"))
        try:
            package = await asyncio.to_thread(self._extract, job, received)
        except ArchiveError as error:
            logger.error("{}: package {} is unusable: {}", self.name, quote_for_log(received.name), describe(error))
            self.worker.stats["failed"] += 1
            if received.transport == "shared-fs":
                # The spec's reply, which tells the client to retry over the RTC transfer.
                await self._report(PathErrorFrame(f"{texts.CORRUPTED}: {received.name}"))
            else:
                await self._report(JobFailed(f"Job {job.job_id}: package is corrupted or invalid: {error}"))
            return
        except (PathError, StorageFullError) as error:
            self.worker.stats["failed"] += 1
            await self._report(JobFailed(f"Job {job.job_id}: cannot read the package: {error}"))
            return
        try:
            manifest = await asyncio.to_thread(Manifest.load, package)
        except ManifestError as error:
            if self.worker.executor is run_manifest_command:
                self.worker.stats["failed"] += 1
                await self._report(JobFailed(f"Job {job.job_id}: {error}"))
                return
            manifest = None  # an application executor may not need a manifest
        await self.link.send(JobStatus(job.job_id, "running"))
        started = time.monotonic()
        context = JobContext(
            job_id=job.job_id,
            package_dir=package,
            env_allow=self.worker.job_env_allow,
            output_dir=job.output_dir,
            manifest=manifest,
            log=lambda line: self._queue_log(JobLog(job.job_id, line)),
            progress=lambda done, total: self._queue_log(JobProgress(job.job_id, done, total)),
            timeout_seconds=self.worker.job_timeout,
            kill_grace_seconds=self.worker.kill_grace_seconds,
        )
        try:
            await self.worker.executor(context)
        except JobError as error:
            self.worker.tell_operator(f"job {job.job_id} ran {time.monotonic() - started:.1f} s")
            self.worker.stats["failed"] += 1
            await self._report(JobFailed(f"Job {job.job_id} failed: {error}"))
            return
        self.worker.tell_operator(f"job {job.job_id} ran {time.monotonic() - started:.1f} s")
        await self.link.send(JobStatus(job.job_id, "sending-results"))
        await self._send_results(job)

    def _extract(self, job: Job, received: ReceivedFile) -> Path:
        started = time.perf_counter()
        with received.open() as archive:
            result = extract_zip(archive, job.directory, self.worker.zip_limits)
        elapsed = time.perf_counter() - started
        self.worker.tell_operator(
            f"job {job.job_id} input {quote_for_log(received.name)} ({received.size} bytes) via {received.transport}"
        )
        logger.info(
            "{}: read {} ({} bytes, via {}) and extracted {} files in {:.3f} s",
            self.name,
            received.name,
            received.size,
            received.transport,
            result.files,
            elapsed,
        )
        return result.root

    async def _send_results(self, job: Job) -> None:
        files = await asyncio.to_thread(_result_files, job.output_dir)
        total = sum(size for _, size in files)
        shared = self.transports.get("shared-fs")
        shared_output = getattr(shared, "output", None)
        via = job.results_via or ("shared-fs" if shared_output else "rtc-chunked")
        if via == "shared-fs":
            if shared_output is None:
                self.worker.stats["failed"] += 1
                await self._report(JobFailed(f"Job {job.job_id}: no SHARED_OUTPUT_PATH was given for the results"))
                return
            relative, _ = shared_output
            try:
                await asyncio.to_thread(
                    publish_shared_results, self.worker.shared_storage_root, job.output_dir, files, relative, self.name
                )
            except StorageFullError:
                self.worker.stats["failed"] += 1
                await self._report(JobFailed(texts.DISK_FULL))
                return
            except PathError as error:
                self.worker.stats["failed"] += 1
                await self._report(JobFailed(f"Job {job.job_id}: cannot write results: {error}: {error.peer_path}"))
                return
        else:
            relative = job.job_id
            transport = self.transports[via]
            try:
                for relative_name, _ in files:
                    await transport.send_file(job.output_dir / relative_name, relative_name)
            except RtcxferError as error:
                # Unreported, the client would wait for JOB_COMPLETE until the session ends.
                logger.error("{}: results of job {} not sent via {}: {}", self.name, job.job_id, via, describe(error))
                self.worker.stats["failed"] += 1
                await self._report(JobFailed(f"Job {job.job_id}: cannot send results via {via}: {describe(error)}"))
                return
        self.worker.stats["completed"] += 1
        self.worker.tell_operator(f"job {job.job_id} results: {len(files)} files, {total} bytes via {via}")
        await self._report(JobComplete(job.job_id, relative, len(files), round(total / MIB, 2)))

    # --- reporting --------------------------------------------------------------------

    def _queue_log(self, frame: Frame) -> None:
        try:
            self._log_queue.put_nowait(frame)
        except asyncio.QueueFull:
            self._dropped_lines += 1

    async def _send_logs(self) -> None:
        while True:
            frame = await self._log_queue.get()
            try:
                await self.link.send(frame)
                if self._dropped_lines and self._log_queue.empty():
                    dropped, self._dropped_lines = self._dropped_lines, 0
                    await self.link.send(JobLog(frame.job_id, f"[rtcxfer] {dropped} lines of output were dropped"))
            except RtcxferError as error:
                logger.debug("{}: log line not sent: {}", self.name, describe(error))
            finally:
                self._log_queue.task_done()

    async def _report(self, frame: Frame) -> None:
        logger.info("{}: {}", self.name, frame.encode())
        if isinstance(frame, JobComplete):
            self.worker.tell_operator(f"job {frame.job_id} done")
        else:
            reason = quote_for_log(_reason_of(frame))
            if reason.startswith("Job "):  # "Job X failed: ...", "Job X stopped: ...", "Job X was cancelled"
                self.worker.tell_operator("j" + reason[1:])
            else:
                named = f"job {self.job.job_id} " if self.job is not None else ""
                self.worker.tell_operator(f"{named}failed: {reason}")
        # The job's last lines first: the client stops listening once it has the report.
        await self._log_queue.join()
        try:
            await self.link.send(frame)
        except RtcxferError as error:
            logger.warning("{}: could not report {}: {}", self.name, frame.TYPE, describe(error))


def publish_shared_results(
    root: Path, output_dir: Path, files: list[tuple[str, int]], relative_output: str, session_name: str
) -> None:
    """Copy the files of ``output_dir`` (regular files, as :func:`_result_files` lists them) under
    ``relative_output`` of the shared ``root``, fsync'ed; on a full disk remove what
    was written and raise :class:`StorageFullError`.

    Every directory is held open by descriptor (reached with no symlink followed) and every
    file is created fresh in it (:func:`security.create_fresh_at`), so neither a directory
    swapped for a symlink nor a hard link planted in the output directory makes the worker
    write, or remove, anything outside the shared root: cleanup unlinks names in the very
    directories the files were made in."""
    directories: dict[str, int] = {}
    created: list[tuple[int, str]] = []
    started = time.perf_counter()
    try:
        for name, _ in files:
            parent, _, base = f"{relative_output}/{name}".rpartition("/")
            if parent not in directories:
                directories[parent] = security.open_directory_beneath(root, parent, create=True)
            with security.open_beneath(output_dir, name) as source, security.create_fresh_at(
                directories[parent], base
            ) as sink:
                created.append((directories[parent], base))
                shutil.copyfileobj(source, sink, 1 << 20)
                sink.flush()
                os.fsync(sink.fileno())
        for fd in directories.values():
            security.fsync_directory_at(fd)
    except (OSError, StorageFullError) as error:
        for fd, base in created:
            with contextlib.suppress(OSError):
                os.unlink(base, dir_fd=fd)
        if isinstance(error, StorageFullError) or error.errno in (errno.ENOSPC, errno.EDQUOT):
            logger.error("{}: shared storage full; removed {} partial result files", session_name, len(created))
            raise StorageFullError(texts.DISK_FULL) from None
        raise
    finally:
        for fd in directories.values():
            os.close(fd)
    logger.info(
        "{}: wrote {} result files to shared {} in {:.3f} s",
        session_name,
        len(files),
        relative_output,
        time.perf_counter() - started,
    )


def _result_files(output_dir: Path) -> list[tuple[str, int]]:
    """Regular files under ``output_dir`` as (relative POSIX name, size); links are skipped."""
    found = []
    for directory, subdirs, names in os.walk(output_dir, followlinks=False):
        subdirs.sort()
        for name in sorted(names):
            path = Path(directory) / name
            info = path.lstat()
            if not stat.S_ISREG(info.st_mode):
                logger.warning("result {} is not a regular file; not sent", path)
                continue
            found.append((path.relative_to(output_dir).as_posix(), info.st_size))
    return found


_T = TypeVar("_T")


async def complete_despite_cancellation(awaitable: Awaitable[_T]) -> _T:
    """Await ``awaitable`` to its end even if the caller is cancelled meanwhile (cleanup that
    must not be cut short); a cancellation that arrived is re-raised once it is done."""
    task = asyncio.ensure_future(awaitable)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError()
    return result


def _remove_quietly(path: Path) -> None:
    try:
        security.remove_tree(path)
    except OSError as error:
        logger.error("could not remove {}: {}", path, error)


def _reason_of(frame: Frame) -> str:
    return str(getattr(frame, "reason", None) or getattr(frame, "message", None) or frame.encode())
