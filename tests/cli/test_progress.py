"""Progress output of the command: plain records when not a terminal, bars that reach 100 % on
one, binary units (``rtcxfer.cli.progress``)."""

from __future__ import annotations

import io
import re

from rtcxfer.cli.progress import ProgressDisplay, format_size, size_bar, transfer_record
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
    assert "10/10" in frames and re.search(r"job-1: +\d+%\|.*\| \d+/10 \[\d\d:\d\d, ETA (\d\d:\d\d|\?)\]", frames)
    assert "step/s" not in frames and "it/s" not in frames


def test_sizes_and_rates_are_in_binary_units():
    assert format_size(0) == "0 B"
    assert format_size(1023) == "1023 B"
    assert format_size(1024) == "1.0 KiB"
    assert format_size(200 * 1024 * 1024) == "200.0 MiB"
    assert transfer_record("down", "r.bin", "s3", 100 * 1024 * 1024, 2.0).endswith("(50.0 MiB/s)")


def test_a_resumed_transfer_says_so_on_its_bar_and_in_its_record_and_counts_only_what_moved():
    mib = 1024 * 1024
    for interactive in (True, False):
        stream = io.StringIO()
        display = ProgressDisplay(stream=stream, interactive=interactive)
        for done in (80 * mib, 90 * mib, 100 * mib):
            display.handle(transfer("package.zip", done, 100 * mib))
        display.close()
        text = stream.getvalue()
        assert "-> package.zip via rtc-chunked" in text and "resuming at 80.0 MiB" in text, text
        assert "sent package.zip via rtc-chunked: 100.0 MiB (80.0 MiB resumed, 20.0 MiB sent) in " in text, text
    assert transfer_record("up", "p.zip", "direct", 100 * mib, 2.0, resumed=80 * mib).endswith("(10.0 MiB/s)")


def test_bars_show_sizes_rate_and_time_left_with_no_stray_separator():
    mib = 1024 * 1024
    stream = io.StringIO()
    display = ProgressDisplay(stream=stream, interactive=True)
    display.handle(transfer("big.bin", 0, 100 * mib))
    display.handle(transfer("big.bin", 50 * mib, 100 * mib))
    display.close()
    frames = stream.getvalue()
    assert "| ," not in frames and "|, " not in frames, frames
    assert re.search(r"-> big\.bin via rtc-chunked:  50%\|.*\| 50\.0 MiB/100\.0 MiB ", frames), frames
    # The rate and the time left, on the bar's own clock (moved, not waited for); bytes resumed
    # are not counted as moved.
    bar = size_bar("-> resumed.bin via direct", 100 * mib, 20 * mib, io.StringIO())
    bar.start_t -= 10
    bar.n = 70 * mib
    shown = str(bar)
    bar.close()
    assert shown.endswith("| 70.0 MiB/100.0 MiB 5.0 MiB/s ETA 00:06"), shown


def test_packing_progress_is_a_bar_on_a_terminal_and_two_lines_otherwise():
    mib = 1024 * 1024
    for interactive in (True, False):
        stream = io.StringIO()
        display = ProgressDisplay(stream=stream, interactive=interactive)
        progress = display.packing("my-job")
        for done in (0, 3 * mib, 6 * mib):
            progress(done, 6 * mib)
        display.close()
        text = stream.getvalue()
        assert re.search(r"(?:^|\r)packed my-job: 6\.0 MiB in \d+\.\d+ s \(", text, re.M), text
        if interactive:
            assert "packing my-job: 100%" in text or "packing my-job:  50%" in text, text
        else:
            assert text.splitlines()[0] == "rtcxfer: packing my-job (6.0 MiB)" and "\r" not in text
    quiet = io.StringIO()
    silent = ProgressDisplay(stream=quiet, enabled=False).packing("my-job")
    silent(0, 10)
    silent(10, 10)
    assert quiet.getvalue() == ""
