"""Progress output of the command: plain records when not a terminal, bars that reach 100 % on
one, binary units (``rtcxfer.cli.progress``)."""

from __future__ import annotations

import io

from rtcxfer.cli.progress import ProgressDisplay, format_size, transfer_record
from rtcxfer.client.rtc_client import ClientEvent


def transfer(name: str, done: int, total: int, direction: str = "up", transport: str = "rtc-chunked") -> ClientEvent:
    data = {"name": name, "done": done, "total": total, "transport": transport, "direction": direction}
    return ClientEvent("transfer", None, data)


def test_plain_output_when_not_a_terminal_has_no_carriage_return_and_leaves_a_record():
    stream = io.StringIO()
    display = ProgressDisplay(stream=stream, interactive=False)
    mib = 1024 * 1024
    for done in (0, mib, 5 * mib):
        display.handle(transfer("data.zip", done, 5 * mib))
    display.handle(transfer("tiny.txt", 10, 10, direction="down", transport="a-third-party-one"))
    for done in (0, 3, 10):
        display.handle(ClientEvent("progress", "job-1", {"done": done, "total": 10}))
    display.close()
    text = stream.getvalue()
    assert "\r" not in text
    assert "-> data.zip via rtc-chunked: 5.0 MiB" in text
    assert "sent data.zip via rtc-chunked: 5.0 MiB in " in text and "MiB/s)" in text
    assert "received tiny.txt via a-third-party-one: 10 B in " in text
    assert "[job-1] progress 10/10" in text
    assert "step/s" not in text and "MB/s" not in text


def test_terminal_bars_reach_100_percent_and_the_job_bar_has_no_rate():
    stream = io.StringIO()
    display = ProgressDisplay(stream=stream, interactive=True)
    display.handle(transfer("small.bin", 0, 100))
    display.handle(transfer("small.bin", 100, 100))
    for done in (1, 5, 10):
        display.handle(ClientEvent("progress", "job-1", {"done": done, "total": 10}))
    display.close()
    frames = stream.getvalue()
    assert "100%" in frames
    assert "sent small.bin via rtc-chunked: 100 B in " in frames
    assert "10/10" in frames
    assert "step/s" not in frames and "it/s" not in frames


def test_sizes_and_rates_are_in_binary_units():
    assert format_size(0) == "0 B"
    assert format_size(1023) == "1023 B"
    assert format_size(1024) == "1.0 KiB"
    assert format_size(200 * 1024 * 1024) == "200.0 MiB"
    assert transfer_record("down", "r.bin", "s3", 100 * 1024 * 1024, 2.0).endswith("(50.0 MiB/s)")
