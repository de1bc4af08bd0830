"""The pack cache of ``submit DIR`` (``rtcxfer.client.pack_cache``): real directories, real files,
real ``flock`` between real processes (a second ``python`` holds or builds a pack while this
one looks). Timeouts are hang guards, never assertions about speed."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest

from rtcxfer.client import pack_cache, packing
from rtcxfer.client.pack_cache import PackCache, PackCacheError, fingerprint
from rtcxfer.client.packing import PackageError, directory_members, pack_directory

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file locks")

GUARD = 60.0

#: Packs DIR into the cache CACHE, prints what it got as JSON, then holds the pack (and its
#: use lock) until a line arrives on stdin.
HOLDER = """
import json, os, sys
from pathlib import Path
from rtcxfer.client.pack_cache import PackCache
with PackCache.open(Path(sys.argv[1])).pack(Path(sys.argv[2])) as pack:
    print(json.dumps({"path": str(pack.shown), "reused": pack.reused, "inode": os.stat(pack.path).st_ino}), flush=True)
    sys.stdin.readline()
"""


def job_directory(directory: Path, blob_bytes: int = 10_000) -> Path:
    (directory / "sub").mkdir(parents=True)
    (directory / "rtcxfer.json").write_text(json.dumps({"command": ["python", "job.py"]}))
    (directory / "job.py").write_text("print('hi')\n")
    (directory / "sub" / "data.bin").write_bytes(os.urandom(blob_bytes))
    return directory


def fingerprint_of(directory: Path) -> str:
    return fingerprint(directory.resolve(), directory_members(directory.resolve()))


def entries(cache: Path) -> list[str]:
    return sorted(child.name for child in cache.iterdir() if not child.name.startswith("."))


class Holder:
    """A second process that packs a directory and holds the pack until :meth:`release`."""

    def __init__(self, cache: Path, directory: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(cache), str(directory)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def result(self) -> dict:
        line = self.process.stdout.readline()
        assert line, f"the holder exited with {self.process.wait(GUARD)}"
        return json.loads(line)

    def release(self) -> None:
        self.process.stdin.write("\n")
        self.process.stdin.close()
        assert self.process.wait(GUARD) == 0

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(GUARD)


def test_the_fingerprint_follows_every_change_a_pack_would_see(tmp_path):
    job = job_directory(tmp_path / "job")
    first = fingerprint_of(job)
    assert fingerprint_of(job) == first
    (job / "empty").mkdir()  # not in the ZIP: the same pack
    assert fingerprint_of(job) == first

    data = job / "sub" / "data.bin"
    before = data.stat()
    changed = data.read_bytes()[:-1] + b"\x00"
    data.write_bytes(changed if changed != data.read_bytes() else changed[:-1] + b"\x01")
    os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size, mtime set back: the ctime moved
    seen = {first, fingerprint_of(job)}
    assert len(seen) == 2

    os.utime(job / "job.py", ns=(1, 1))  # mtime only
    seen.add(fingerprint_of(job))
    (job / "job.py").write_text("print('hi!')\n")  # size
    seen.add(fingerprint_of(job))
    before_adding = fingerprint_of(job)
    (job / "sub" / "new.txt").write_text("new")  # a file added
    seen.add(fingerprint_of(job))
    (job / "sub" / "new.txt").unlink()  # ... and removed again: the same files, the same pack
    assert fingerprint_of(job) == before_adding
    (job / "sub" / "data.bin").unlink()  # a file removed
    seen.add(fingerprint_of(job))
    (job / "job.py").rename(job / "main.py")  # renamed
    seen.add(fingerprint_of(job))
    assert len(seen) == 7

    other = job_directory(tmp_path / "other")  # another directory, even with the same names
    assert fingerprint_of(other) not in seen


def test_the_packers_format_version_is_part_of_the_fingerprint(tmp_path, monkeypatch):
    job = job_directory(tmp_path / "job")
    before = fingerprint_of(job)
    monkeypatch.setattr(packing, "FORMAT_VERSION", packing.FORMAT_VERSION + 1)
    assert fingerprint_of(job) != before


def test_an_unchanged_directory_reuses_the_same_file_and_a_changed_one_gets_a_new_pack(tmp_path):
    job = job_directory(tmp_path / "job")
    cache = PackCache.open(tmp_path / "cache")
    with cache.pack(job) as first:
        assert not first.reused and first.cached and first.path.name == "job.zip"
        made = first.path.stat()
    assert first.path.read_bytes() == pack_directory(job, tmp_path / "plain" / "job.zip").read_bytes()
    with cache.pack(job) as second:
        assert second.reused and second.shown == first.shown
        again = second.path.stat()
    # What direct's transfer id is made of: the same, so the upload resumes.
    assert (again.st_dev, again.st_ino, again.st_mtime_ns, again.st_size) == (
        made.st_dev,
        made.st_ino,
        made.st_mtime_ns,
        made.st_size,
    )

    (job / "job.py").write_text("print('changed')\n")
    with cache.pack(job) as third:
        assert not third.reused and third.shown != first.shown
        with zipfile.ZipFile(third.path) as archive:
            assert archive.read("job.py") == b"print('changed')\n"
    assert not first.path.exists(), "the pack the directory no longer matches is gone"
    assert len(entries(cache.root)) == 1


def test_a_directory_that_is_not_a_package_is_refused_as_before(tmp_path):
    cache = PackCache.open(tmp_path / "cache")
    linked = job_directory(tmp_path / "linked")
    (linked / "escape").symlink_to("/etc/passwd")
    with pytest.raises(PackageError, match="link"), cache.pack(linked):
        pass
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(PackageError, match="without rtcxfer.json"), cache.pack(plain):
        pass
    assert entries(cache.root) == []


def test_a_packer_killed_mid_write_leaves_no_pack_under_the_final_name(tmp_path):
    job = job_directory(tmp_path / "job", blob_bytes=16 << 20)
    cache = tmp_path / "cache"
    entry = cache / fingerprint_of(job)
    holder = Holder(cache, job)
    try:
        deadline = time.monotonic() + GUARD
        while not list(entry.glob(".job.zip.*.tmp")):
            assert holder.process.poll() is None and time.monotonic() < deadline, "no temporary pack appeared"
            time.sleep(0.005)
        holder.process.send_signal(signal.SIGKILL)
    finally:
        holder.kill()
    assert not (entry / "job.zip").exists(), "a half-written pack carries the final name"
    with PackCache.open(cache).pack(job) as pack:
        assert not pack.reused and pack.shown == entry / "job.zip"
        packing.check_package(pack.path)
    assert not list(entry.glob(".*.tmp")), "the killed packer's temporary file is cleaned up"


def waiting_for_flock(descriptor: int) -> int:
    """How many processes wait for the flock of the open file ``descriptor`` (``/proc/locks``)."""
    inode = os.fstat(descriptor).st_ino
    return sum(1 for line in Path("/proc/locks").read_text().splitlines() if "->" in line and f":{inode} " in line)


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux's /proc/locks")
def test_two_runs_of_the_same_directory_at_once_share_one_pack(tmp_path):
    job = job_directory(tmp_path / "job", blob_bytes=1 << 20)
    cache = PackCache.open(tmp_path / "cache").root
    entry = cache / fingerprint_of(job)
    entry.mkdir(mode=0o700)
    # Hold the build lock, so both runs find no pack yet and queue for it: then let them go.
    build_lock = os.open(entry / "build.lock", os.O_RDWR | os.O_CREAT, 0o600)
    holders: list[Holder] = []
    try:
        fcntl.flock(build_lock, fcntl.LOCK_EX)
        holders = [Holder(cache, job), Holder(cache, job)]
        deadline = time.monotonic() + GUARD
        while waiting_for_flock(build_lock) < 2:
            assert all(h.process.poll() is None for h in holders) and time.monotonic() < deadline, "no two waiters"
            time.sleep(0.01)
        os.close(build_lock)
        build_lock = -1
        one, two = (holder.result() for holder in holders)
        assert sorted([one["reused"], two["reused"]]) == [False, True], "one packs, the other takes its pack"
        assert one["path"] == two["path"] and one["inode"] == two["inode"]
        for holder in holders:
            holder.release()
    finally:
        if build_lock >= 0:
            os.close(build_lock)
        for holder in holders:
            holder.kill()
    assert sorted(path.name for path in entry.iterdir()) == ["build.lock", "job.zip", "pack.json", "use.lock"]
    with zipfile.ZipFile(entry / "job.zip") as archive:
        assert archive.testzip() is None
        assert archive.read("sub/data.bin") == (job / "sub" / "data.bin").read_bytes()


def test_eviction_by_age_and_size_oldest_first_never_a_pack_in_use(tmp_path):
    cache = PackCache.open(tmp_path / "cache", max_bytes=1 << 40)
    jobs = [job_directory(tmp_path / f"job{n}", blob_bytes=50_000) for n in range(4)]
    keys = []
    start = time.time() - 100
    for n, job in enumerate(jobs):
        with cache.pack(job):
            pass
        keys.append(fingerprint_of(job))
        os.utime(cache.root / keys[-1] / "use.lock", (start + n, start + n))  # last used in this order
    assert entries(cache.root) == sorted(keys)
    size = sum(path.stat().st_size for path in (cache.root / keys[0]).iterdir())

    holder = Holder(cache.root, jobs[0])  # the oldest, in use by another run
    try:
        assert holder.result()["reused"]
        os.utime(cache.root / keys[0] / "use.lock", (start, start))
        cache.max_age = 10
        assert cache.trim(now=start + 11.5) == 1  # job0 and job1 are past the age; job0 is in use
        assert entries(cache.root) == sorted([keys[0], keys[2], keys[3]])
        cache.max_age = 1e9
        cache.max_bytes = int(size * 1.5)
        assert cache.trim(now=start + 20) == 1  # job3 fits, job2 does not; job0, in use, stays
        assert entries(cache.root) == sorted([keys[0], keys[3]])
        holder.release()
    finally:
        holder.kill()
    os.utime(cache.root / keys[0] / "use.lock", (start, start))
    assert cache.trim(now=start + 20) == 1  # now job0 may go
    assert entries(cache.root) == [keys[3]]
    cache.max_bytes = 1
    assert cache.trim(keep=[keys[3]], now=start + 20) == 0  # kept: an unfinished upload's pack
    assert cache.trim(now=start + 20) == 1
    assert entries(cache.root) == []


def test_a_succeeded_run_drops_a_pack_larger_than_the_budget_an_unfinished_one_keeps_it(tmp_path):
    job = job_directory(tmp_path / "job", blob_bytes=50_000)
    cache = PackCache.open(tmp_path / "cache", max_bytes=1000)
    with cache.pack(job):
        pass
    assert entries(cache.root) == [fingerprint_of(job)]
    with cache.pack(job) as pack:
        assert pack.reused
        pack.succeeded = True
    assert entries(cache.root) == []


def test_a_racy_member_is_checked_against_the_pack_before_reuse(tmp_path):
    job = job_directory(tmp_path / "job")
    cache = PackCache.open(tmp_path / "cache")
    with cache.pack(job) as first:
        pass
    # The directory was written just before it was packed: a later write in the same timestamp
    # tick would leave the fingerprint as it is. Play that write by putting other bytes in the pack.
    replaced = tmp_path / "replaced.zip"
    with zipfile.ZipFile(first.path) as old, zipfile.ZipFile(replaced, "w") as new:
        for info in old.infolist():
            new.writestr(info, b"print('stale')\n" if info.filename == "job.py" else old.read(info))
    os.replace(replaced, first.path)
    with cache.pack(job) as second:
        assert not second.reused and not second.cached and second.shown != first.shown
        with zipfile.ZipFile(second.path) as archive:
            assert archive.read("job.py") == (job / "job.py").read_bytes()
    assert not second.path.exists(), "a pack for one run goes with it"
    assert entries(cache.root) == [], "the stale entry goes once no run uses it"
    with cache.pack(job) as third:
        assert third.cached and not third.reused


def test_a_directory_changed_while_it_is_packed_is_packed_for_this_run_only(tmp_path, monkeypatch):
    job = job_directory(tmp_path / "job")
    cache = PackCache.open(tmp_path / "cache")
    real_pack = packing.pack_directory

    def pack_then_edit(*args, **kwargs):  # the user saves a file while the packer runs
        packed = real_pack(*args, **kwargs)
        (job / "job.py").write_text("print('saved meanwhile')\n")
        return packed

    monkeypatch.setattr(packing, "pack_directory", pack_then_edit)
    with cache.pack(job) as pack:
        assert not pack.cached and pack.path.suffix == ".run"
        packing.check_package(pack.path)
    assert not pack.path.exists()
    assert entries(cache.root) == [], "an entry that never got its pack goes"
    monkeypatch.setattr(packing, "pack_directory", real_pack)
    with cache.pack(job) as pack:
        assert pack.cached and not pack.reused


def test_an_unsafe_cache_directory_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(PackCacheError, match="chmod 700"):
        PackCache.open(shared)
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, 65534)
        with pytest.raises(PackCacheError, match="another user"):
            PackCache.open(theirs)
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    with pytest.raises(PackCacheError, match="not a directory"):
        PackCache.open(tmp_path / "link")
    made = PackCache.open(tmp_path / "new" / "packs")
    assert stat.S_IMODE(made.root.stat().st_mode) == 0o700


def test_the_default_cache_follows_xdg_cache_home():
    assert pack_cache.default_root({"XDG_CACHE_HOME": "/x/cache"}) == Path("/x/cache/rtcxfer/packs")
    assert pack_cache.default_root({}) == Path(os.path.expanduser("~")) / ".cache" / "rtcxfer" / "packs"


def test_a_subdirectory_it_cannot_read_is_an_error_not_a_smaller_package():
    """Run as ``nobody`` (a user who may not list one subdirectory): packing it is refused."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges to nobody")
    base = Path(tempfile.mkdtemp(prefix="rtcxfer-unreadable-"))
    try:
        base.chmod(0o755)
        job = job_directory(base / "job")
        (job / "private").mkdir(mode=0o700)
        (job / "private" / "weights.bin").write_bytes(b"w")
        script = (
            "import os, sys\n"
            "from pathlib import Path\n"
            "from rtcxfer.client.packing import PackageError, directory_members\n"
            "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
            "try:\n"
            "    directory_members(Path(sys.argv[1]))\n"
            "except PackageError as error:\n"
            "    print(error)\n"
        )
        run = subprocess.run(
            [sys.executable, "-c", script, str(job)], capture_output=True, text=True, timeout=GUARD, check=True
        )
        assert f"cannot read {job / 'private'}: Permission denied" in run.stdout, run.stdout + run.stderr
    finally:
        shutil.rmtree(base)


def test_a_cache_swapped_for_a_link_after_its_check_is_not_used(tmp_path):
    # Finding 11 of the second hardening round: whoever may write the cache's parent replaces
    # the cache, once checked, by a link to a directory of their own holding a pack made to
    # match the directory's fingerprint. The cache is used by descriptor: their pack is not sent.
    job = job_directory(tmp_path / "job")
    key = fingerprint_of(job)
    theirs = tmp_path / "theirs"
    (theirs / key).mkdir(parents=True, mode=0o700)
    with zipfile.ZipFile(theirs / key / "job.zip", "w") as planted:
        planted.writestr("rtcxfer.json", json.dumps({"command": ["sh", "-c", "echo owned"]}))
    record = {"source": str(job.resolve()), "packed_ns": time.time_ns() + 60 * 10**9}
    (theirs / key / "pack.json").write_text(json.dumps(record))
    cache_path = tmp_path / "parent" / "cache"
    cache = PackCache.open(cache_path)
    os.rename(cache_path, tmp_path / "parent" / "moved-away")
    os.symlink(theirs, cache_path, target_is_directory=True)
    with cache.pack(job) as pack:
        with zipfile.ZipFile(pack.path) as sent:
            assert json.loads(sent.read("rtcxfer.json")) == {"command": ["python", "job.py"]}
            assert "sub/data.bin" in sent.namelist()
    assert (tmp_path / "parent" / "moved-away" / key / "job.zip").is_file(), "the pack went where the check was"
    assert sorted(path.name for path in (theirs / key).iterdir()) == ["job.zip", "pack.json"], "theirs untouched"
