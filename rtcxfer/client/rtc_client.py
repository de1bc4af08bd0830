"""RTCClient: submits a job package to a worker, picks a transport per file, falls back when
one fails, and brings the results home.

::

    async with RTCClient(token="s3cret", results_dir="results") as client:
        await client.connect("ws://127.0.0.1:8765", room="lab")
        result = await client.submit(Path("package.zip"))
        print(result.results_dir)

Results land in ``results_dir/<job id>/`` only once complete: they are gathered in a hidden
staging directory beside it and renamed into place, so nothing half-written is ever shown there.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs

from rtcxfer.files.shared_storage import detect_shared_root
from rtcxfer.log import logger
from rtcxfer.net.link import Link
from rtcxfer.protocol import auth, texts
from rtcxfer.protocol.engine import APPLICATION, Engine
from rtcxfer.protocol.errors import (
    AuthenticationError,
    ConnectionClosedError,
    IceFailedError,
    JobError,
    PathError,
    PluginError,
    RtcxferError,
    TokenRefusedError,
    TransferError,
    UnprovenWorkerError,
    WorkerBusyError,
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
    JobState,
    JobStatus,
    JobSubmit,
    PathErrorFrame,
    ProtocolErrorFrame,
    Welcome,
    WorkerBusy,
    quote_for_log,
)
from rtcxfer.transport.base import Transport, TransportContext
from rtcxfer.transport.host import PluginHost

#: Frames the client application handles itself.
APPLICATION_FRAMES: tuple[type[Frame], ...] = (
    AuthChallenge,
    Welcome,
    AuthFailed,
    WorkerBusy,
    JobAccepted,
    JobStatus,
    JobLog,
    JobProgress,
    JobComplete,
    JobFailed,
    ProtocolErrorFrame,
)
#: How a job that lost its worker mid-way is reported (:attr:`JobResult.worker_stopped`).
WORKER_WENT_AWAY = "the worker went away"
LOG_TAIL = 20
#: Seconds to wait for the worker's report on a cancelled job (its processes get a grace period).
CANCEL_REPORT_TIMEOUT = 20.0
#: Seconds an attempt to connect to a worker may take when the wait for one has no limit.
SESSION_SETUP_TIMEOUT = 60.0
#: Attempts (a tenth of a second apart) to register again under the same peer id while the
#: server has not yet seen this client's previous connection go (``duplicate-peer``).
REGISTER_AGAIN_ATTEMPTS = 50


@attrs.frozen
class ClientEvent:
    """Something to show the user: ``kind`` is one of ``status``, ``log``, ``progress``,
    ``transfer`` (bytes of a file moving) or ``notice`` (a fallback, a retry)."""

    kind: str
    job_id: str | None
    data: dict[str, Any]


@attrs.frozen
class JobResult:
    """How a job ended and where its results are."""

    job_id: str
    ok: bool
    results_dir: Path | None
    file_count: int = 0
    total_mb: float = 0.0
    #: The transports that carried the package and the results: None for one that carried
    #: nothing (the package was not delivered, or the job failed and no results came back).
    input_transport: str | None = None
    results_transport: str | None = None
    failure: str | None = None
    log_tail: tuple[str, ...] = ()
    #: The peer id of the worker that ran the job (None for a session made with :meth:`RTCClient.attach`).
    worker_id: str | None = None
    #: Bytes of the package sent, and of the result files received.
    bytes_sent: int = 0
    bytes_received: int = 0
    #: ``total``, ``transfer`` (input and results moving) and ``run`` (the job's command), where known.
    seconds: dict = attrs.field(factory=dict)
    #: The job ended because the worker stopped (it said it was shutting down, or it left the
    #: room), not by its own failure: submit it again once a worker is back.
    worker_stopped: bool = False
    #: Which way the data channel went: ``peer-to-peer (host)``, ``through NAT (server-reflexive)``,
    #: ``via TURN relay ADDRESS over udp|tcp`` (None for a session made with :meth:`RTCClient.attach`).
    path: str | None = None
    #: The job's command's exit status: 0 for a job that completed, the worker's figure for a
    #: command that ran and exited non-zero, None when the command did not run to an exit of its
    #: own (the package was refused, the job was cancelled, timed out or its worker stopped).
    exit_status: int | None = None


@attrs.frozen
class SessionEnded:
    """What the client's report queue gets when the session ends before the job's report."""

    reason: str
    #: The worker left the room (it stopped, or lost its connection).
    worker_went_away: bool


class RTCClient:
    """The client. ``transport`` forces one transport for inputs and results."""

    def __init__(
        self,
        *,
        token: str | None = None,
        shared_storage_root: str | os.PathLike[str] | None = None,
        results_dir: str | os.PathLike[str] = "rtcxfer-results",
        plugins: PluginHost | None = None,
        transport: str | None = None,
        transport_options: dict | None = None,
        on_event: Callable[[ClientEvent], None] | None = None,
        peer_options=None,
        detect_shared_storage: bool = True,
    ) -> None:
        choice = detect_shared_root(shared_storage_root) if (detect_shared_storage or shared_storage_root) else None
        self.shared_storage_root: Path | None = choice.root if choice else None
        self.token = token
        self.results_dir = Path(results_dir)
        self.plugins = plugins or PluginHost()
        self.forced_transport = transport
        if transport is not None:
            self.plugins.transport(transport)  # an unknown name fails here, with what is installed
        self.transport_options = dict(transport_options or {})
        self.on_event = on_event
        self.peer_options = peer_options
        #: Transports both peers offer and that passed negotiation, best first.
        self.session_transports: list[str] = []
        self.link: Link | None = None
        self.transports: dict[str, Transport] = {}
        self._peer = None
        self._signaling = None
        self._run_task: asyncio.Task | None = None
        self._watch_task: asyncio.Task | None = None
        self._closed_reason = "the connection to the worker closed"
        self._worker_went_away = False
        self._reports: asyncio.Queue[Frame | SessionEnded] = asyncio.Queue()
        self._cancel_report: asyncio.Future | None = None
        self._log_tail: list[str] = []
        #: The worker of this session, once connected through the signaling server.
        self.worker_id: str | None = None
        self._status_times: dict[str, float] = {}
        #: Whether the package is being sent now (transfers then go up, else down).
        self._uploading = False
        self.context = TransportContext(
            role="client",
            incoming_dir=self.results_dir,
            shared_root=self.shared_storage_root,
            options={name: dict(value) for name, value in self.transport_options.items()},
            progress=self._transfer_progress,
        )
        #: Why each transport the user might ask for is not usable in this session.
        self.unusable_transports: dict[str, str] = {}
        #: Which way the data channel goes (``through NAT (server-reflexive)``...), once connected
        #: through the signaling server (:meth:`rtcxfer.net.ice_paths.IcePath.describe`).
        self.path: str | None = None

    def _transfer_progress(self, transport: str, name: str, done: int, total: int) -> None:
        direction = "up" if self._uploading else "down"
        self._emit("transfer", None, name=name, done=done, total=total, transport=transport, direction=direction)

    def _emit(self, kind: str, job_id: str | None, **data: Any) -> None:
        if self.on_event is not None:
            self.on_event(ClientEvent(kind, job_id, data))

    # --- connecting -------------------------------------------------------------------

    async def connect(
        self,
        signaling_url: str,
        room: str,
        *,
        signaling_token: str | None = None,
        worker_id: str | None = None,
        timeout: float | None = 30.0,
        require: Iterable[str] = (),
        signaling_ssl=None,
    ) -> None:
        """Find a worker through the signaling server, connect, authenticate, negotiate.

        The peer connection uses ``peer_options`` with the ICE servers the signaling server
        handed out added (on every interface once there are any; see
        :meth:`~rtcxfer.net.peer.PeerOptions.with_signaled_ice_servers`). ``signaling_ssl`` is the
        ``ssl.SSLContext`` for a ``wss://`` server (None: the system's trusted CAs).

        ``worker_id`` forces one worker; ``require`` holds expressions every candidate must meet
        (see :mod:`rtcxfer.client.worker_choice`). Among the rest the best is tried first, a full one is
        skipped, and when every one is busy this waits in the room's queue (saying so through
        ``notice`` events). :class:`~rtcxfer.protocol.errors.NoWorkerError` when none can ever fit.

        ``timeout`` bounds the whole wait for a worker (None: no limit): for one to join, and for
        a busy or draining one to take the job
        (:class:`~rtcxfer.protocol.errors.WorkerWaitTimeoutError`); it also bounds each attempt to
        connect (:data:`SESSION_SETUP_TIMEOUT` without a limit). A long wait keeps this client's
        place in the room by registering again before the signaling server's idle limit
        (:class:`rtcxfer.client.room.RoomWait`).
        """
        from rtcxfer.client.room import open_session_in_room
        from rtcxfer.client.worker_choice import parse_requirement
        from rtcxfer.files.shared_storage import shared_root_fingerprint
        from rtcxfer.net.signaling import SignalingClient

        requirements = [parse_requirement(text) for text in require]
        if signaling_token is None and self.token:
            # What `rtcxfer signal --token` expects when given the same token: an HMAC of it.
            signaling_token = auth.signaling_token(self.token)
        peer_id = f"client-{secrets.token_hex(4)}"

        def signaling_client() -> SignalingClient:
            return SignalingClient(signaling_url, room, "client", peer_id, signaling_token, ssl=signaling_ssl)

        async def rejoin() -> SignalingClient:
            assert self._signaling is not None
            await self._signaling.close()
            self._signaling = await register_again(signaling_client)
            return self._signaling

        self._signaling = signaling_client()
        await self._signaling.connect()
        setup_timeout = timeout if timeout is not None else SESSION_SETUP_TIMEOUT
        try:
            own = await asyncio.to_thread(shared_root_fingerprint, self.shared_storage_root)
            self.worker_id = await open_session_in_room(
                self._signaling,
                lambda candidate: self._open_session(candidate, setup_timeout),
                worker_id=worker_id,
                requirements=requirements,
                own_fingerprint=own,
                timeout=timeout,
                notice=lambda text: self._emit("notice", None, message=text),
                rejoin=rejoin,
            )
        except BaseException:
            await self._detach()
            await self._signaling.close()
            raise
        self._emit("notice", None, message=f"worker {self.worker_id} took the session")

    async def _open_session(self, worker_id: str, timeout: float) -> None:
        """A session with ``worker_id``; torn down again if it refuses (WorkerBusyError).

        When ICE finds no working candidate pair and a TURN server is known, a second attempt
        gathers relay candidates only (the worker answers such an offer in kind), within the same
        ``timeout``; :class:`~rtcxfer.protocol.errors.IceFailedError` says why when that fails too.
        """
        from rtcxfer.net import peer

        assert self._signaling is not None
        send, receive = peer.signaling_adapter(self._signaling, worker_id)
        options = (self.peer_options or peer.PeerOptions()).with_signaled_ice_servers(self._signaling.ice_servers)
        names = ("this client", f"worker {worker_id}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            self._peer, channel = await peer.connect_via(send, receive, "offerer", options, timeout, names=names)
        except IceFailedError as error:
            retry = _relay_only_retry(options, error.failure)
            if retry is None:
                raise
            failure = error.failure
            self._emit("notice", None, message=f"no ICE candidate pair worked within {failure.seconds:.0f} s: "
                                               f"{failure.gathered()}. Trying again through the TURN relay only")
            options = retry
            self._peer, channel = await peer.connect_via(
                send, receive, "offerer", options, max(1.0, deadline - loop.time()), names=names
            )
        self._tell_path(self._peer, options.loopback_only)
        self._peer.watch_packet_size(lambda size: self._emit("notice", None, message=size.describe()))
        self._watch_task = asyncio.create_task(self._watch_worker(worker_id))
        try:
            await self.attach(channel, worker_id)
        except (WorkerBusyError, AuthenticationError):
            # The room may have another worker to try.
            await self._detach()
            raise

    def _tell_path(self, connection, loopback_only: bool) -> None:
        """Remember which way the data channel goes, and say so (not on loopback, where it is
        always the same), with a TURN allocation this side could not make."""
        path = connection.ice_path
        self.path = path.describe("the worker") if path is not None else None
        if loopback_only:
            return
        if self.path is not None:
            self._emit("notice", None, message=f"data channel {self.path}")
        gathering = connection.ice_gathering()
        if gathering is not None and gathering.turn and not gathering.relay and gathering.relay_error is not None:
            self._emit("notice", None, message=f"the TURN server {gathering.turn} gave this client no relay "
                                               f"candidate: {gathering.relay_error}")

    async def _detach(self) -> None:
        """Undo a session attempt: the worker refused it (or connecting failed)."""
        if self._watch_task is not None:
            self._watch_task.cancel()
            await asyncio.gather(self._watch_task, return_exceptions=True)
            self._watch_task = None
        if self.link is not None:
            self.link.close()
        if self._run_task is not None:
            await asyncio.gather(self._run_task, return_exceptions=True)
            self._run_task = None
        if self._peer is not None:
            await self._peer.close()
            self._peer = None
        self.link = None
        self.transports = {}
        self._reports = asyncio.Queue()

    async def _watch_worker(self, worker_id: str) -> None:
        """End the session as soon as the signaling server says the worker left the room.

        A worker that dies sends nothing over the data channel; ICE would notice only when
        consent expires, half a minute later, while the signaling server sees its socket close.
        """
        from rtcxfer.net.signaling import PeerLeft, SignalingServerError
        from rtcxfer.net.signaling.client import register_again
        from rtcxfer.protocol.errors import SignalingError

        assert self._signaling is not None
        while True:
            try:
                event = await self._signaling.receive()
            except SignalingServerError as error:
                logger.debug("signaling: {}", describe(error))
                continue
            except SignalingError:
                # Its server went away (a replica that died, one restarted): register again, so
                # that the room does not announce this client as gone to its worker mid-job.
                again = await register_again(self._signaling)
                if again is None:
                    return  # signaling is gone, not necessarily the worker: the channel tells
                self._signaling = again
                continue
            if isinstance(event, PeerLeft) and event.peer_id == worker_id:
                logger.warning("worker {} left the room", worker_id)
                self._closed_reason = f"{WORKER_WENT_AWAY} ({worker_id}): it stopped or lost its connection"
                self._worker_went_away = True
                if self.link is not None:
                    self.link.close()
                return

    async def attach(self, channel, worker_id: str | None = None) -> None:
        """Use an already open data channel to the worker: authenticate and negotiate.

        :class:`~rtcxfer.protocol.errors.WorkerBusyError` when the worker has no free job slot."""
        engine = Engine(self.plugins.claim, catalogue=self.plugins.catalogue, application_frames=APPLICATION_FRAMES)
        self.link = Link(channel, engine, name="client")
        self.context.on_notice = self._reports.put_nowait
        for info in self.plugins.transports():
            transport = info.transport(self.link, self.context)
            self.transports[info.name] = transport
            self.link.add_handler(info.name, transport)
        self.link.add_handler(APPLICATION, self)
        self._run_task = asyncio.create_task(self.link.run())
        offered = [name for name, t in self.transports.items() if type(t).usable(self.context)]
        self.unusable_transports = {
            name: type(t).unusable_because(self.context) for name, t in self.transports.items() if name not in offered
        }
        try:
            reply = await self._authenticate(",".join(offered) or "none", worker_id or "the worker")
        except AuthenticationError:
            self.link.close()  # nothing more goes to a peer that failed to authenticate
            raise
        theirs = set(reply.transports.split(","))
        self.session_transports = []
        forced = self.forced_transport
        # The forced transport first: once it is usable, nothing is connected for the others,
        # which this session will not use (direct's negotiation opens a TLS connection); when it
        # is not, the others are still tried, so that the refusal can say what is usable.
        for name in sorted(offered, key=lambda candidate: candidate != forced):
            if name not in theirs:
                self.unusable_transports[name] = "the worker does not offer it (not installed or not configured there)"
                continue
            if forced is not None and name != forced and forced in self.session_transports:
                self.unusable_transports[name] = f"not negotiated: this client forces {forced}"
                continue
            why = ""
            try:
                usable = await self.transports[name].negotiate()
                why = self.transports[name].not_negotiated_because
            except (RtcxferError, asyncio.TimeoutError) as error:
                logger.info("transport {} failed to negotiate: {}", name, describe(error))  # the notice shows it
                usable, why = False, describe(error)
            if usable:
                self.session_transports.append(name)
            else:
                self.unusable_transports[name] = why or "it failed its check between these peers"
                detail = f": {why}" if why else ""
                self._emit("notice", None, message=f"{name} is not usable between these peers{detail}")
        self._emit("notice", None, message=f"transports for this session: {', '.join(self.session_transports)}")

    async def _authenticate(self, offered: str, worker_name: str = "the worker") -> Welcome:
        """Prove the token to the worker and make it prove the token back (see :mod:`rtcxfer.protocol.auth`).

        Raises :class:`AuthenticationError` if the worker refuses us, or if it cannot prove it
        knows the token: then it is not the worker we were told of (a peer registered under its
        id, or a relay in between), and nothing is sent to it.
        """
        client_nonce = auth.new_nonce()
        reply = await self._ask(
            Hello(PROTOCOL_VERSION, client_nonce, offered), (AuthChallenge, AuthFailed, Welcome, WorkerBusy)
        )
        if isinstance(reply, AuthFailed):
            raise TokenRefusedError(f"the worker refused this client: {quote_for_log(reply.reason)}")
        if not isinstance(reply, AuthChallenge):
            raise UnprovenWorkerError(
                f"the peer answered HELLO with {reply.TYPE} without a challenge: it did not let this client prove "
                "the token, so it cannot be the worker you meant; refusing it"
            )
        assert self.link is not None
        local, remote = auth.channel_fingerprints(self.link.channel)
        transcript = auth.Transcript(client_nonce, reply.worker_nonce, local, remote, offered)
        # Without a token the proof is made with an empty key: only a worker run with
        # --insecure-no-token accepts it.
        proof = auth.client_proof(self.token or "", transcript)
        welcome = await self._ask(AuthProof(proof), (Welcome, AuthFailed, WorkerBusy))
        if isinstance(welcome, WorkerBusy):
            raise WorkerBusyError(worker_name, quote_for_log(welcome.reason))
        if isinstance(welcome, AuthFailed):
            raise TokenRefusedError(f"the worker refused this client: {quote_for_log(welcome.reason)}")
        if welcome.version != PROTOCOL_VERSION:
            raise AuthenticationError(
                f"the worker speaks protocol version {welcome.version}, this client version {PROTOCOL_VERSION}"
            )
        if welcome.worker_proof == auth.NO_PROOF:
            if self.token is not None:
                raise UnprovenWorkerError(
                    "the worker runs without a token (--insecure-no-token), so it cannot prove it is the worker "
                    "you meant; refusing to send it anything"
                )
            logger.warning("connected to a worker without a token: anyone could be running it")
            return welcome
        if self.token is None or not auth.proofs_match(
            auth.worker_proof(self.token, transcript, welcome.transports), welcome.worker_proof
        ):
            raise UnprovenWorkerError(
                "the peer posing as the worker could not prove it knows the token: it may be an impostor "
                "(another peer registered under the worker's id) or a relay in between; refusing to send it anything"
            )
        return welcome

    async def _ask(self, frame: Frame, answers: tuple[type[Frame], ...], timeout: float = 60.0) -> Frame:
        assert self.link is not None
        waiting = asyncio.create_task(self.link.wait_for(lambda f: isinstance(f, answers), timeout))
        await asyncio.sleep(0)  # the waiter is registered before the question leaves
        await self.link.send(frame)
        return await waiting

    async def close(self) -> None:
        """Close the session (after every acknowledged transfer) and the signaling connection."""
        if self._cancel_report is not None:
            self._cancel_report.cancel()
            await self._settle_cancelled_job()
        if self._watch_task is not None:
            self._watch_task.cancel()
            await asyncio.gather(self._watch_task, return_exceptions=True)
        if self.link is not None:
            self.link.close()
        if self._run_task is not None:
            await asyncio.gather(self._run_task, return_exceptions=True)
        if self._peer is not None:
            await self._peer.close()
        if self._signaling is not None:
            await self._signaling.close()

    async def __aenter__(self) -> RTCClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- application frames -----------------------------------------------------------

    async def on_frame(self, frame: Frame) -> None:
        if isinstance(frame, JobLog):
            self._log_tail = (self._log_tail + [frame.line])[-LOG_TAIL:]
            self._emit("log", frame.job_id, line=frame.line)
        elif isinstance(frame, JobProgress):
            self._emit("progress", frame.job_id, done=frame.done, total=frame.total)
        elif isinstance(frame, JobStatus):
            self._status_times[frame.state] = time.monotonic()
            if frame.state == JobState.SENDING_RESULTS:
                # Made only now, before the first result file is announced (frames are handled
                # in order), so a client killed while its job runs leaves nothing behind.
                self.context.incoming_dir.mkdir(parents=True, exist_ok=True)
            self._emit("status", frame.job_id, state=frame.state)
        elif isinstance(frame, ProtocolErrorFrame):
            logger.warning("worker reports a protocol error: {}", quote_for_log(frame.reason))
            self._reports.put_nowait(frame)
        else:
            self._reports.put_nowait(frame)

    def on_closed(self) -> None:
        self._reports.put_nowait(SessionEnded(self._closed_reason, self._worker_went_away))

    # --- jobs -------------------------------------------------------------------------

    def choose(self, forced: str | None = None) -> str:
        """The transport to use: the forced one, else the best negotiated for this session."""
        forced = forced or self.forced_transport
        if forced is not None:
            if forced not in self.session_transports:
                why = self.unusable_transports.get(forced, "it was not negotiated")
                raise PluginError(
                    f"transport {forced!r} is not usable in this session: {why} "
                    f"(usable: {', '.join(self.session_transports) or 'none'})"
                )
            return forced
        if not self.session_transports:
            raise PluginError("no transport is usable between these peers")
        return self.session_transports[0]

    async def submit(
        self, package: str | os.PathLike[str], *, job_id: str | None = None, transport: str | None = None
    ) -> JobResult:
        """Run ``package`` (a ZIP with ``rtcxfer.json``) on the worker and fetch its results.

        ``transport`` forces one transport for this job (default: the client's choice).
        Cancelling the awaiting task cancels the job on the worker.
        """
        if self.link is None:
            raise ConnectionClosedError("connect() first")
        package = Path(package)
        if not package.is_file():
            raise JobError(f"package {package} does not exist or is not a file")
        job_id = job_id or f"job-{secrets.token_hex(4)}"
        input_via = self.choose(forced=transport)
        started = time.monotonic()
        self._status_times = {}
        try:
            result = await self._run(package, job_id, input_via, forced=bool(transport or self.forced_transport))
        except asyncio.CancelledError:
            await self._cancel(job_id)
            raise
        received = await asyncio.to_thread(_tree_bytes, result.results_dir) if result.results_dir else 0
        return attrs.evolve(
            result,
            worker_id=self.worker_id,
            path=self.path,
            bytes_sent=package.stat().st_size,
            bytes_received=received,
            seconds=_phase_seconds(started, time.monotonic(), self._status_times),
        )

    async def _run(self, package: Path, job_id: str, input_via: str, *, forced: bool) -> JobResult:
        results_via = input_via
        attempted: set[str] = set()
        while True:
            attempted.add(input_via)
            outcome = await self._attempt(package, job_id, input_via, results_via)
            if isinstance(outcome, JobResult):
                return outcome
            fallback = self.plugins.fallback_transport(self.session_transports)
            if forced or fallback is None or fallback in attempted:
                return self._failed(job_id, None, f"Job {job_id} did not complete: {outcome}")
            self._emit("notice", job_id, message=f"{input_via} failed ({outcome}); retrying over {fallback}")
            input_via = results_via = fallback

    async def _attempt(self, package: Path, job_id: str, input_via: str, results_via: str) -> JobResult | str:
        """One try: a JobResult when the job ran (well or not), or the reason to retry."""
        await self._settle_cancelled_job()
        self._drain_reports()
        self._log_tail = []
        reply = await self._ask(JobSubmit(job_id, results_via), (JobAccepted, JobFailed, ProtocolErrorFrame))
        if not isinstance(reply, JobAccepted):
            return self._failed(job_id, None, _reason(reply))
        staging = self.results_dir / f".{job_id}.partial"
        await asyncio.to_thread(shutil.rmtree, staging, True)
        self.results_dir.mkdir(parents=True, exist_ok=True)  # an unusable one fails before the job runs
        self.context.incoming_dir = staging
        results_transport = self.transports[results_via]
        try:
            await results_transport.request_results(job_id)
            self._emit("status", job_id, state=f"sending input via {input_via}")
            self._uploading = True
            try:
                await self.transports[input_via].send_file(package, package.name)
            finally:
                self._uploading = False
            delivered = input_via
            report = await self._reports.get()
            if isinstance(report, JobComplete):
                final = await self._collect(report, staging, results_transport)
                return JobResult(
                    job_id,
                    True,
                    final,
                    report.file_count or 0,
                    report.total_mb or 0.0,
                    input_via,
                    results_via,
                    None,
                    tuple(self._log_tail),
                    exit_status=0,
                )
            if isinstance(report, PathErrorFrame):
                return report.message  # e.g. a corrupted package read in place: retry with bytes
            if isinstance(report, SessionEnded):
                reason = report.reason if report.worker_went_away else f"Job {job_id} did not complete: {report.reason}"
                return self._failed(job_id, delivered, reason, report.worker_went_away)
            stopped = JobState.WORKER_STOPPING in self._status_times
            return self._failed(job_id, delivered, _reason(report), stopped)
        except (TransferError, PathError) as error:
            return f"{describe(error)}"
        finally:
            self.context.incoming_dir = self.results_dir
            await asyncio.to_thread(shutil.rmtree, staging, True)
            await results_transport.discard_results(job_id)

    def _failed(self, job_id: str, delivered_via: str | None, reason: str, worker_stopped: bool = False) -> JobResult:
        """A failed job's result; ``delivered_via`` is the transport that delivered its package, if
        one did. No results came back, so it names no results transport."""
        return JobResult(
            job_id, False, None, 0, 0.0, delivered_via, None, reason, tuple(self._log_tail),
            worker_stopped=worker_stopped, exit_status=None if worker_stopped else exit_status_in(reason),
        )

    def _drain_reports(self) -> None:
        while not self._reports.empty():
            self._reports.get_nowait()

    async def _collect(self, report: JobComplete, staging: Path, transport: Transport) -> Path:
        """Put the job's results in ``results_dir/<job id>`` (complete, or not at all)."""
        staging.mkdir(parents=True, exist_ok=True)
        await transport.collect_results(report.job_id, report.relative_path, staging)
        final = self.results_dir / report.job_id
        if final.exists():
            final = self.results_dir / f"{report.job_id}-{secrets.token_hex(3)}"
        os.replace(staging, final)
        return final

    async def _settle_cancelled_job(self) -> None:
        """Wait for the report that ends a job cancelled earlier in this session, so it is not
        taken for the answer to the next one (JOB_FAILED names no job id in its fields, but a
        session runs one job at a time: the first report after a cancel is that job's)."""
        waiting, self._cancel_report = self._cancel_report, None
        if waiting is not None:
            await asyncio.gather(waiting, return_exceptions=True)

    async def _cancel(self, job_id: str) -> None:
        if self.link is None or self.link.closed:
            return
        self._emit("notice", job_id, message=f"cancelling {job_id}")

        def ends(frame: Frame) -> bool:
            return isinstance(frame, (JobComplete, JobFailed))

        self._cancel_report = asyncio.ensure_future(self.link.wait_for(ends, CANCEL_REPORT_TIMEOUT))
        try:
            await asyncio.shield(self.link.send(JobCancel(job_id)))
        except RtcxferError as error:
            logger.warning("could not cancel {}: {}", job_id, describe(error))


def _relay_only_retry(options, failure):
    """The options of a relay-only second attempt after ``failure`` (an IceFailure), or None
    where it cannot help: no TURN server, credentials it refused, an aiortc without the policy."""
    if failure is None or failure.cause == "turn-refused":
        return None
    local = failure.local
    failed_transport = local.turn_transport if local.turn and not local.relay else None
    return options.relay_only_retry(failed_transport)


def _tree_bytes(directory: Path) -> int:
    return sum(path.lstat().st_size for path in directory.rglob("*") if path.is_file() and not path.is_symlink())


def _phase_seconds(started: float, ended: float, states: dict[str, float]) -> dict[str, float]:
    """Where a job's time went, from the worker's JOB_STATUS moments as this client saw them."""
    seconds = {"total": round(ended - started, 3)}
    running, sending, extracting = JobState.RUNNING, JobState.SENDING_RESULTS, JobState.EXTRACTING
    if running in states and sending in states:
        seconds["run"] = round(states[sending] - states[running], 3)
    if extracting in states and sending in states:
        seconds["transfer"] = round((states[extracting] - started) + (ended - states[sending]), 3)
    return seconds


# At the start of the reason only: the job's own output, quoted after it, cannot pose as it.
_JOB_EXITED = re.compile(
    r"Job \S+ failed: " + re.escape(texts.JOB_EXITED).replace(re.escape("{code}"), r"(-?\d{1,10})") + r"(?:;|$)"
)


def exit_status_in(reason: str) -> int | None:
    """The exit status a ``JOB_FAILED`` reason gives for a command that ran and exited non-zero
    (``Job X failed:`` and :data:`rtcxfer.protocol.texts.JOB_EXITED`), else None."""
    found = _JOB_EXITED.match(reason)
    return int(found.group(1)) if found else None


def _reason(frame: Frame) -> str:
    for field in ("reason", "message"):
        if hasattr(frame, field):
            return getattr(frame, field)
    return frame.encode()



async def register_again(make_client: Callable[[], Any]):
    """A fresh signaling connection under the peer id the closed one had (a client keeping its
    place in the room); the server may take a moment to see the old connection go."""
    from rtcxfer.net.signaling import SignalingServerError

    attempts = REGISTER_AGAIN_ATTEMPTS
    while True:
        client = make_client()
        try:
            await client.connect()
            return client
        except SignalingServerError as error:
            attempts -= 1
            if error.code != "duplicate-peer" or attempts <= 0:
                raise
        await asyncio.sleep(0.1)
