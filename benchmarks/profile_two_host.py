"""Where the CPU of an rtc-chunked transfer goes, on both sides, between two network namespaces.

    sudo python3 benchmarks/profile_two_host.py [--size MiB] [--rate 1gbit] [--native] [--out DIR]

One transfer of ``--size`` MiB (default 256) by the ``chunked`` children of ``run.py`` (sender in
host A, receiver in host B, a signaling server in A), each side sampled by py-spy
(``pip install py-spy``; on-CPU samples only). Prints each side's CPU seconds and MB/s, then the
functions with the most samples of their own (self) and in total (inclusive), as shares of that
side's samples; the raw collapsed stacks stay in ``--out`` (speedscope or flamegraph tools read
them).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

from run import MiB, finish, make_file, mbps, quiet, spawn
from two_host import _start_signaling

from rtcxfer.testing.two_hosts import two_hosts


def _function(frame: str) -> str:
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1].split(':')[0].rstrip(')')})"


def summarize(stacks: Path, top: int) -> list[str]:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in stacks.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if not frames:
            continue
        samples = int(count)
        total += samples
        # "function (path/file.py:line)" -> "function (file.py)": one entry per function.
        names = [_function(frame) for frame in frames.split(";")]
        own[names[-1]] += samples
        for name in set(names):
            inclusive[name] += samples
    lines = [f"  {total} samples", "  self:"]
    lines += [f"    {100 * n / total:5.1f} %  {name}" for name, n in own.most_common(top)]
    lines.append("  inclusive:")
    lines += [f"    {100 * n / total:5.1f} %  {name}" for name, n in inclusive.most_common(top * 2)]
    return lines


async def main_async(args: argparse.Namespace, workdir: Path) -> None:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    file = workdir / f"profile-{args.size}MiB.bin"
    make_file(file, args.size * MiB)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with two_hosts(rate=args.rate) as bed:
        signaling, url = await _start_signaling(bed)
        try:
            await quiet()
            room = f"profile-{secrets.token_hex(4)}"
            common = ["--url", url, "--room", room, "--loop", args.loop, "--any-interface"]

            def sampled(side: str) -> list[str]:
                if args.cprofile:
                    return []  # the children write cProfile files (RTCXFER_BENCH_PROFILE)
                flags = ["--native"] if args.native else []
                return [pyspy, "record", "--format", "raw", "--rate", "250", *flags, "-o", str(out / f"{side}.txt"),
                        "--", ]  # fmt: skip

            receiver = await spawn(
                "chunked-recv",
                *common,
                "--dir",
                str(workdir / "incoming"),
                prefix=[*bed.b.prefix, *sampled("receiver")],
            )
            sender = await spawn(
                "chunked-send", *common, "--dir", str(workdir / "unused"), "--files", str(file),
                prefix=[*bed.a.prefix, *sampled("sender")],
            )  # fmt: skip
            sent, received = await asyncio.gather(finish(sender, "sender"), finish(receiver, "receiver"))
        finally:
            signaling.terminate()  # our own child, by its handle
            await signaling.wait()
    print(
        f"rtc-chunked {args.size} MiB ({bed.describe()}): {mbps(sent):.1f} MB/s; CPU seconds sender "
        f"{sent['cpu_seconds']:.2f}, receiver {received['cpu_seconds']:.2f}"
    )
    if args.cprofile:
        import pstats

        for path in sorted(out.glob("chunked-*.prof")):
            print(f"{path.name}:")
            pstats.Stats(str(path)).sort_stats("tottime").print_stats(args.top)
        return
    for side in ("sender", "receiver"):
        print(f"{side}:")
        print("\n".join(summarize(out / f"{side}.txt", args.top)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rate", default=None, help="tc tbf rate on both veth ends (e.g. 1gbit)")
    parser.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    parser.add_argument("--cprofile", action="store_true", help="cProfile in the children instead of py-spy")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", default="/tmp/rtcxfer-profile")
    args = parser.parse_args()
    if args.cprofile:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        os.environ["RTCXFER_BENCH_PROFILE"] = str(Path(args.out).resolve())
    workdir = Path(tempfile.mkdtemp(prefix="rtcxfer-profile-"))
    try:
        asyncio.run(main_async(args, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
