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


def format_seconds(seconds: float) -> str:
    return f"{seconds:.2f}" if seconds < 10 else f"{seconds:.0f}"


def transfer_record(direction: str, name: str, transport: str, size: int, seconds: float, resumed: int = 0) -> str:
    """The line a finished transfer leaves: ``sent pkg.zip via rtc-chunked: 12.3 MiB in 1.2 s
    (10.3 MiB/s)``. ``size`` is the whole file; ``resumed`` bytes of it were there already (an
    interrupted transfer taken up again), which the line says and the rate leaves out:
    ``sent pkg.zip via rtc-chunked: 100.0 MiB (83.4 MiB resumed, 16.6 MiB sent) in ...``."""
    verb = "sent" if direction == "up" else "received"
    moved = size - resumed
    amount = format_size(size)
    if resumed:
        amount += f" ({format_size(resumed)} resumed, {format_size(moved)} {verb})"
    return f"{verb} {name} via {transport}: {amount} in {format_seconds(seconds)} s ({format_rate(moved, seconds)})"


def format_eta(seconds: float) -> str:
    """``ETA 00:07`` / ``ETA 1:02:03`` for ``seconds`` still to go (as the job's bar shows it)."""
    return f"ETA {tqdm.format_interval(seconds)}"


class SizeBar(tqdm):
    """A bar counting bytes, with the fields its ``bar_format`` needs in binary units:
    ``{sizes}`` (``12.3 MiB/100.0 MiB``), ``{speed}`` (``10.3 MiB/s``) and ``{eta}`` (``ETA 00:07``);
    the last two blank until known. Bytes there at the start (``initial``: a resumed transfer) are not
    counted in the speed. (Extending ``format_dict`` is how tqdm lets a bar format add fields.)"""

    BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {sizes} {speed} {eta}"

    @property
    def format_dict(self):
        fields = super().format_dict
        done, total, elapsed = fields["n"], fields["total"] or 0, fields["elapsed"]
        moved = done - self.initial
        rate = moved / elapsed if elapsed > 0 and moved > 0 else 0.0
        fields["sizes"] = f"{format_size(done)}/{format_size(total)}"
        fields["speed"] = f"{format_size(rate)}/s" if rate else ""
        fields["eta"] = format_eta((total - done) / rate) if rate and done < total else ""
        return fields


def size_bar(label: str, total: int, initial: int, stream) -> SizeBar:
    return SizeBar(
        total=total,
        initial=initial,
        desc=label,
        file=stream,
        leave=False,
        dynamic_ncols=True,
        bar_format=SizeBar.BAR_FORMAT,
    )


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
        self._packing_bar: tqdm | None = None

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
            # A first report that is already the last one (a small file) started at zero; one
            # part way is a transfer taken up where an interrupted one stopped.
            start_done = done if done < total else 0
            resuming = f", resuming at {format_size(start_done)}" if start_done else ""
            if self.interactive:
                bar = size_bar(f"{label}{resuming}", total, start_done, self.stream)
            elif done < total:
                self._write(f"{label}: {format_size(total)}{resuming}")
            transfer = self._transfers[key] = _Transfer(bar, total, start_done)
        if transfer.bar is not None:
            transfer.bar.n = done
            transfer.bar.refresh()
        if done >= total:
            del self._transfers[key]
            seconds = time.monotonic() - transfer.started
            if transfer.bar is not None:
                transfer.bar.close()
            self._write(
                transfer_record(direction, data["name"], data["transport"], total, seconds, transfer.start_done)
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
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} [{elapsed}, ETA {remaining}]",
            )
        bar.total = total
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()
            del self._job_bars[job_id]
            self._write(f"[{job_id}] progress {done}/{total}")

    def packing(self, name: str):
        """A ``progress(done, total)`` callback for packing the directory ``name``
        (:data:`rtcxfer.client.packing.PackProgress`): a bar on a terminal, else a line when it
        starts and one when it ends."""
        state: dict = {}

        def progress(done: int, total: int) -> None:
            if not self.enabled:
                return
            if not state:
                state["started"] = time.monotonic()
                if self.interactive:
                    state["bar"] = self._packing_bar = size_bar(f"packing {name}", total, 0, self.stream)
                else:
                    self._write(f"rtcxfer: packing {name} ({format_size(total)})")
            bar = state.get("bar")
            if bar is not None:
                bar.n = done
                bar.refresh()
            if done >= total and not state.get("finished"):
                state["finished"] = True
                if bar is not None:
                    bar.close()
                    self._packing_bar = None
                seconds = time.monotonic() - state["started"]
                rate = format_rate(total, seconds)
                self._write(f"packed {name}: {format_size(total)} in {format_seconds(seconds)} s ({rate})")

        return progress

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
        if self._packing_bar is not None:
            self._packing_bar.close()
            self._packing_bar = None
        for transfer in self._transfers.values():
            if transfer.bar is not None:
                transfer.bar.close()
        self._transfers.clear()
        for bar in self._job_bars.values():
            bar.close()
        self._job_bars.clear()
