"""The worker's own directories (its work directory and the kept partial uploads in it) are
trusted only when they are real directories of its user that no one else may write, and are then
used through descriptors it holds (hardening round two, finding 1).

The attacker is another local user (``nobody``) who may write where the work directory is made,
as on a shared ``/scratch``. The worker here runs as root, which reaches every directory: the
checks are on ownership and mode, not on what the worker happens to be able to open.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rtcxfer.files import kept_partials
from rtcxfer.files.private_dirs import UnsafeDirectoryError
from rtcxfer.files.receiving import part_name
from rtcxfer.testing.processes import run_cli
from rtcxfer.worker.rtc_worker_client import RTCWorkerClient
from tests.support import cli

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/fd and POSIX owners")

TOKEN = f"work-dir-{os.urandom(6).hex()}"
THREE_DAYS = 3 * 24 * 3600
#: Nothing listens there: a worker that got past its checks would keep retrying until the guard.
NO_SIGNALING = "ws://127.0.0.1:9"
GUARD = 30.0


def as_nobody(*command: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    subprocess.run(command, user="nobody", group="nogroup", check=True, timeout=GUARD)


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory every user may write, like ``/tmp`` or a cluster's ``/scratch`` (sticky).

    Under ``/tmp`` rather than pytest's private temporary directory, which ``nobody`` cannot
    reach."""
    path = Path(tempfile.mkdtemp(prefix="rtcxfer-scratch-"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def victim_file(directory: Path) -> Path:
    """A file three days old, which a prune of kept partials (older than a day) would remove."""
    path = directory / "results-of-last-week.csv"
    path.write_text("precious\n")
    then = time.time() - THREE_DAYS
    os.utime(path, (then, then))
    return path


def start_worker(work_dir: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "worker",
        "--signal",
        NO_SIGNALING,
        "--room",
        "lab",
        "--token",
        TOKEN,
        "--work-dir",
        str(work_dir),
        env=cli.environment(),
        cwd=work_dir.parent,
        timeout=GUARD,
    )


def test_a_work_directory_another_user_made_first_is_refused_and_nothing_in_it_is_touched(scratch):
    victim = scratch / "victim"
    victim.mkdir()
    precious = victim_file(victim)
    work = scratch / "work"
    as_nobody("mkdir", "-m", "0755", str(work))
    as_nobody("ln", "-s", str(victim), str(work / kept_partials.DIRECTORY_NAME))

    refused = start_worker(work)

    assert refused.returncode == 2, refused.stderr
    assert "the work directory" in refused.stderr and "belongs to another user" in refused.stderr
    assert precious.exists()


def test_kept_partial_uploads_that_are_a_link_are_refused_and_the_links_target_is_untouched(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    precious = victim_file(victim)
    work = tmp_path / "work"
    work.mkdir()
    (work / kept_partials.DIRECTORY_NAME).symlink_to(victim)

    refused = start_worker(work)

    assert refused.returncode == 2, refused.stderr
    assert "kept partial uploads directory" in refused.stderr and "link" in refused.stderr
    assert precious.exists()


def test_kept_partial_uploads_in_a_directory_another_user_owns_are_refused(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    theirs = work / kept_partials.DIRECTORY_NAME
    theirs.mkdir(mode=0o755)
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another user")
    shutil.chown(theirs, user="nobody", group="nogroup")

    refused = start_worker(work)

    assert refused.returncode == 2, refused.stderr
    assert "belongs to another user" in refused.stderr


def test_a_work_directory_others_may_write_is_refused_with_the_fix(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o777)

    refused = start_worker(work)

    assert refused.returncode == 2, refused.stderr
    assert "may be written by other users" in refused.stderr and "chmod 700" in refused.stderr


def test_kept_partials_are_pruned_and_kept_in_the_directory_checked_even_if_its_name_is_swapped(tmp_path):
    work = tmp_path / "work"
    worker = RTCWorkerClient(token=TOKEN, work_dir=work)
    try:
        checked = work / kept_partials.DIRECTORY_NAME
        assert checked.is_dir() and not checked.is_symlink()
        # Swapped after the check: the checked directory moved aside, a link put in its place.
        moved = work / "moved-aside"
        checked.rename(moved)
        victim = tmp_path / "victim"
        victim.mkdir()
        precious = victim_file(victim)
        checked.symlink_to(victim)

        assert kept_partials.prune(worker.kept_partials_dir) == 0
        assert precious.exists()

        session_dir = work / "session-1"
        session_dir.mkdir()
        partial = session_dir / part_name("input.zip", "0" * 32)
        partial.write_bytes(b"the first half of a package")
        assert kept_partials.keep_partials(session_dir, worker.kept_partials_dir) == 1
        assert (moved / partial.name).read_bytes() == b"the first half of a package"
        assert sorted(p.name for p in victim.iterdir()) == [precious.name]
    finally:
        worker.close()


def test_the_worker_keeps_its_kept_partials_directory_even_when_empty(tmp_path):
    """Removing it when empty (as before) would let another directory take its name while the
    worker holds the old one open."""
    worker = RTCWorkerClient(token=TOKEN, work_dir=tmp_path / "work")
    try:
        kept_partials.prune(worker.kept_partials_dir, max_age=0)
        assert (tmp_path / "work" / kept_partials.DIRECTORY_NAME).is_dir()
    finally:
        worker.close()


def test_the_library_raises_a_typed_error_for_an_unsafe_work_directory(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o775)
    with pytest.raises(UnsafeDirectoryError, match="may be written by other users"):
        RTCWorkerClient(token=TOKEN, work_dir=work)
