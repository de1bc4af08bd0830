"""The local demo behind ``rtcxfer demo``: a whole job round trip, twice, on 127.0.0.1.

It starts a signaling server, a worker and a client in this process, builds the sample job
package on a temporary "shared storage" directory that both sides see, and runs it once over
``shared-fs``, once over ``direct`` (TLS over a TCP connection on 127.0.0.1) and once over
``rtc-chunked``.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from rtcxfer.client.rtc_client import ClientEvent, JobResult, RTCClient
from rtcxfer.client.sample import build_sample_package
from rtcxfer.net.signaling import SignalingServer
from rtcxfer.protocol.auth import signaling_token
from rtcxfer.worker.rtc_worker_client import RTCWorkerClient


@attrs.frozen
class DemoRun:
    transport: str
    result: JobResult
    seconds: float


async def run_demo(
    directory: Path | None = None,
    transports: tuple[str, ...] = ("shared-fs", "direct", "rtc-chunked"),
    on_event: Callable[[ClientEvent], None] | None = None,
) -> tuple[Path, list[DemoRun]]:
    """Run the sample job once per transport; returns the demo directory and the runs."""
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
