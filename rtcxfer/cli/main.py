"""The ``rtcxfer`` command: signal, worker, submit, plugins, doctor and demo."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from pathlib import Path

import click

from rtcxfer import __version__, log

#: Exit codes of ``rtcxfer submit``.
EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_CONNECTION, EXIT_CANCELLED = 0, 1, 2, 3, 130


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped the command (after the running work was cancelled cleanly)."""


def _run(coroutine):
    """Run a coroutine with uvloop when installed (faster data channels).

    Ctrl-C and SIGTERM cancel the coroutine, so its cleanup (cancelling the job on the worker,
    closing the session) runs the same way on every Python version and event loop; the
    command then sees :class:`Interrupted`.
    """
    from rtcxfer.net.peer import install_uvloop_if_available

    install_uvloop_if_available()
    interrupted = False

    async def main():
        nonlocal interrupted
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()

        def interrupt() -> None:
            nonlocal interrupted
            interrupted = True
            task.cancel()

        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, interrupt)
        return await coroutine

    try:
        return asyncio.run(main())
    except (asyncio.CancelledError, KeyboardInterrupt):
        if interrupted or sys.exc_info()[0] is KeyboardInterrupt:
            raise Interrupted() from None
        raise


def _peer_options(ice_servers: tuple[str, ...], any_interface: bool):
    from rtcxfer.net.peer import PeerOptions

    if ice_servers or any_interface:
        return PeerOptions(loopback_only=False, ice_servers=ice_servers)
    return PeerOptions()


network_options = [
    click.option(
        "--ice-server",
        "ice_servers",
        multiple=True,
        metavar="URL",
        help="A STUN/TURN server (repeatable). Implies --any-interface. None by default.",
    ),
    click.option(
        "--any-interface",
        is_flag=True,
        help="Offer host candidates on every interface. Default: 127.0.0.1 only (same machine).",
    ),
]

token_file_option = click.option(
    "--token-file",
    envvar="RTCXFER_TOKEN_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A file whose first line is the token: unlike --token, not visible in `ps` [env RTCXFER_TOKEN_FILE].",
)

connection_options = [
    click.option(
        "--signal",
        "signal_url",
        envvar="RTCXFER_SIGNAL_URL",
        default="ws://127.0.0.1:8765",
        show_default=True,
        help="Signaling server URL [env RTCXFER_SIGNAL_URL].",
    ),
    click.option(
        "--room",
        envvar="RTCXFER_ROOM",
        default="default",
        show_default=True,
        help="Room shared by the worker and its clients [env RTCXFER_ROOM].",
    ),
    click.option(
        "--token",
        envvar="RTCXFER_TOKEN",
        default=None,
        help="The worker's token; it never leaves this machine (see README, Security) [env RTCXFER_TOKEN].",
    ),
    token_file_option,
    click.option(
        "--signal-token",
        envvar="RTCXFER_SIGNAL_TOKEN",
        default=None,
        help="The signaling server's token (rtcxfer signal --token), if it differs from --token; "
        "only an HMAC of it is sent [env RTCXFER_SIGNAL_TOKEN].",
    ),
    click.option(
        "--shared-root",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Shared storage root on this machine (default: $SHARED_STORAGE_ROOT or a known mount).",
    ),
]


def _room_token(secret: str | None) -> str | None:
    """What goes to the signaling server for ``secret``: an HMAC, never the secret itself."""
    from rtcxfer.protocol.auth import signaling_token

    return signaling_token(secret) if secret else None


def _apply(options):
    def decorate(function):
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rtcxfer")
@click.option(
    "--config",
    "config_file",
    envvar="RTCXFER_CONFIG",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Settings file (default: ./rtcxfer.toml, else ~/.config/rtcxfer/rtcxfer.toml). Flags beat "
    "environment variables, which beat the file [env RTCXFER_CONFIG].",
)
@click.option(
    "--log-level",
    default="WARNING",
    show_default=True,
    envvar="RTCXFER_LOG_LEVEL",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="How much rtcxfer logs to stderr [env RTCXFER_LOG_LEVEL].",
)
@click.pass_context
def main(ctx: click.Context, config_file: Path | None, log_level: str) -> None:
    """Send a job to a remote worker over WebRTC and get its results back.

    Files travel by the best transport both peers offer: a shared filesystem, chunks over
    the data channel, or any transport plugin you install. Start with `rtcxfer demo`.
    """
    log.enable(log_level)
    ctx.default_map = _config_defaults(ctx, config_file)


def _config_defaults(ctx: click.Context, config_file: Path | None) -> dict | None:
    """click's defaults from the configuration file (see :mod:`rtcxfer.cli.config`)."""
    from rtcxfer.cli import config

    try:
        path = config.find_config(config_file)
        if path is None:
            return None
        assert isinstance(ctx.command, click.Group)
        commands = {
            name: [
                (option.opts[-1].lstrip("-"), option.name)
                for option in command.params
                if isinstance(option, click.Option) and option.opts[-1].startswith("--") and option.name != "help"
            ]
            for name, command in ctx.command.commands.items()
        }
        return config.default_map(config.load_config(path), commands, path)
    except config.ConfigError as error:
        raise click.UsageError(str(error)) from None


@main.command("signal")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option(
    "--token",
    envvar="RTCXFER_TOKEN",
    default=None,
    help="Token every peer must present (all rooms): peers send an HMAC of it, never the token "
    "[env RTCXFER_TOKEN].",
)
@token_file_option
@click.option(
    "--max-per-address",
    type=click.IntRange(1),
    default=64,
    show_default=True,
    help="Sockets one remote address may hold (an eighth of them unregistered).",
)
@click.option(
    "--max-room-peers-per-address",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="Peers one remote address may have in one room (of 16).",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(0, min_open=True),
    default=120.0,
    show_default=True,
    help="Seconds a client may sit in a room without relaying anything.",
)
@click.option("--no-web", is_flag=True, help="Do not serve the browser client on the same port.")
def signal_server(
    host: str, port: int, token: str | None, token_file: Path | None, max_per_address: int,
    max_room_peers_per_address: int, idle_timeout: float, no_web: bool,
) -> None:
    """Run the signaling server that lets workers and clients find each other.

    It also serves the browser client: open http://HOST:PORT/ to submit a job from a web page.
    """
    from rtcxfer.cli.config import resolve_token
    from rtcxfer.net.signaling import run_signaling_server

    token = resolve_token(click.get_current_context(), token, token_file)

    def ready(server) -> None:
        click.echo(f"signaling server listening on {server.url}", err=True)
        if server.web_url:
            click.echo(f"web client at {server.web_url}", err=True)

    limits = {
        "max_connections_per_address": max_per_address,
        "max_unregistered_per_address": max(1, max_per_address // 8),
        "max_peers_per_address_in_room": max_room_peers_per_address,
        "idle_timeout": idle_timeout,
    }
    try:
        _run(
            run_signaling_server(
                host, port, default_token=_room_token(token), on_ready=ready, web=not no_web, **limits
            )
        )
    except Interrupted:
        click.echo("signaling server stopped", err=True)
    except OSError as error:
        raise click.ClickException(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


@main.command()
@_apply(connection_options)
@_apply(network_options)
@click.option("--peer-id", default="worker", show_default=True, help="This worker's id in the room.")
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
    "Only PATH, HOME, locale and GPU selection variables are passed by default.",
)
@click.option(
    "--max-unauthenticated",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="Sessions at once that have not yet proved the token; further offers are dropped.",
)
@click.option(
    "--auth-timeout",
    type=click.FloatRange(0, min_open=True),
    default=20.0,
    show_default=True,
    help="Seconds from a client's offer until it must have proved the token.",
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
    "--drain",
    is_flag=True,
    help="Do not start a worker: tell the one whose pid is in --pid-file to finish its running jobs and take "
    "no new ones (the same as sending it SIGUSR1).",
)
def worker(
    signal_url, room, token, token_file, signal_token, shared_root, ice_servers, any_interface, peer_id, work_dir,
    job_timeout, job_env, max_unauthenticated, auth_timeout, insecure_no_token, legacy, slots, labels, pid_file, drain,
) -> None:
    """Serve jobs: run each package's command and send its results back.

    Needs a token (--token or RTCXFER_TOKEN): every client must prove it knows it, and the
    worker proves it back, without the token ever crossing the network.
    """
    from rtcxfer.cli import room_commands as cli_room
    from rtcxfer.cli.config import resolve_token
    from rtcxfer.net.rate_limits import WorkerLimits
    from rtcxfer.protocol.errors import SignalingError, describe
    from rtcxfer.protocol.worker_description import DescriptionError, parse_label
    from rtcxfer.worker.rtc_worker_client import RTCWorkerClient

    if drain:
        if pid_file is None:
            raise click.UsageError("--drain needs --pid-file (the file the running worker was started with)")
        try:
            pid = cli_room.signal_drain(pid_file)
        except (OSError, ValueError) as error:
            raise click.ClickException(f"cannot signal the worker in {pid_file}: {error}") from None
        click.echo(f"asked worker {pid} to drain: it finishes its running jobs and takes no new ones", err=True)
        return
    try:
        label_map = dict(parse_label(text) for text in labels)
    except DescriptionError as error:
        raise click.BadParameter(str(error), param_hint="--label") from None
    token = resolve_token(click.get_current_context(), token, token_file)

    if not token and not insecure_no_token:
        raise click.UsageError(
            "a worker needs a token (--token or RTCXFER_TOKEN); without one anyone in the room could run jobs "
            "here. Make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'. "
            "To really serve anyone, pass --insecure-no-token."
        )
    if insecure_no_token and not token:
        click.echo(
            "WARNING: --insecure-no-token: this worker runs ANY job from ANY peer that reaches the room, "
            "and clients cannot tell it from an impostor.",
            err=True,
        )
    from rtcxfer.worker.jobrunner import forbid_inspection

    # Jobs run as this user: keep them from reading the token out of /proc/<worker>/environ.
    forbid_inspection()
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
    )
    if pid_file is not None:
        cli_room.write_pid_file(pid_file)
    shared = runner.shared_storage_root or "none"
    click.echo(
        f"worker {peer_id}: shared storage {shared}; transports {', '.join(runner.offered_transports())}; "
        f"work directory {runner.work_dir}",
        err=True,
    )
    if legacy:
        click.echo(
            f"worker {peer_id}: also serving sleap-rtc's legacy protocol; legacy sessions are authenticated "
            "only by the signaling server's token",
            err=True,
        )

    def ready() -> None:
        plural = "s" if slots != 1 else ""
        click.echo(
            f"worker {peer_id} waiting for jobs in room {room!r} on {signal_url} ({slots} job slot{plural})", err=True
        )

    def drain_now() -> None:
        click.echo(f"worker {peer_id}: draining: running jobs finish, no new ones are taken", err=True)
        runner.drain()

    async def serve() -> None:
        cli_room.install_drain_signal(drain_now)
        await runner.serve(
            signal_url,
            room,
            peer_id=peer_id,
            signaling_token=_room_token(signal_token or token),
            peer_options=_peer_options(ice_servers, any_interface),
            on_ready=ready,
            on_notice=lambda text: click.echo(f"worker {peer_id}: {text}", err=True),
        )

    try:
        _run(serve())
    except Interrupted:
        click.echo("worker stopped", err=True)
    except SignalingError as error:
        from rtcxfer.cli.messages import signaling_refusal

        code = getattr(error, "code", None)
        advice = signaling_refusal(code, signal_url, room, role="worker", peer_id=peer_id) if code else None
        raise click.ClickException(advice or f"signaling: {describe(error)}") from None
    finally:
        runner.close()


@main.command()
@click.argument("package", type=click.Path(exists=True, path_type=Path))
@_apply(connection_options)
@_apply(network_options)
@click.option("--transport", default=None, help="Force one transport (see `rtcxfer plugins`); default: automatic.")
@click.option(
    "--results",
    "results_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("rtcxfer-results"),
    show_default=True,
    help="Where results are placed.",
)
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for a worker.")
@click.option("--quiet", is_flag=True, help="No progress bars or job output; just the result.")
@click.option("--worker", "worker_id", default=None, metavar="ID", help="Run on this worker of the room.")
@click.option(
    "--require",
    "requirements",
    multiple=True,
    metavar="EXPR",
    help="Only a worker that meets EXPR (repeatable), e.g. gpu_memory_mb>=16000, label.site=hpc, transport=direct.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object describing the outcome on stdout.")
@click.option(
    "--pack-cache",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="RTCXFER_PACK_CACHE",
    default=None,
    help="Where packed directories are kept for the next run (default: $XDG_CACHE_HOME/rtcxfer/packs, "
    "else ~/.cache/rtcxfer/packs) [env RTCXFER_PACK_CACHE].",
)
@click.option(
    "--no-pack-cache", is_flag=True, help="Pack a directory for this run only (it cannot resume over direct)."
)
def submit(
    package, signal_url, room, token, token_file, signal_token, shared_root, ice_servers, any_interface, transport,
    results_dir, timeout, quiet, worker_id, requirements, as_json, pack_cache, no_pack_cache,
) -> None:
    """Run PACKAGE on a worker and download its results.

    PACKAGE is a ZIP with rtcxfer.json at its root, or a directory holding rtcxfer.json (sent
    as a ZIP of its files, kept in --pack-cache so that a re-run of the unchanged directory
    sends the same file and resumes an interrupted upload). It is checked before anything is
    sent.

    Exits 0 when the job succeeded, 1 when it failed, 2 when PACKAGE is not a job package or a
    forced transport is not installed or not usable, 3 when no worker could be reached (none
    meets --require, the one --worker names is absent) or the token was refused, 75 when the
    worker stopped during the job (submit again later), 130 when cancelled with Ctrl-C (the job
    is cancelled on the worker too). When every matching worker is busy, it waits in the queue.
    """
    from rtcxfer.cli.config import resolve_token
    from rtcxfer.cli.progress import ProgressDisplay
    from rtcxfer.client.pack_cache import PackCacheError
    from rtcxfer.client.packing import PackageError, check_package
    from rtcxfer.client.worker_choice import RequirementError, parse_requirement

    for text in requirements:
        try:
            parse_requirement(text)
        except RequirementError as error:
            raise click.BadParameter(str(error), param_hint="--require") from None
    token = resolve_token(click.get_current_context(), token, token_file)
    display = ProgressDisplay(enabled=not quiet)
    outcome = _SubmitOutcome(as_json, worker_id, requirements)
    with contextlib.ExitStack() as packed:
        pack = None
        try:
            if package.is_dir():
                pack = packed.enter_context(_pack(package, pack_cache, no_pack_cache))
                if pack.reused and not quiet:
                    click.echo(f"rtcxfer: {package.name} is unchanged: sending its earlier pack {pack.path}", err=True)
                package = pack.path
            else:
                check_package(package)
        except (PackageError, PackCacheError) as error:
            outcome.failure = str(error)
            click.echo(f"error: {error}", err=True)
            code = EXIT_USAGE
        else:
            try:
                code = _run(
                    _submit(
                        package,
                        signal_url,
                        room,
                        token,
                        signal_token,
                        shared_root,
                        ice_servers,
                        any_interface,
                        transport,
                        results_dir,
                        timeout,
                        display,
                        outcome,
                    )
                )
            except Interrupted:
                display.close()
                click.echo("cancelled", err=True)
                code = EXIT_CANCELLED
            if pack is not None:
                pack.succeeded = code == EXIT_OK
    if as_json:
        from rtcxfer.cli.room_commands import submit_json

        click.echo(submit_json(outcome.result, code, outcome.failure))
    sys.exit(code)


def _pack(directory: Path, cache_dir: Path | None, no_cache: bool):
    """The pack of ``directory`` for ``submit``: from the pack cache, or for this run only
    (``--no-pack-cache``, or a cache that cannot be used safely, which is said)."""
    from rtcxfer.client import pack_cache

    if not no_cache:
        try:
            return pack_cache.PackCache.open(cache_dir).pack(directory)
        except pack_cache.PackCacheError as error:
            click.echo(f"rtcxfer: {error}; packing for this run only (--pack-cache DIR chooses another)", err=True)
    return pack_cache.one_off(directory)


class _SubmitOutcome:
    """What ``submit`` learned, for its ``--json`` line; human lines go to stderr with --json."""

    def __init__(self, as_json: bool, worker_id: str | None, requirements: tuple[str, ...]) -> None:
        self.as_json = as_json
        self.worker_id = worker_id
        self.requirements = requirements
        self.result = None
        self.failure: str | None = None

    def say(self, line: str) -> None:
        click.echo(line, err=self.as_json)


async def _submit(
    package, signal_url, room, token, signal_token, shared_root, ice_servers, any_interface, transport, results_dir,
    timeout, display, outcome,
) -> int:
    from rtcxfer.cli import messages as advice
    from rtcxfer.client.rtc_client import RTCClient
    from rtcxfer.protocol.errors import PluginError, RtcxferError, describe

    try:
        client = RTCClient(
            token=token,
            shared_storage_root=shared_root,
            results_dir=results_dir,
            transport=transport,
            on_event=display.handle,
            peer_options=_peer_options(ice_servers, any_interface),
        )
    except PluginError as error:
        click.echo(f"error: {error}", err=True)
        return EXIT_USAGE
    try:
        async with client:
            try:
                room_token = _room_token(signal_token or token)
                async with display.waiting(f"waiting for a worker in room {room!r} (signaling {signal_url})"):
                    await client.connect(
                        signal_url,
                        room,
                        signaling_token=room_token,
                        timeout=timeout,
                        worker_id=outcome.worker_id,
                        require=outcome.requirements,
                    )
            except (RtcxferError, asyncio.TimeoutError, OSError) as error:
                outcome.failure = advice.connect_failure(error, signal_url, room, timeout)
                click.echo(f"error: {outcome.failure}", err=True)
                return EXIT_CONNECTION
            result = await client.submit(package)
            outcome.result = result
    except PluginError as error:
        display.close()
        click.echo(f"error: {error}", err=True)
        return EXIT_USAGE
    except RtcxferError as error:
        display.close()
        click.echo(f"error: {describe(error)}", err=True)
        return EXIT_JOB_FAILED
    display.close()
    if result.ok:
        from rtcxfer.cli.progress import format_size

        files = "1 file" if result.file_count == 1 else f"{result.file_count} files"
        # Measured here: JOB_COMPLETE's total is in MiB with two decimals, too coarse for small results.
        size = sum(path.stat().st_size for path in result.results_dir.rglob("*") if path.is_file())
        outcome.say(
            f"job {result.job_id} complete on worker {result.worker_id}: {files}, {format_size(size)} "
            f"(input via {result.input_transport}, results via {result.results_transport})"
        )
        outcome.say(f"results: {result.results_dir}")
        return EXIT_OK
    if result.worker_stopped:
        click.echo(f"error: {advice.worker_stopped(result.job_id)} ({result.failure})", err=True)
        return advice.EXIT_WORKER_STOPPED
    failure = result.failure or "no reason given"
    # The worker's own text usually names the job already ("Job X failed: ..."); say it once.
    if re.match(rf"job {re.escape(result.job_id)}\b", failure, re.IGNORECASE):
        click.echo(f"error: {failure}", err=True)
    else:
        click.echo(f"error: job {result.job_id} failed: {failure}", err=True)
    return EXIT_JOB_FAILED


@main.command()
@_apply(connection_options[:5])
@click.option("--json", "as_json", is_flag=True, help="Print the workers and their descriptions as JSON.")
def workers(signal_url, room, token, token_file, signal_token, as_json) -> None:
    """List the workers of a room: state, job slots, GPU, labels, transports, uptime."""
    from rtcxfer.cli import room_commands as cli_room
    from rtcxfer.cli.config import resolve_token
    from rtcxfer.client.room import list_workers
    from rtcxfer.protocol.errors import RtcxferError, describe

    token = resolve_token(click.get_current_context(), token, token_file)

    try:
        found = _run(list_workers(signal_url, room, signaling_token=_room_token(signal_token or token)))
    except RtcxferError as error:
        click.echo(f"error: cannot list the workers of room {room!r} via {signal_url}: {describe(error)}", err=True)
        sys.exit(EXIT_CONNECTION)
    if as_json:
        click.echo(cli_room.workers_json(found))
    elif not found:
        click.echo(f"no workers in room {room!r}", err=True)
    else:
        click.echo(cli_room.render_table(cli_room.WORKER_COLUMNS, cli_room.worker_rows(found)))


@main.command()
def plugins() -> None:
    """List every installed transport, with the distribution and version that provides it."""
    from rtcxfer.transport.host import PluginHost

    host = PluginHost()
    rows = [
        (info.name, str(info.rank), info.plugin, f"{info.distribution} {info.version}", info.transport.description)
        for info in host.transports()
    ]
    header = ("TRANSPORT", "RANK", "PLUGIN", "DISTRIBUTION", "DESCRIPTION")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    for name, reason in host.failures.items():
        click.echo(f"skipped plugin {name}: {reason}", err=True)
    if host.blocked:
        click.echo(f"blocked: {', '.join(sorted(host.blocked))}", err=True)
    if not host.autoload:
        click.echo("plugin autoloading is off: built-in transports only", err=True)


@main.command()
@click.option(
    "--shared-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Check this directory instead of the detected one.",
)
def doctor(shared_root: Path | None) -> None:
    """Show what shared storage this machine sees and whether a peer could verify it."""
    from rtcxfer.files.shared_storage import KNOWN_MOUNT_POINTS, detect_shared_root, write_probe
    from rtcxfer.protocol.frames import SharedProbe
    from rtcxfer.transport.host import PluginHost
    from rtcxfer.transports.shared_fs import check_probe

    choice = detect_shared_root(shared_root)
    click.echo(f"rtcxfer {__version__} on Python {sys.version.split()[0]}")
    click.echo(f"shared storage root: {choice.root or 'none'} ({choice.source})")
    click.echo(f"  checked: --shared-root, ${'SHARED_STORAGE_ROOT'}, then {', '.join(KNOWN_MOUNT_POINTS)}")
    healthy = True
    if choice.root is None and (shared_root is not None or os.environ.get("SHARED_STORAGE_ROOT", "").strip()):
        # Asked for, and not there: a typo or a missing mount, not a machine without one.
        click.echo("  PROBLEM: the root you named is not a directory: fix the path, or mount the storage there")
        healthy = False
    if choice.root is not None:
        writable = os.access(choice.root, os.W_OK)
        click.echo(f"  writable: {'yes' if writable else 'no'}")
        if writable:
            probe = write_probe(choice.root)
            try:
                verdict = check_probe(choice.root, SharedProbe(probe.sha256, probe.relative_path))
            finally:
                probe.remove()
            click.echo(f"  probe written and read back through the worker's validator: {verdict}")
            click.echo("  a peer mounting the same storage will verify it at the start of each session")
            healthy = verdict == "verified"
        else:
            healthy = False
    host = PluginHost()
    click.echo("transports: " + ", ".join(f"{i.name} ({i.distribution} {i.version})" for i in host.transports()))
    try:
        import uvloop  # noqa: F401

        click.echo("event loop: uvloop available (used by the rtcxfer command)")
    except ImportError:
        click.echo("event loop: asyncio (install rtcxfer[fast] for uvloop)")
    sys.exit(0 if healthy else 1)


@main.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to put the demo's files (default: a new temporary directory).",
)
def demo(directory: Path | None) -> None:
    """Run a whole job round trip on 127.0.0.1: over shared-fs, direct, then rtc-chunked.

    Starts a signaling server, a worker and a client in this process, runs the sample job
    package once per transport, and prints which transport moved what, how long it took and
    where the results are. Needs nothing configured and no network but loopback.
    """
    from rtcxfer.cli.demo import run_demo
    from rtcxfer.cli.progress import ProgressDisplay

    display = ProgressDisplay(enabled=sys.stderr.isatty())
    where, runs = _run(run_demo(directory, on_event=display.handle))
    display.close()
    click.echo(f"demo directory: {where}")
    package = where / "shared" / "jobs" / "sample-package.zip"
    click.echo(f"sample job package: {package} ({package.stat().st_size} bytes; the job counts words)")
    ok = True
    for run in runs:
        result = run.result
        if result.ok:
            click.echo(
                f"{run.transport:>12}: package via {result.input_transport}, results via "
                f"{result.results_transport}; {result.file_count} files, {result.total_mb} MiB "
                f"in {run.seconds:.2f} s -> {result.results_dir}"
            )
        else:
            ok = False
            click.echo(f"{run.transport:>12}: FAILED: {result.failure}")
    sys.exit(0 if ok else 1)

