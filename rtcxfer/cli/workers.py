"""``rtcxfer workers``: the workers of a room, as a table or as JSON."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable

import click

from rtcxfer.cli.messages import EXIT_CONNECTION
from rtcxfer.cli.options import apply_options, connection_options, room_token, signaling_tls, tls_options
from rtcxfer.cli.running import run_until_interrupted
from rtcxfer.cli.tables import render_table
from rtcxfer.client.worker_choice import WorkerInfo, format_duration, uptime
from rtcxfer.protocol.frames import quote_for_log


@click.command()
@apply_options(connection_options[:5])
@apply_options(tls_options)
@click.option("--json", "as_json", is_flag=True, help="Print the workers and their descriptions as JSON.")
def workers(signal_url, room, token, token_file, signal_token, ca_file, as_json) -> None:
    """List the workers of a room: state, job slots, GPU, labels, transports, uptime."""
    from rtcxfer.cli.config import resolve_token
    from rtcxfer.client.room import list_workers
    from rtcxfer.protocol.errors import RtcxferError, describe

    token = resolve_token(click.get_current_context(), token, token_file)
    tls = signaling_tls(ca_file)

    try:
        found = run_until_interrupted(
            list_workers(signal_url, room, signaling_token=room_token(signal_token or token), ssl=tls)
        )
    except RtcxferError as error:
        from rtcxfer.cli.messages import tls_failure

        why = tls_failure(error) or describe(error)
        click.echo(f"error: cannot list the workers of room {room!r} via {signal_url}: {why}", err=True)
        sys.exit(EXIT_CONNECTION)
    found = sorted_workers(found)
    if as_json:
        click.echo(workers_json(found))
    elif not found:
        click.echo(f"no workers in room {room!r}", err=True)
    else:
        click.echo(render_table(WORKER_COLUMNS, worker_rows(found)))


def sorted_workers(workers: Iterable[WorkerInfo]) -> list[WorkerInfo]:
    """The workers by id, as ``ls`` sorts names: a listing that reads the same every time."""
    return sorted(workers, key=lambda worker: (worker.peer_id.casefold(), worker.peer_id))


#: A table cell of peer text is cut here.
TABLE_CELL_CHARS = 200
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
        cells = (worker.peer_id, worker.state, slots, gpu, labels, ",".join(worker.transports) or "-")
        # What peers say about themselves is checked by the server, but printed escaped all the
        # same: a terminal must never receive a control, format or separator character from them.
        shown = tuple(quote_for_log(cell, TABLE_CELL_CHARS) for cell in cells)
        rows.append((*shown, format_duration(uptime(worker.description, now))))
    return rows


def workers_json(workers: Iterable[WorkerInfo], now: float | None = None) -> str:
    now = time.time() if now is None else now
    return json.dumps(
        [
            {"id": w.peer_id, "uptime_seconds": uptime(w.description, now), **dict(w.description)}
            for w in workers
        ],
        indent=2,
    )
