"""The job output limiter: a job printing in a tight loop must not flood the data channel."""

from __future__ import annotations

from pathlib import Path

from rtcxfer.worker.jobs import JobContext, OutputLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(clock: FakeClock, **options) -> tuple[OutputLimiter, list[str], list[tuple[int, int]]]:
    lines: list[str] = []
    progress: list[tuple[int, int]] = []
    context = JobContext("job-1", Path("."), Path("."), None, lines.append, lambda d, t: progress.append((d, t)))
    return OutputLimiter(context, clock=clock, **options), lines, progress


def test_lines_within_the_budget_all_pass() -> None:
    clock = FakeClock()
    limiter, lines, _ = make(clock, lines_per_second=10, burst=5)
    for n in range(5):
        limiter.line(f"line {n}")
    limiter.flush()
    assert lines == [f"line {n}" for n in range(5)]


def test_a_flood_is_counted_and_its_end_forwarded() -> None:
    clock = FakeClock()
    limiter, lines, _ = make(clock, lines_per_second=10, burst=5)
    for n in range(1000):
        limiter.line(f"line {n}")
    limiter.flush()
    assert lines[:5] == [f"line {n}" for n in range(5)]
    assert lines[5] == "[rtcxfer] 985 lines of output were not forwarded (more than 10 lines/s)"
    assert lines[6:] == [f"line {n}" for n in range(990, 1000)]


def test_the_budget_refills_and_the_gap_is_reported() -> None:
    clock = FakeClock()
    limiter, lines, _ = make(clock, lines_per_second=10, burst=1)
    limiter.line("a")
    limiter.line("b")  # over budget
    clock.now = 1.0
    limiter.line("c")
    limiter.flush()
    assert lines == ["a", "[rtcxfer] 1 lines of output were not forwarded (more than 10 lines/s)", "c"]


def test_progress_is_thinned_but_the_last_report_arrives() -> None:
    clock = FakeClock()
    limiter, _, progress = make(clock, progress_per_second=2)
    for done in range(1, 101):
        limiter.progress(done, 100)
    limiter.flush()
    assert progress == [(1, 100), (100, 100)]
