"""Progress for people: a bar per file moving (either way) and for the job on a terminal, plain
lines when stderr is not one (a log file, a pipe), and a one-line record of every transfer.

Sizes and rates are in binary units and say so (``KiB``, ``MiB``, ``MiB/s``). Transfers come
from :attr:`rtcxfer.transport.base.TransportContext.progress`, so a transport this module has never
heard of gets a bar too.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator

from tqdm import tqdm

from rtcxfer.client.rtc_client import ClientEvent

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
#: Seconds between the spinner's frames.
SPIN_INTERVAL = 0.1


def format_size(size: float) -> str:
    """``size`` bytes in the largest binary unit that keeps it at 1 or more: ``12.3 MiB``."""
    unit = 0
    while size >= 1024 and unit < len(_UNITS) - 1:
        size /= 1024
        unit += 1
    return f"{size:.0f} B" if unit == 0 else f"{size:.1f} {_UNITS[unit]}"


def format_rate(size: int, seconds: float) -> str:
    return f"{format_size(size / seconds)}/s" if seconds > 0 else "-"


def transfer_record(direction: str, name: str, transport: str, size: int, seconds: float) -> str:
    """The line a finished transfer leaves: ``sent pkg.zip via rtc-chunked: 12.3 MiB in 1.2 s
    (10.3 MiB/s)``."""
    verb = "sent" if direction == "up" else "received"
    elapsed = f"{seconds:.2f}" if seconds < 10 else f"{seconds:.0f}"
    return f"{verb} {name} via {transport}: {format_size(size)} in {elapsed} s ({format_rate(size, seconds)})"


class _Transfer:
    def __init__(self, bar: tqdm | None, total: int, start_done: int) -> None:
        self.bar = bar
        self.total = total
        self.started = time.monotonic()
        #: Bytes already there when it started (a resumed transfer): not counted in the rate.
        self.start_done = start_done


class ProgressDisplay:
    """Turns :class:`~rtcxfer.client.rtc_client.ClientEvent` objects into bars and lines on ``stream``.

    ``interactive`` (default: whether ``stream`` is a terminal) picks bars redrawn in place;
    otherwise every line is written once, whole, with no carriage return.
    """

    def __init__(self, *, enabled: bool = True, stream=None, interactive: bool | None = None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        if interactive is None:
            isatty = getattr(self.stream, "isatty", None)
            interactive = bool(isatty and isatty())
        self.interactive = interactive
        self._transfers: dict[str, _Transfer] = {}
        self._job_bars: dict[str, tqdm] = {}
        self._spinning = False

    def handle(self, event: ClientEvent) -> None:
        if not self.enabled:
            return
        data = event.data
        if event.kind == "transfer":
            self._transfer(data)
        elif event.kind == "progress":
            self._job_progress(event.job_id or "job", data["done"], data["total"])
        elif event.kind == "log":
            self._write(f"  | {data['line']}")
        elif event.kind == "status":
            self._write(f"[{event.job_id}] {data['state']}")
        elif event.kind == "notice":
            self._write(f"rtcxfer: {data['message']}")

    def _transfer(self, data: dict) -> None:
        key = f"{data['transport']}:{data['name']}"
        done, total = data["done"], data["total"]
        direction = data.get("direction", "up")
        transfer = self._transfers.get(key)
        if transfer is None:
            bar = None
            arrow = "->" if direction == "up" else "<-"
            label = f"{arrow} {data['name']} via {data['transport']}"
            if self.interactive:
                bar = tqdm(
                    total=total,
                    desc=label,
                    file=self.stream,
                    leave=False,
                    dynamic_ncols=True,
                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}",
                )
            elif done < total:
                resumed = f", resuming at {format_size(done)}" if done else ""
                self._write(f"{label}: {format_size(total)}{resumed}")
            # A first report that is already the last one (a small file) started at zero.
            transfer = self._transfers[key] = _Transfer(bar, total, done if done < total else 0)
        if transfer.bar is not None:
            elapsed = time.monotonic() - transfer.started
            transfer.bar.n = done
            transfer.bar.set_postfix_str(
                f"{format_size(done)}/{format_size(total)} {format_rate(done - transfer.start_done, elapsed)}",
                refresh=True,
            )
        if done >= total:
            del self._transfers[key]
            seconds = time.monotonic() - transfer.started
            if transfer.bar is not None:
                transfer.bar.close()
            self._write(
                transfer_record(direction, data["name"], data["transport"], total - transfer.start_done, seconds)
            )

    def _job_progress(self, job_id: str, done: int, total: int) -> None:
        bar = self._job_bars.get(job_id)
        if bar is None:
            if not self.interactive:
                self._write(f"[{job_id}] progress {done}/{total}")
                return
            bar = self._job_bars[job_id] = tqdm(
                total=total,
                desc=f"job {job_id}",
                file=self.stream,
                leave=False,
                dynamic_ncols=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} [{elapsed}]",
            )
        bar.total = total
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()
            del self._job_bars[job_id]
            self._write(f"[{job_id}] progress {done}/{total}")

    @contextlib.asynccontextmanager
    async def waiting(self, text: str) -> AsyncIterator[None]:
        """Say ``text`` at once and, on a terminal, spin until the block ends."""
        if not self.enabled:
            yield
            return
        self._write(f"rtcxfer: {text}")
        if not self.interactive:
            yield
            return
        spinner = asyncio.ensure_future(self._spin(text))
        self._spinning = True
        try:
            yield
        finally:
            self._spinning = False
            spinner.cancel()
            await asyncio.gather(spinner, return_exceptions=True)
            self.stream.write("\r\033[K")
            self.stream.flush()

    async def _spin(self, text: str) -> None:
        started = time.monotonic()
        frames = "|/-\\"
        tick = 0
        while True:
            elapsed = time.monotonic() - started
            self.stream.write(f"\r{frames[tick % len(frames)]} {text} ({elapsed:.0f} s)\033[K")
            self.stream.flush()
            tick += 1
            await asyncio.sleep(SPIN_INTERVAL)

    def _write(self, line: str) -> None:
        if self._spinning:
            self.stream.write("\r\033[K")  # the line goes where the spinner was; it redraws below
        if self.interactive:
            tqdm.write(line, file=self.stream)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        for transfer in self._transfers.values():
            if transfer.bar is not None:
                transfer.bar.close()
        self._transfers.clear()
        for bar in self._job_bars.values():
            bar.close()
        self._job_bars.clear()
