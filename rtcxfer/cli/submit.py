"""``rtcxfer submit``: run a package on a worker of the room and bring its results home."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import click

from rtcxfer.cli.messages import (
    EXIT_CANCELLED,
    EXIT_CONNECTION,
    EXIT_JOB_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    EXIT_WORKER_STOPPED,
)
from rtcxfer.cli.options import (
    apply_options,
    connection_options,
    network_options,
    peer_options,
    room_token,
    signaling_tls,
    tls_options,
)
from rtcxfer.cli.running import Interrupted, run_until_interrupted


@click.command()
@click.argument("package", type=click.Path(exists=True, path_type=Path))
@apply_options(connection_options)
@apply_options(tls_options)
@apply_options(network_options)
@click.option("--transport", default=None, help="Force one transport (see `rtcxfer plugins`); default: automatic.")
@click.option(
    "--results",
    "results_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("rtcxfer-results"),
    show_default=True,
    help="Where results are placed.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0),
    default=60.0,
    show_default=True,
    help="Seconds to wait for a worker to take the job: for one to join the room, or for a busy or draining one "
    "to be free again (then exit 3); 0 waits without limit.",
)
@click.option("--quiet", is_flag=True, help="No progress bars or job output; just the result.")
@click.option("--worker", "worker_id", default=None, metavar="ID", help="Run on this worker of the room.")
@click.option(
    "--require",
    "requirements",
    multiple=True,
    metavar="EXPR",
    help="Only a worker that meets EXPR (repeatable), e.g. gpu_memory_mb>=16000, label.site=hpc, transport=direct.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="At the end, print one JSON object on stdout (human lines go to stderr), with the keys "
    "ok, exit_status (the job's command's; null if it did not run to an exit), submit_exit_code (this "
    "command's), job_id, worker_id, path, input_transport, results_transport (null for one that carried "
    "nothing), bytes_sent, bytes_received, seconds (total, packing, waiting for a worker, connect: to the "
    "package's first byte, transfer, run), "
    "results_dir, failure.",
)
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
    package, signal_url, room, token, token_file, signal_token, shared_root, ca_file, ice_servers, ice_username,
    ice_credential_file, any_interface, transport, results_dir, timeout, quiet, worker_id, requirements, as_json,
    pack_cache, no_pack_cache,
) -> None:
    """Run PACKAGE on a worker and download its results.

    PACKAGE is a ZIP with rtcxfer.json at its root, or a directory holding rtcxfer.json (sent
    as a ZIP of its files, kept in --pack-cache so that a re-run of the unchanged directory
    sends the same file and resumes an interrupted upload). It is checked before anything is
    sent.

    Exits 0 when the job succeeded, 1 when it failed, 2 when PACKAGE is not a job package or a
    forced transport is not installed or not usable, 3 when no worker could be reached (none
    meets --require, the one --worker names is absent, none took the job within --timeout) or the
    token was refused, 75 when the worker stopped during the job (submit again later), 130 when
    cancelled with Ctrl-C (the job is cancelled on the worker too). When every matching worker is
    busy or draining, it waits in the queue, up to --timeout.
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
    network = _Network(peer_options(ice_servers, any_interface, ice_username, ice_credential_file),
                       signaling_tls(ca_file))
    display = ProgressDisplay(enabled=not quiet)
    outcome = _SubmitOutcome(as_json, worker_id, requirements, token_given=bool(token))
    with contextlib.ExitStack() as packed:
        pack = None
        try:
            if package.is_dir():
                packing_started = time.monotonic()
                progress = display.packing(package.resolve().name or str(package))
                pack = packed.enter_context(_pack(package, pack_cache, no_pack_cache, progress))
                outcome.seconds["packing"] = round(time.monotonic() - packing_started, 3)
                if pack.reused and not quiet:
                    click.echo(f"rtcxfer: {package.name} is unchanged: sending its earlier pack {pack.shown}", err=True)
                package = pack.path
            else:
                check_package(package)
        except (PackageError, PackCacheError) as error:
            display.close()
            outcome.failure = str(error)
            click.echo(f"error: {error}", err=True)
            code = EXIT_USAGE
        except KeyboardInterrupt:  # Ctrl-C while packing: nothing was sent yet
            display.close()
            click.echo("cancelled", err=True)
            code = EXIT_CANCELLED
        else:
            try:
                code = run_until_interrupted(
                    _submit(
                        package,
                        signal_url,
                        room,
                        token,
                        signal_token,
                        shared_root,
                        network,
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
        outcome.seconds["total"] = round(time.monotonic() - outcome.started, 3)
        outcome.seconds["connect"] = outcome.connect_seconds
        click.echo(submit_json(outcome.result, code, outcome.failure, outcome.seconds))
    sys.exit(code)


def _pack(directory: Path, cache_dir: Path | None, no_cache: bool, progress=None):
    """The pack of ``directory`` for ``submit``: from the pack cache, or for this run only
    (``--no-pack-cache``, or a cache that cannot be used safely, which is said); ``progress``
    hears how the packing goes."""
    from rtcxfer.client import pack_cache

    if not no_cache:
        try:
            return pack_cache.PackCache.open(cache_dir).pack(directory, progress)
        except pack_cache.PackCacheError as error:
            click.echo(f"rtcxfer: {error}; packing for this run only (--pack-cache DIR chooses another)", err=True)
    return pack_cache.one_off(directory, progress)


class _SubmitOutcome:
    """What ``submit`` learned, for its ``--json`` line; human lines go to stderr with --json."""

    def __init__(
        self, as_json: bool, worker_id: str | None, requirements: tuple[str, ...], *, token_given: bool
    ) -> None:
        self.as_json = as_json
        self.worker_id = worker_id
        self.requirements = requirements
        self.token_given = token_given
        self.result = None
        self.failure: str | None = None
        #: When the command began, and where its time went (see :func:`submit_json`).
        self.started = time.monotonic()
        self.seconds: dict[str, float] = {}
        #: When this process started (imports included) and when the package's first byte left.
        self.process_started = _command_started()
        self.first_byte: float | None = None

    def say(self, line: str) -> None:
        click.echo(line, err=self.as_json)

    def watching(self, handle):
        """``handle`` (the client's event callback), noting when the first byte goes up."""

        def on_event(event) -> None:
            if self.first_byte is None and event.kind == "transfer" and event.data.get("direction") == "up":
                self.first_byte = time.monotonic()
            handle(event)

        return on_event

    @property
    def connect_seconds(self) -> float | None:
        """Seconds from the command's start (the process's, imports included) to the first byte."""
        return None if self.first_byte is None else round(self.first_byte - self.process_started, 3)


def _command_started() -> float:
    """When this process started, on the monotonic clock (Linux: from /proc; elsewhere: now)."""
    try:
        with open("/proc/self/stat") as stat:
            # The fields after the command's name, which may contain spaces; starttime is field 22.
            fields = stat.read().rpartition(")")[2].split()
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic()
    return time.monotonic() - max(0.0, age)


class _Network:
    """How ``submit`` reaches the worker: its PeerOptions, and the TLS context for a wss:// server."""

    def __init__(self, peer_options, signaling_ssl) -> None:
        self.peer_options = peer_options
        self.signaling_ssl = signaling_ssl


async def _submit(
    package, signal_url, room, token, signal_token, shared_root, network, transport, results_dir,
    timeout, display, outcome,
) -> int:
    from rtcxfer.cli import messages
    from rtcxfer.client.rtc_client import RTCClient
    from rtcxfer.protocol.errors import PluginError, RtcxferError, describe

    try:
        client = RTCClient(
            token=token,
            shared_storage_root=shared_root,
            results_dir=results_dir,
            transport=transport,
            on_event=outcome.watching(display.handle),
            peer_options=network.peer_options,
        )
    except PluginError as error:
        outcome.failure = str(error)
        click.echo(f"error: {error}", err=True)
        return EXIT_USAGE
    try:
        async with client:
            waiting_started = time.monotonic()
            try:
                async with display.waiting(f"waiting for a worker in room {room!r} (signaling {signal_url})"):
                    await client.connect(
                        signal_url,
                        room,
                        signaling_token=room_token(signal_token or token),
                        timeout=timeout or None,
                        worker_id=outcome.worker_id,
                        require=outcome.requirements,
                        signaling_ssl=network.signaling_ssl,
                    )
            except (RtcxferError, asyncio.TimeoutError, OSError) as error:
                outcome.failure = messages.connect_failure(
                    error, signal_url, room, timeout, token_given=outcome.token_given
                )
                click.echo(f"error: {outcome.failure}", err=True)
                return EXIT_CONNECTION
            finally:
                outcome.seconds["waiting"] = round(time.monotonic() - waiting_started, 3)
            result = await client.submit(package)
            outcome.result = result
    except PluginError as error:
        display.close()
        outcome.failure = str(error)
        click.echo(f"error: {error}", err=True)
        return EXIT_USAGE
    except RtcxferError as error:
        display.close()
        outcome.failure = describe(error)
        click.echo(f"error: {outcome.failure}", err=True)
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
        click.echo(f"error: {messages.worker_stopped(result.job_id, result.worker_id, result.failure)}", err=True)
        return EXIT_WORKER_STOPPED
    # The worker's words (they name the job: "Job X failed: ..."), or the client's own.
    click.echo(f"error: {result.failure or f'job {result.job_id} failed; no reason given'}", err=True)
    return EXIT_JOB_FAILED


#: The keys of ``seconds`` in ``submit --json`` (each a number, or null where that phase did not happen).
JSON_SECONDS = ("total", "packing", "waiting", "connect", "transfer", "run")


def submit_json(result, exit_code: int, failure: str | None = None, seconds: dict | None = None) -> str:
    """The one line ``rtcxfer submit --json`` prints at the end (the README's "Many workers"
    section lists its keys).

    ``exit_status`` is the job's: its command's exit status (0 for a job that completed), null
    when the command did not run to an exit of its own; ``submit_exit_code`` is what ``submit``
    itself exits with. ``seconds``: ``total`` from the command's start to its end, ``packing``
    a directory, ``waiting`` for a worker (the room's queue included), ``connect`` from the
    process's start (imports included) to the package's first byte, and of the job
    ``transfer`` (input and results moving) and ``run`` (its command). A transport that carried
    nothing (a package not delivered, results of a failed job) is null.
    """
    measured = dict(seconds or {})
    if result is not None:
        measured.update({key: value for key, value in result.seconds.items() if key != "total"})
    return json.dumps(
        {
            "ok": bool(result is not None and result.ok),
            "exit_status": result.exit_status if result is not None else None,
            "submit_exit_code": exit_code,
            "job_id": result.job_id if result is not None else None,
            "worker_id": result.worker_id if result is not None else None,
            "path": result.path if result is not None else None,
            "input_transport": result.input_transport if result is not None else None,
            "results_transport": result.results_transport if result is not None else None,
            "bytes_sent": result.bytes_sent if result is not None else 0,
            "bytes_received": result.bytes_received if result is not None else 0,
            "seconds": {key: measured.get(key) for key in JSON_SECONDS},
            "results_dir": str(Path(result.results_dir).resolve()) if result is not None and result.results_dir
            else None,
            "failure": result.failure if result is not None and not result.ok else failure,
        },
        sort_keys=False,
    )
