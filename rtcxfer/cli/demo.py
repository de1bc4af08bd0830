"""``rtcxfer demo``: a whole job round trip on 127.0.0.1, once per built-in transport.

It starts a signaling server, a worker and a client in this process, builds the sample job
package on a temporary "shared storage" directory that both sides see, and runs it once over
each transport rtcxfer itself ships, best first (today ``shared-fs``, ``direct``, TLS over a
TCP connection on 127.0.0.1, and ``rtc-chunked``).
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import click

from rtcxfer.cli.running import run_until_interrupted

if TYPE_CHECKING:  # pragma: no cover - loaded when the demo runs: `rtcxfer --help` stays quick
    from rtcxfer.client.rtc_client import ClientEvent, JobResult


@attrs.frozen
class DemoRun:
    transport: str
    result: JobResult
    seconds: float


async def run_demo(
    directory: Path | None = None,
    transports: tuple[str, ...] | None = None,
    on_event: Callable[[ClientEvent], None] | None = None,
) -> tuple[Path, list[DemoRun]]:
    """Run the sample job once per transport (default: every built-in one, best first);
    returns the demo directory and the runs."""
    from rtcxfer.client.rtc_client import RTCClient
    from rtcxfer.client.sample import build_sample_package
    from rtcxfer.net.signaling import SignalingServer
    from rtcxfer.protocol.auth import signaling_token
    from rtcxfer.worker.rtc_worker_client import RTCWorkerClient

    if transports is None:
        transports = builtin_transports()
    directory = Path(directory or tempfile.mkdtemp(prefix="rtcxfer-demo-"))
    shared = directory / "shared"
    package = build_sample_package(shared / "jobs" / "sample-package.zip")
    token = secrets.token_urlsafe(16)
    runs: list[DemoRun] = []
    room_token = signaling_token(token)  # as the rtcxfer command does: the token stays here
    async with SignalingServer("127.0.0.1", 0, default_token=room_token) as signaling:
        worker = RTCWorkerClient(token=token, shared_storage_root=shared, work_dir=directory / "worker")
        ready = asyncio.Event()
        serving = asyncio.create_task(
            worker.serve(signaling.url, "demo", signaling_token=room_token, on_ready=ready.set)
        )
        try:
            await asyncio.wait_for(ready.wait(), 30)
            for transport in transports:
                client = RTCClient(
                    token=token,
                    shared_storage_root=shared,
                    results_dir=directory / "results",
                    transport=transport,
                    on_event=on_event,
                )
                async with client:
                    await client.connect(signaling.url, "demo", signaling_token=room_token)
                    started = time.perf_counter()
                    result = await client.submit(package, job_id=f"demo-{transport}")
                    runs.append(DemoRun(transport, result, time.perf_counter() - started))
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
    return directory, runs


def builtin_transports() -> tuple[str, ...]:
    """The transports rtcxfer itself ships, best first."""
    from rtcxfer.transport.host import PluginHost

    return tuple(info.name for info in PluginHost(autoload=False).transports())


@click.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to put the demo's files (default: a new temporary directory).",
)
def demo(directory: Path | None) -> None:
    """Run a whole job round trip on 127.0.0.1, once over each built-in transport.

    Starts a signaling server, a worker and a client in this process, runs the sample job
    package once per transport, and prints which transport moved what, how long it took and
    where the results are. Needs nothing configured and no network but loopback.
    """
    from rtcxfer.cli.progress import ProgressDisplay

    display = ProgressDisplay(enabled=sys.stderr.isatty())
    where, runs = run_until_interrupted(run_demo(directory, on_event=display.handle))
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

