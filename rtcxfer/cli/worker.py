"""``rtcxfer worker``: serve jobs; ``--drain`` (or SIGUSR1) lets a running worker finish its jobs
and take no new ones."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import click

from rtcxfer.cli.options import (
    apply_options,
    connection_options,
    limit_option,
    network_options,
    peer_options,
    room_token,
    signaling_tls,
    tls_options,
)
from rtcxfer.cli.running import Interrupted, run_until_interrupted
from rtcxfer.worker.jobs import DEFAULT_JOB_ENV, NEVER_JOB_ENV

#: The peer id of a worker started without --peer-id.
DEFAULT_PEER_ID = "worker"


@click.command()
@apply_options(connection_options)
@apply_options(tls_options)
@apply_options(network_options)
@click.option("--peer-id", default=DEFAULT_PEER_ID, show_default=True, help="This worker's id in the room.")
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where jobs are extracted and run (default: a temporary directory).",
)
@click.option("--job-timeout", type=float, default=None, help="Seconds a job may run (default: the manifest's).")
@click.option(
    "--job-env",
    "job_env",
    multiple=True,
    metavar="NAME",
    help="Pass this variable of the worker's environment to jobs (repeatable; NAME* for a prefix). "
    f"By default only {', '.join(DEFAULT_JOB_ENV)} are passed; {', '.join(sorted(NEVER_JOB_ENV))} never.",
)
@limit_option(
    "--max-unauthenticated", click.IntRange(1), 8,
    "Sessions at once that have not yet proved the token; further offers are dropped.",
)
@limit_option(
    "--auth-timeout", click.FloatRange(0, min_open=True), 20.0,
    "Seconds from a client's offer until it must have proved the token.",
)
@click.option(
    "--insecure-no-token",
    is_flag=True,
    help="Serve without a token: ANYONE who reaches the signaling room can run jobs here.",
)
@click.option(
    "--legacy",
    is_flag=True,
    help="Also serve clients of sleap-rtc's existing data-channel protocol. Such a session cannot present "
    "the worker's token: it is authenticated only by the signaling server's token.",
)
@click.option("--slots", type=click.IntRange(1, 1024), default=1, show_default=True, help="Jobs run at once.")
@click.option(
    "--label", "labels", multiple=True, metavar="KEY=VALUE", help="Tell the room about this worker (repeatable)."
)
@click.option(
    "--pid-file", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write this worker's pid here."
)
@click.option(
    "--direct-port",
    type=click.IntRange(1, 65535),
    default=None,
    metavar="PORT",
    help="Listen for the direct transport's TCP connections on this fixed port (default: a new ephemeral port "
    "per session), on the addresses of the session's ICE host candidates: for a port that a NAT or firewall "
    "forwards here (Vast.ai and RunAI publish container ports; an HPC gateway can forward one).",
)
@click.option(
    "--direct-advertise",
    default=None,
    metavar="HOST:PORT",
    help="Also offer clients this address for direct (IPv4:PORT or [IPv6]:PORT): the public side of the "
    "mapping to --direct-port, e.g. the container's public IP and its published port. Needs --direct-port.",
)
@click.option(
    "--drain",
    is_flag=True,
    help="Do not start a worker: tell the one whose pid is in --pid-file to finish its running jobs and take "
    "no new ones (the same as sending it SIGUSR1); it keeps running and says when it is safe to stop.",
)
def worker(
    signal_url, room, token, token_file, signal_token, shared_root, ca_file, ice_servers, ice_username,
    ice_credential_file, any_interface, peer_id, work_dir, job_timeout, job_env, max_unauthenticated, auth_timeout,
    insecure_no_token, legacy, slots, labels, pid_file, direct_port, direct_advertise, drain,
) -> None:
    """Serve jobs: run each package's command and send its results back.

    Needs a token (--token, --token-file or RTCXFER_TOKEN): every client must prove it knows it, and the
    worker proves it back, without the token ever crossing the network.

    Stopping: Ctrl-C drains (running jobs finish, no new ones are taken) and stops once they
    are done, at once when none runs; a second Ctrl-C stops now. SIGTERM (docker stop,
    Kubernetes) stops now. A job cut short is reported to its client as the worker shutting
    down (its submit exits 75). --drain, or SIGUSR1, drains and keeps the worker running: it
    says when no job runs any more and stopping it is safe.
    """
    from rtcxfer.cli.config import resolve_token
    from rtcxfer.protocol.errors import SignalingError, describe
    from rtcxfer.protocol.worker_description import DescriptionError, parse_label
    from rtcxfer.worker.limits import WorkerLimits
    from rtcxfer.worker.rtc_worker_client import RTCWorkerClient

    if drain:
        if pid_file is None:
            raise click.UsageError("--drain needs --pid-file (the file the running worker was started with)")
        from rtcxfer.cli.pid_file import PidFileError, signal_worker

        try:
            pid = signal_worker(pid_file)
        except PidFileError as error:
            raise click.ClickException(str(error)) from None
        click.echo(f"asked worker {pid} to drain: it finishes its running jobs and takes no new ones", err=True)
        return
    try:
        label_map = dict(parse_label(text) for text in labels)
    except DescriptionError as error:
        raise click.BadParameter(str(error), param_hint="--label") from None
    token = resolve_token(click.get_current_context(), token, token_file)
    options = peer_options(ice_servers, any_interface, ice_username, ice_credential_file)
    transport_options = direct_options(direct_port, direct_advertise)
    tls = signaling_tls(ca_file)

    if not token and not insecure_no_token:
        from rtcxfer.cli.messages import worker_needs_a_token

        raise click.UsageError(worker_needs_a_token())
    if insecure_no_token and not token:
        click.echo(
            "WARNING: --insecure-no-token: this worker runs ANY job from ANY peer that reaches the room, "
            "and clients cannot tell it from an impostor.",
            err=True,
        )
    from rtcxfer.worker.jobrunner import forbid_inspection

    # Jobs run as this user: keep them from reading the token out of /proc/<worker>/environ.
    forbid_inspection()
    from rtcxfer.files.private_dirs import UnsafeDirectoryError

    try:
        runner = RTCWorkerClient(
            token=token or None,
            insecure_no_token=insecure_no_token,
            shared_storage_root=shared_root,
            work_dir=work_dir,
            job_timeout=job_timeout,
            job_env_allow=job_env,
            limits=WorkerLimits(max_unauthenticated=max_unauthenticated, auth_timeout=auth_timeout),
            legacy=legacy,
            slots=slots,
            labels=label_map,
            transport_options=transport_options,
        )
    except UnsafeDirectoryError as error:
        raise click.BadParameter(str(error), param_hint="--work-dir") from None
    if pid_file is not None:
        from rtcxfer.cli.pid_file import remove_pid_file, write_pid_file

        try:
            write_pid_file(pid_file)
        except OSError as error:
            runner.close()
            message = f"cannot write {pid_file}: {error.strerror or error}"
            raise click.BadParameter(message, param_hint="--pid-file") from None
    shared = runner.shared_storage_root or "none"
    name = worker_name(peer_id)
    click.echo(
        f"{name}: shared storage {shared}; transports {', '.join(runner.offered_transports())}; "
        f"work directory {runner.work_dir}",
        err=True,
    )
    if direct_port is not None:
        also = f", offered as {direct_advertise}" if direct_advertise else ""
        click.echo(f"{name}: direct connections on TCP port {direct_port}{also}", err=True)
    if legacy:
        click.echo(
            f"{name}: also serving sleap-rtc's legacy protocol; legacy sessions are authenticated "
            "only by the signaling server's token",
            err=True,
        )

    def ready() -> None:
        plural = "s" if slots != 1 else ""
        click.echo(
            f"{name} waiting for jobs in room {room!r} on {signal_url} ({slots} job slot{plural})", err=True
        )

    shutdown = _Shutdown()

    def jobs_running() -> str:
        running = runner.job_slots.running
        return "1 job running" if running == 1 else f"{running} jobs running"

    def drain_signal() -> None:
        if runner.job_slots.draining:
            click.echo(f"{name}: already draining ({jobs_running()})", err=True)
            return
        runner.drain()
        click.echo(
            f"{name}: draining: running jobs finish, no new ones are taken ({jobs_running()}); "
            "it says when it is safe to stop",
            err=True,
        )

    def first_ctrl_c() -> bool:
        """Drain and stop once drained, unless nothing runs: then stop at once."""
        if runner.job_slots.running == 0:
            return False
        shutdown.once_drained = True
        runner.drain()
        click.echo(
            f"{name}: Ctrl-C: draining: running jobs finish, no new ones are taken ({jobs_running()}); "
            "the worker stops when they are done. Ctrl-C again stops now (their clients are told to submit again)",
            err=True,
        )
        return True

    async def serve() -> None:
        install_drain_signal(drain_signal)
        serving = asyncio.ensure_future(
            runner.serve(
                signal_url,
                room,
                peer_id=peer_id,
                signaling_token=room_token(signal_token or token),
                peer_options=options,
                signaling_ssl=tls,
                on_ready=ready,
                on_notice=lambda text: click.echo(f"{name}: {text}", err=True),
            )
        )
        drained = asyncio.ensure_future(runner.wait_drained())
        try:
            await asyncio.wait({serving, drained}, return_when=asyncio.FIRST_COMPLETED)
            if drained.done() and not serving.done():
                if shutdown.once_drained:
                    click.echo(f"{name}: drained: no job is running; stopping", err=True)
                    return
                click.echo(
                    f"{name}: drained: no job is running; safe to stop now (Ctrl-C stops it at once)",
                    err=True,
                )
            await serving
        finally:
            serving.cancel()
            drained.cancel()
            await asyncio.gather(serving, drained, return_exceptions=True)

    try:
        run_until_interrupted(serve(), first_ctrl_c=first_ctrl_c)
        click.echo("worker stopped", err=True)
    except Interrupted:
        click.echo("worker stopped", err=True)
    except SignalingError as error:
        from rtcxfer.cli.messages import signaling_refusal, tls_failure

        code = getattr(error, "code", None)
        advice = (
            signaling_refusal(code, signal_url, room, role="worker", peer_id=peer_id, token_given=bool(token))
            if code
            else None
        )
        raise click.ClickException(advice or tls_failure(error) or f"signaling: {describe(error)}") from None
    finally:
        runner.close()
        if pid_file is not None:
            remove_pid_file(pid_file)


def worker_name(peer_id: str) -> str:
    """How the worker's own lines name it: ``worker gpu1``, or just ``worker`` for the default
    id (not ``worker worker``)."""
    return "worker" if peer_id == DEFAULT_PEER_ID else f"worker {peer_id}"


class _Shutdown:
    """How the worker stops: ``once_drained`` after a first Ctrl-C found jobs running."""

    once_drained = False


def direct_options(port: int | None, advertise: str | None) -> dict:
    """The transport options of ``--direct-port`` and ``--direct-advertise``; a usage error for
    an advertised address that is not IP:PORT, or a port this machine cannot listen on now."""
    if advertise is not None and port is None:
        raise click.UsageError("--direct-advertise needs --direct-port: the port the advertised address forwards to")
    if port is None:
        return {}
    from rtcxfer.protocol.errors import TransferError
    from rtcxfer.transports.direct import parse_advertised
    from rtcxfer.transports.direct_tls import check_port_free

    options: dict = {"port": port}
    if advertise is not None:
        try:
            options["advertise"] = str(parse_advertised(advertise))
        except TransferError as error:
            raise click.BadParameter(str(error), param_hint="--direct-advertise") from None
    try:
        check_port_free(port)
    except OSError as error:
        raise click.BadParameter(f"cannot listen on TCP port {port}: {error.strerror or error}",
                                 param_hint="--direct-port") from None
    return {"direct": options}


def install_drain_signal(drain) -> None:
    """SIGUSR1 drains the worker (where the platform has it)."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
        loop.add_signal_handler(signal.SIGUSR1, drain)
