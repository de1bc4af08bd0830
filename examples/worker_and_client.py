"""A worker and a client from Python, on this machine: the sample job sent and its results back.

    python3 examples/worker_and_client.py [PACKAGE.zip]

It starts a signaling server on 127.0.0.1, a worker (``RTCWorkerClient.serve``) and a client
(``RTCClient``) in one process; between two machines each runs on its own side, with the same
token. The token is given once to each peer: the signaling server is shown an HMAC of it.
"""

import asyncio
import secrets
import sys
import tempfile
from pathlib import Path

from rtcxfer import RTCClient, RTCWorkerClient, SignalingServer, build_sample_package, signaling_token


async def run(package: Path, results: Path) -> int:
    token = secrets.token_urlsafe(32)  # in real use: the same secret on both machines
    async with SignalingServer("127.0.0.1", 0, default_token=signaling_token(token)) as server:
        worker = RTCWorkerClient(token=token)
        serving = asyncio.create_task(worker.serve(server.url, "lab"))
        try:
            async with RTCClient(token=token, results_dir=results) as client:
                await client.connect(server.url, "lab")
                result = await client.submit(package)
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            worker.close()
    if not result.ok:
        print(f"job {result.job_id} failed: {result.failure}", file=sys.stderr)
        return 1
    print(f"job {result.job_id}: {result.file_count} files via {result.input_transport} in {result.results_dir}")
    for path in sorted(result.results_dir.rglob("*")):
        if path.is_file():
            print(f"  {path.relative_to(result.results_dir)} ({path.stat().st_size} bytes)")
    return 0


def main() -> int:
    with tempfile.TemporaryDirectory() as scratch:
        if len(sys.argv) > 1:
            package = Path(sys.argv[1])
        else:
            package = build_sample_package(Path(scratch) / "sample-package.zip")
        return asyncio.run(run(package, Path("rtcxfer-results")))


if __name__ == "__main__":
    sys.exit(main())
