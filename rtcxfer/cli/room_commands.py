"""The many-workers parts of the ``rtcxfer`` command: ``rtcxfer workers``, draining a worker
(``--drain``, SIGUSR1), and the ``submit --json`` line. Kept apart from :mod:`rtcxfer.cli.main` so
that the command's main module stays a list of options."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from rtcxfer.client.worker_choice import WorkerInfo, format_duration, uptime

WORKER_COLUMNS = ("ID", "STATE", "SLOTS", "GPU", "LABELS", "TRANSPORTS", "UP")


def worker_rows(workers: Iterable[WorkerInfo], now: float | None = None) -> list[tuple[str, ...]]:
    """One row per worker for the ``rtcxfer workers`` table."""
    rows = []
    for worker in workers:
        gpus = worker.gpus
        if gpus:
            gpu = ", ".join(f"{g.get('model')} ({g.get('memory_mb', '?')} MiB)" for g in gpus)
        else:
            gpu = "none"
        labels = ",".join(f"{k}={v}" for k, v in sorted(worker.labels.items())) or "-"
        slots = f"{worker.running}/{worker.slots}" if worker.description else "?"
        rows.append(
            (
                worker.peer_id,
                worker.state,
                slots,
                gpu,
                labels,
                ",".join(worker.transports) or "-",
                format_duration(uptime(worker.description, now)),
            )
        )
    return rows


def render_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows])


def workers_json(workers: Iterable[WorkerInfo], now: float | None = None) -> str:
    now = time.time() if now is None else now
    return json.dumps(
        [
            {"id": w.peer_id, "uptime_seconds": uptime(w.description, now), **dict(w.description)}
            for w in workers
        ],
        indent=2,
    )


def install_drain_signal(drain) -> None:
    """SIGUSR1 drains the worker (where the platform has it)."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
        loop.add_signal_handler(signal.SIGUSR1, drain)


def write_pid_file(path: Path) -> None:
    path.write_text(f"{os.getpid()}\n")


def signal_drain(pid_file: Path) -> int:
    """Ask the worker whose pid ``pid_file`` holds to drain; its pid. Raises OSError/ValueError."""
    pid = int(pid_file.read_text().strip())
    os.kill(pid, signal.SIGUSR1)
    return pid


def submit_json(result, exit_code: int, failure: str | None = None) -> str:
    """The one line ``rtcxfer submit --json`` prints at the end."""
    if result is None:
        return json.dumps({"ok": False, "exit_status": exit_code, "failure": failure})
    seconds = dict(result.seconds)
    return json.dumps(
        {
            "ok": result.ok,
            "exit_status": exit_code,
            "job_id": result.job_id,
            "worker_id": result.worker_id,
            "input_transport": result.input_transport,
            "results_transport": result.results_transport,
            "bytes_sent": result.bytes_sent,
            "bytes_received": result.bytes_received,
            "seconds": {key: seconds.get(key) for key in ("total", "transfer", "run")},
            "results_dir": str(Path(result.results_dir).resolve()) if result.results_dir else None,
            "failure": result.failure if not result.ok else failure,
        },
        sort_keys=False,
    )


