"""RTCWorkerClient: the worker of the specification (despite its name, the serving side).

It registers in a room of the signaling server and answers every client's offer: a peer
connection and a data channel per client, each served by a session of the dialect the client
speaks (:class:`~rtcxfer.worker.session.WorkerSession` for rtcxfer's protocol,
:class:`~rtcxfer.worker.legacy_session.LegacySession` for sleap-rtc's with ``legacy=True``).
Both run jobs through the one job pipeline (:mod:`rtcxfer.worker.pipeline`) and hold one of the
worker's job slots (:mod:`rtcxfer.worker.slots`) while they serve.

It also bounds what peers that have not authenticated may cost (:mod:`rtcxfer.worker.limits`),
tells the room what it runs on and how busy it is (:mod:`rtcxfer.worker.description`), and
survives whatever the signaling server or a peer does by registering again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from rtcxfer.files import kept_partials
from rtcxfer.files.filesystem import FilesystemAdapter
from rtcxfer.files.private_dirs import UnsafeDirectoryError, open_private_directory
from rtcxfer.files.safezip import ZipLimits
from rtcxfer.files.shared_storage import detect_shared_root
from rtcxfer.log import logger
from rtcxfer.net.rate_limits import LogThrottle, TokenBucket
from rtcxfer.net.signaling import PeerLeft, Relay, SignalingServerError, SignalingTlsError
from rtcxfer.net.signaling.client import split_signal_urls
from rtcxfer.net.signaling.handshake import HandshakeRefusal, SdpAnswer, SdpOffer, decode_handshake
from rtcxfer.protocol import auth, texts
from rtcxfer.protocol.errors import (
    IceFailedError,
    RtcxferError,
    SignalingError,
    describe,
)
from rtcxfer.protocol.frames import (
    quote_for_log,
)
from rtcxfer.protocol.worker_description import validate_description
from rtcxfer.transport.base import TransportContext
from rtcxfer.transport.host import PluginHost
from rtcxfer.worker.description import build_description, gather_hardware
from rtcxfer.worker.jobs import Executor, run_manifest_command
from rtcxfer.worker.legacy_session import LegacySession, peek_dialect
from rtcxfer.worker.limits import DUPLICATE_OFFER, Startup, Startups, WorkerLimits
from rtcxfer.worker.pipeline import complete_despite_cancellation, remove_quietly
from rtcxfer.worker.session import WorkerSession
from rtcxfer.worker.slots import JobSlots

#: Signaling error codes that end the worker: its own configuration is wrong, not a peer's doing.
FATAL_SIGNALING_CODES = frozenset({"bad-token", "bad-message"})
#: Seconds between attempts to get back onto the signaling server (doubling up to the maximum).
RECONNECT_FIRST_DELAY, RECONNECT_MAX_DELAY = 0.5, 30.0
#: The longest pause after ``duplicate-peer``: this worker's own registration on a replica that
#: died stays in the room only until its membership expires (seconds).
DUPLICATE_PEER_MAX_DELAY = 1.0


class _Reconnection:
    """When and where the worker registers again: a pause that doubles from
    :data:`RECONNECT_FIRST_DELAY` to :data:`RECONNECT_MAX_DELAY` and starts over once registered;
    the URLs in order, from the one after the server that just went away."""

    def __init__(self, urls: tuple[str, ...]) -> None:
        self.urls = urls
        self.registrations = 0
        self._start = 0
        self._delay = RECONNECT_FIRST_DELAY
        self._pause = RECONNECT_FIRST_DELAY
        self._attempts = 0
        self._since: float | None = None

    def urls_to_try(self) -> tuple[str, ...]:
        return self.urls[self._start:] + self.urls[: self._start]

    def registered(self, url: str) -> str:
        """Count a registration through ``url``; how long it took to get there, if it did not
        succeed at once (for the operator), else ''."""
        self.registrations += 1
        self._start = self.urls.index(url) if url in self.urls else 0
        attempts, since = self._attempts, self._since
        self._delay, self._attempts, self._since = RECONNECT_FIRST_DELAY, 0, None
        if not attempts or since is None:
            return ""
        return f"after {attempts} attempt{'s' if attempts != 1 else ''} in {time.monotonic() - since:.0f} s"

    def lost(self) -> None:
        """The connection ended: the next attempt starts with the next URL, at once."""
        self._start = (self._start + 1) % len(self.urls)
        self._delay = RECONNECT_FIRST_DELAY

    def next_delay(self, short: bool = False) -> float:
        """The pause before the next attempt (a failed one is counted)."""
        if self._since is None:
            self._since = time.monotonic()
        self._attempts += 1
        self._pause = min(self._delay, DUPLICATE_PEER_MAX_DELAY) if short else self._delay
        return self._pause

    async def pause(self) -> None:
        if self._attempts:
            await asyncio.sleep(self._pause)
            self._delay = min(self._delay * 2, RECONNECT_MAX_DELAY)
        else:
            # The connection ended without a failed attempt: try again at once, a little later
            # than at once (the server may be closing all its sockets).
            await asyncio.sleep(RECONNECT_FIRST_DELAY)
            self._attempts, self._since = 1, time.monotonic()


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
        # Checked (a real directory of this user that no one else may write) and held open, so
        # that nothing planted there beforehand or swapped in later is trusted; see
        # rtcxfer.files.private_dirs. Raises UnsafeDirectoryError.
        if work_dir:
            self._work = open_private_directory(work_dir, what="the work directory")
            self._remove_work_dir = None
        else:
            self._work = open_private_directory(tempfile.mkdtemp(prefix="rtcxfer-worker-"), what="the work directory")
            # A directory the worker made for itself goes with it (close(), or at exit at the latest).
            self._remove_work_dir = weakref.finalize(self, remove_quietly, self._work.real)
        #: The work directory, absolute and link-free: jobs run beneath it and are given paths in it.
        self.work_dir = self._work.real
        try:
            self._kept_partials = open_private_directory(
                self._work.via / kept_partials.DIRECTORY_NAME, what="the kept partial uploads directory"
            )
        except UnsafeDirectoryError:
            self._work.close()
            raise
        #: Partial uploads of interrupted sessions, for a re-run to resume
        #: (:mod:`rtcxfer.files.kept_partials`), reached through its open descriptor.
        self.kept_partials_dir = self._kept_partials.via
        kept_partials.prune(self.kept_partials_dir)
        self.plugins = plugins or PluginHost()
        self.executor: Executor = executor or run_manifest_command
        self.job_timeout = job_timeout
        self.zip_limits = zip_limits
        #: A job's package is extracted while it arrives, by every transport that moves bytes
        #: (:mod:`rtcxfer.files.stream_unzip`); ``False``: written whole, then extracted.
        self.extract_while_receiving = True
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
        self.job_slots = JobSlots(slots, on_change=self._slots_changed)
        self._drained: asyncio.Event | None = None
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
        """Finish the running jobs and accept no new ones (``--drain``, SIGUSR1, a first Ctrl-C);
        :meth:`wait_drained` returns once none runs. Whoever asked tells the operator (the
        command does, once)."""
        logger.debug("worker draining: {} running job(s) finish, no new ones are accepted", self.job_slots.running)
        self.job_slots.drain()

    async def wait_drained(self) -> None:
        """Return once the worker drains and no job runs any more: stopping it then cuts nothing short."""
        if self._drained is None:
            self._drained = asyncio.Event()
            self._check_drained()
        await self._drained.wait()

    def _slots_changed(self) -> None:
        self._check_drained()
        self._publish_description()

    def _check_drained(self) -> None:
        slots = self.job_slots
        if self._drained is not None and slots.draining and slots.running == 0:
            self._drained.set()

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
        self._kept_partials.close()
        self._work.close()
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
        context = self.transport_context()
        return [info.name for info in self.plugins.transports() if info.transport.usable(context)]

    def transport_context(self) -> TransportContext:
        """A new transport context with this worker's settings, for one session."""
        return TransportContext(
            role="worker",
            incoming_dir=self.work_dir,
            shared_root=self.shared_storage_root,
            shared_filesystem=self.fs_adapter,
            max_file_bytes=self.max_file_bytes,
            options={name: dict(value) for name, value in self.transport_options.items()},
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
        signaling_ssl=None,
    ) -> None:
        """Register on the signaling server and serve every client that connects, until cancelled.

        ``on_notice`` receives one line of text about a session worth showing an operator
        (the SCTP packet size each connection uses, and why).

        Each client's connection uses ``peer_options`` (default: loopback only) with the ICE
        servers the signaling server handed out added (the latest ones: TURN credentials are
        renewed while registered), on every interface once there are any
        (:meth:`~rtcxfer.net.peer.PeerOptions.with_signaled_ice_servers`). ``signaling_ssl`` is the
        ``ssl.SSLContext`` for a ``wss://`` server (None: the system's trusted CAs).

        ``signaling_url`` may name several servers (comma-separated, or a sequence): replicas that
        share their rooms (``rtcxfer signal --redis``). The worker registers through the first
        that answers; when its server goes away it registers again, starting with the next one.

        Nothing a peer or the server does ends this: errors the server sends are logged, and a
        server that cannot be reached (not yet started, restarting, gone), a lost connection or
        a peer squatting this worker's id is met by registering again after a growing pause
        (a warning says when it tries again; a notice says when it is back). Sessions already set
        up go on meanwhile: their data channels need no signaling. Only a refusal of the worker's
        own configuration (a wrong signaling token) or a signaling server whose TLS certificate
        does not verify raises :class:`~rtcxfer.protocol.errors.SignalingError`.
        """
        from rtcxfer.net.peer import PeerOptions

        if signaling_token is None and self.token:
            # What `rtcxfer signal --token` expects when given the worker's token.
            signaling_token = auth.signaling_token(self.token)
        self._on_notice = on_notice
        if self.legacy:
            logger.warning(
                "legacy protocol on: a session in sleap-rtc's protocol cannot present this worker's token "
                "and is authenticated only by the signaling server's token"
            )

        options = peer_options or PeerOptions()
        tasks: dict[asyncio.Task, str] = {}  # each session's task -> its client's peer id
        reconnect = _Reconnection(split_signal_urls(signaling_url))

        def registered(url: str) -> None:
            back = reconnect.registered(url)
            if reconnect.registrations == 1:
                if on_ready is not None:
                    on_ready()
                if back:
                    logger.info("worker {} registered in room {} at {} {}", peer_id, room, url, back)
            elif back:
                self.tell_operator(f"connected again: back in room {room!r} on {url} {back}")

        try:
            while True:
                try:
                    await self._serve_registration(reconnect.urls_to_try(), room, peer_id, signaling_token, options,
                                                   tasks, registered, signaling_ssl)
                    reconnect.lost()
                except SignalingTlsError:
                    if not reconnect.registrations:
                        raise  # a certificate that does not verify now will not later
                    logger.warning("the signaling server's certificate does not verify any more; retrying in {:g} s",
                                   reconnect.next_delay())
                except SignalingServerError as error:
                    if error.code in FATAL_SIGNALING_CODES:
                        raise
                    if error.code == "duplicate-peer" and reconnect.registrations:
                        # Most likely its own registration through a server that went away,
                        # which the room forgets within seconds (a replica's membership expiry).
                        logger.warning(
                            "room {!r} still holds a peer {!r}: this worker's previous registration, until the "
                            "signaling server notices it is gone (or another peer with this id); retrying in {:g} s",
                            room,
                            peer_id,
                            reconnect.next_delay(short=True),
                        )
                    elif error.code == "duplicate-peer":
                        logger.error(
                            "another peer is registered as {!r} in room {!r}: another worker (give each worker its own "
                            "id with --peer-id NAME), this worker's previous connection not gone yet, or an impostor "
                            "if the signaling server has no token (clients authenticate this worker and refuse "
                            "impostors); retrying in {:g} s",
                            peer_id,
                            room,
                            reconnect.next_delay(short=True),
                        )
                    else:
                        logger.warning("the signaling server refused the worker: {}; retrying in {:g} s",
                                       describe(error), reconnect.next_delay())
                except SignalingError as error:
                    if reconnect.registrations:
                        logger.warning("lost the signaling server ({}); retrying in {:g} s", error,
                                       reconnect.next_delay())
                    else:
                        logger.warning("waiting for the signaling server ({}); trying again in {:g} s", error,
                                       reconnect.next_delay())
                await reconnect.pause()
        finally:
            await self._stop_sessions(tasks)

    async def _stop_sessions(self, tasks: dict[asyncio.Task, str]) -> None:
        self.stopping = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve_registration(self, signaling_urls, room, peer_id, signaling_token, options, tasks, registered,
                                  signaling_ssl=None):
        """One registration on the signaling server: answer offers until the connection ends
        (returns normally) or registration is refused (raises)."""
        from rtcxfer.net.signaling import SignalingClient

        if self._hardware is None:
            self._hardware = await asyncio.to_thread(gather_hardware, self.work_dir, self.shared_storage_root)
        async with (
            SignalingClient(
                signaling_urls, room, "worker", peer_id, signaling_token, description=self.description(),
                ssl=signaling_ssl,
            ) as signaling,
            self._sessions_stopped_before_leaving(tasks),
        ):
            logger.info("worker {!r} ready in room {!r} at {}", peer_id, room, signaling.url)
            self._signaling = signaling
            registered(signaling.url)
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

    def _tell_path(self, client_id: str, peer) -> None:
        """Tell the operator which way a client's data channel goes, and about a TURN allocation
        this worker could not make."""
        path = peer.ice_path
        if path is not None:
            self.tell_operator(f"client {client_id}: data channel {path.describe('the client')}")
        gathering = peer.ice_gathering()
        if gathering is not None and gathering.turn and not gathering.relay and gathering.relay_error is not None:
            logger.warning("the TURN server {} gave this worker no relay candidate: {}", gathering.turn,
                           gathering.relay_error)

    @staticmethod
    async def _send_quietly(signaling, peer_id: str, payload: dict) -> None:
        try:
            await signaling.send_to(peer_id, payload)
        except SignalingError as error:
            logger.debug("could not relay to {}: {}", peer_id, describe(error))

    def _offer(self, signaling, client_id: str, offer: SdpOffer, options, tasks: dict[asyncio.Task, str]) -> None:
        admitted = self._startups.admit(client_id, hashlib.sha256(offer.sdp.encode()).hexdigest())
        if admitted == DUPLICATE_OFFER:
            logger.debug("client {} sent its offer again: its handshake is under way", client_id)
            return
        if isinstance(admitted, str):
            # Dropped unanswered: an answer would cost signaling budget, a peer connection sockets.
            quiet = self._refusal_log.check()
            if quiet is not None:
                more = f" ({quiet} more dropped since the last report)" if quiet else ""
                logger.warning("dropped an offer from {}: {}{}", client_id, admitted, more)
            return
        if admitted.replaces is not None and isinstance(admitted.replaces.task, asyncio.Task):
            logger.info("client {} sent a new offer: its handshake under way is replaced", client_id)
            admitted.replaces.task.cancel()
        if admitted.evicts is not None and isinstance(admitted.evicts.task, asyncio.Task):
            logger.info(
                "every unauthenticated place is taken: the oldest handshake ({}) makes way for {}",
                admitted.evicts.client_id,
                client_id,
            )
            admitted.evicts.task.cancel()
        task = asyncio.create_task(self._answer(signaling, client_id, offer, options, admitted))
        admitted.task = task
        tasks[task] = client_id
        task.add_done_callback(lambda done: tasks.pop(done, None))

    async def _answer(self, signaling, client_id: str, offer: SdpOffer, options, startup: Startup) -> None:
        """Answer one admitted offer; its startup slot is held until the client authenticates.

        An offer of relay candidates only (a client's second attempt after ICE found no pair)
        is answered with relay candidates only, where this worker has a TURN server."""
        from rtcxfer.net.ice_paths import offered_candidates
        from rtcxfer.net.peer import PeerConnection, strip_non_loopback_candidates

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.auth_timeout
        release = lambda: self._startups.release(startup)  # noqa: E731
        peer = None
        try:
            options = options.with_signaled_ice_servers(signaling.ice_servers)
            if options.loopback_only and "a=candidate:" not in strip_non_loopback_candidates(offer.sdp):
                # ICE could only fail, 15 s from now and unheard by the client: say why at once.
                logger.warning("client {} offered no ICE candidate on 127.0.0.1: told it this worker is "
                               "loopback-only", client_id)
                refusal = HandshakeRefusal(texts.NO_LOOPBACK_CANDIDATE).to_payload()
                await self._send_quietly(signaling, client_id, refusal)
                return
            offered = offered_candidates(offer.sdp)
            if offered.relay and not offered.host and not offered.srflx:
                relay_only = options.relay_only_retry()
                if relay_only is not None:
                    logger.info("client {} offered relay candidates only: answering with relay candidates only",
                                client_id)
                    options = relay_only
            # A legacy client labels its channel as it likes ("my-data-channel").
            peer = PeerConnection(options, any_channel_label=self.legacy,
                                  names=("this worker", f"client {client_id}"))
            on_notice = self._on_notice
            if on_notice is not None:
                peer.watch_packet_size(lambda size: on_notice(f"client {client_id}: {size.describe()}"))
            await signaling.send_to(client_id, SdpAnswer(await peer.accept_offer(offer.sdp)).to_payload())
            setup = min(deadline, loop.time() + self.limits.setup_timeout)
            channel = await peer.wait_channel_open(max(0.0, setup - loop.time()))
            logger.info("client {} connected", client_id)
            if not options.loopback_only:
                self._tell_path(client_id, peer)
            await self.serve_channel(
                channel,
                name=f"session {client_id}",
                auth_deadline=max(0.0, deadline - loop.time()),
                on_authenticated=release,
            )
        except IceFailedError as error:
            # Said in full: the operator learns what each side gathered and what would help.
            logger.warning("session with {} failed: {}", client_id, error)
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
