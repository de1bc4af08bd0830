"""Progress on a terminal: a bar per file moving, a bar for the job, its log lines above them."""

from __future__ import annotations

import sys

from tqdm import tqdm

from rtcxfer.client import ClientEvent


class ProgressDisplay:
    """Turns :class:`~rtcxfer.client.ClientEvent` objects into tqdm bars and lines on stderr."""

    def __init__(self, *, enabled: bool = True, stream=None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self._bars: dict[str, tqdm] = {}

    def handle(self, event: ClientEvent) -> None:
        if not self.enabled:
            return
        data = event.data
        if event.kind == "transfer":
            key = f"{data['transport']}:{data['name']}"
            bar = self._bar(key, f"{data['name']} via {data['transport']}", data["total"], unit="B")
            bar.update(data["done"] - bar.n)
            if data["done"] >= data["total"]:
                self._finish(key)
        elif event.kind == "progress":
            key = f"job:{event.job_id}"
            bar = self._bar(key, f"job {event.job_id}", data["total"], unit="step")
            bar.total = data["total"]
            bar.update(data["done"] - bar.n)
            if data["done"] >= data["total"]:
                self._finish(key)
        elif event.kind == "log":
            self._write(f"  | {data['line']}")
        elif event.kind == "status":
            self._write(f"[{event.job_id}] {data['state']}")
        elif event.kind == "notice":
            self._write(f"rtcxfer: {data['message']}")

    def _bar(self, key: str, description: str, total: int, unit: str) -> tqdm:
        bar = self._bars.get(key)
        if bar is None:
            scale = unit == "B"
            bar = tqdm(
                total=total,
                desc=description,
                unit=unit,
                unit_scale=scale,
                unit_divisor=1024 if scale else 1000,
                file=self.stream,
                leave=False,
                dynamic_ncols=True,
            )
            self._bars[key] = bar
        return bar

    def _finish(self, key: str) -> None:
        bar = self._bars.pop(key, None)
        if bar is not None:
            bar.close()

    def _write(self, line: str) -> None:
        tqdm.write(line, file=self.stream)

    def close(self) -> None:
        for key in list(self._bars):
            self._finish(key)
