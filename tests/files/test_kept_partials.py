"""Partial files kept for a resume, pruned by age and size (``rtcxfer.files.kept_partials``)."""

from __future__ import annotations

import os
import time

from rtcxfer.files import kept_partials as resume
from rtcxfer.files.receiving import part_name


def test_partials_are_kept_for_a_resume_and_pruned_by_age_and_size(tmp_path):
    incoming = tmp_path / "job" / "incoming"
    incoming.mkdir(parents=True)
    kept = tmp_path / "kept"
    names = [part_name(f"p{n}.zip", f"{n:032x}") for n in range(3)]
    for n, name in enumerate(names):
        (incoming / name).write_bytes(b"x" * (1000 * (n + 1)))
    (incoming / "finished.zip").write_bytes(b"done")  # not a partial: not kept
    assert resume.keep_partials(incoming, kept) == 3
    assert sorted(p.name for p in kept.iterdir()) == sorted(names)
    now = time.time()
    os.utime(kept / names[0], (now - 10, now - 10))
    os.utime(kept / names[1], (now - 5, now - 5))
    # 6000 bytes kept; at most 5500: the oldest goes.
    assert resume.prune(kept, max_bytes=5500, now=now) == 1
    assert not (kept / names[0]).exists()
    assert resume.prune(kept, max_age=1, now=now + 100) == 2
    assert kept.is_dir() and not any(kept.iterdir()), "emptied, the directory itself stays (the worker holds it open)"
