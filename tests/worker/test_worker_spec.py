"""One test per scenario of the worker specification (shared/spec/worker-spec.md), each named
after it, driving a real worker through frames over real aiortc peers, on real files."""

from __future__ import annotations

import hashlib
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from rtcxfer.client.sample import build_sample_package, sample_text
from rtcxfer.files.filesystem import FilesystemAdapter
from rtcxfer.files.paths import validate_path_in_root
from rtcxfer.files.shared_storage import KNOWN_MOUNT_POINTS, detect_shared_root
from rtcxfer.protocol.frames import pack_chunk_header
from rtcxfer.testing import run_async
from rtcxfer.testing.job_files import sample_summary
from rtcxfer.transports import shared_fs
from rtcxfer.worker.rtc_worker_client import RTCWorkerClient
from tests.support.small_disk import small_tmpfs
from tests.support.worker_harness import make_worker, run_shared_job, worker_session


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    root = tmp_path / "shared"
    (root / "jobs" / "1").mkdir(parents=True)
    return root


@pytest.fixture(params=[False, True], ids=["rtcxfer-only", "legacy-on"])
def worker(shared: Path, tmp_path: Path, request: pytest.FixtureRequest) -> RTCWorkerClient:
    # Every scenario holds with the legacy protocol switched on too (rtcxfer.legacy).
    return make_worker(shared, tmp_path / "work", legacy=request.param)


@pytest.fixture
def package(shared: Path) -> Path:
    return build_sample_package(shared / "jobs" / "1" / "package.zip")


# --- Requirement: Shared Storage Initialization -------------------------------------------


def test_detect_shared_storage_on_initialization(shared, tmp_path, monkeypatch):
    monkeypatch.setenv("SHARED_STORAGE_ROOT", str(shared))
    worker = RTCWorkerClient(token="t", work_dir=tmp_path / "work")
    assert worker.shared_storage_root == shared.resolve()
    assert isinstance(worker.fs_adapter, FilesystemAdapter)
    monkeypatch.delenv("SHARED_STORAGE_ROOT")
    monkeypatch.setattr("rtcxfer.files.shared_storage.KNOWN_MOUNT_POINTS", ())
    nothing = RTCWorkerClient(token="t", work_dir=tmp_path / "work2")
    assert nothing.shared_storage_root is None and nothing.fs_adapter is None
    assert "shared-fs" not in nothing.offered_transports()


def test_store_shared_storage_configuration(worker, shared):
    assert isinstance(worker.shared_storage_root, Path)
    assert worker.shared_storage_root == shared.resolve()
    assert isinstance(worker.fs_adapter, FilesystemAdapter)
    assert worker.fs_adapter.exists(shared / "jobs")
    assert worker.offered_transports()[0] == "shared-fs"


def test_container_specific_mount_point_detection(tmp_path, shared):
    assert "/home/jovyan/vast/amick" in KNOWN_MOUNT_POINTS
    mount = tmp_path / "home" / "jovyan" / "vast" / "amick"
    mount.mkdir(parents=True)
    found = detect_shared_root(environ={}, candidates=[str(tmp_path / "absent"), str(mount)])
    assert found.root == mount.resolve() and "mount point" in found.source
    overridden = detect_shared_root(environ={"SHARED_STORAGE_ROOT": str(shared)}, candidates=[str(mount)])
    assert overridden.root == shared.resolve() and overridden.source == "$SHARED_STORAGE_ROOT"


# --- Requirement: Shared Path Message Handling ---------------------------------------------


def test_receive_shared_input_path(worker, package, shared):
    async def scenario():
        async with worker_session(worker) as peer:
            await peer.send("SHARED_INPUT_PATH::jobs/1/package.zip")
            assert await peer.next_text() == "PATH_VALIDATED::input"
            # The job ran from the file in place; with no SHARED_OUTPUT_PATH its results
            # are written on the shared storage too, where the worker chose (never as FILE_META,
            # which a client of the specification's messages cannot read).
            assert (await peer.expect("JOB_STATUS::")).endswith("::extracting")
            assert (await peer.expect("JOB_STATUS::")).endswith("::running")
            return await peer.expect("FILE_META::", "JOB_COMPLETE::", "JOB_FAILED::")

    done = run_async(scenario())
    _, job_id, relative, count, _ = done.split("::")
    assert relative == f"rtcxfer-results/{job_id}" and count == "2", done
    assert (shared / relative / "copy" / "data.txt").read_bytes() == sample_text()


def test_receive_shared_output_path(worker, shared):
    async def scenario():
        async with worker_session(worker) as peer:
            await peer.send("SHARED_OUTPUT_PATH::jobs/1/results/deep/er")
            assert await peer.next_text() == "PATH_VALIDATED::output"
            assert (shared / "jobs" / "1" / "results" / "deep" / "er").is_dir()
            (shared / "jobs" / "1" / "a-file").write_text("x")
            await peer.send("SHARED_OUTPUT_PATH::jobs/1/a-file")
            assert await peer.next_text() == "PATH_ERROR::File not found: jobs/1/a-file"

    run_async(scenario())


# --- Requirement: Path Validation and Security ---------------------------------------------


def test_validate_path_exists(worker):
    async def scenario():
        async with worker_session(worker) as peer:
            await peer.send("SHARED_INPUT_PATH::jobs/1/missing.zip")
            assert await peer.next_text() == "PATH_ERROR::Input path does not exist: jobs/1/missing.zip"

    run_async(scenario())


def test_validate_path_within_shared_root(worker, shared, tmp_path, package):
    sibling = tmp_path / "shared2"
    sibling.mkdir()
    (sibling / "secret.zip").write_bytes(package.read_bytes())
    with pytest.raises(Exception) as caught:
        validate_path_in_root(sibling / "secret.zip", shared)
    assert type(caught.value).__name__ == "PathOutsideRootError"
    assert validate_path_in_root(package, shared) == package.resolve()
    (shared / "jobs" / "escape.zip").symlink_to(sibling / "secret.zip")

    async def scenario():
        async with worker_session(worker) as peer:
            await peer.send("SHARED_INPUT_PATH::jobs/escape.zip")
            assert await peer.next_text() == "PATH_ERROR::Path outside shared storage: jobs/escape.zip"

    run_async(scenario())


ATTACKS = [
    "../../etc/passwd",
    "/etc/passwd",
    "jobs/../../../etc/passwd",
    "%2e%2e/%2e%2e/etc/passwd",
    "..\\..\\etc\\passwd",
    "jobs\u2215..\u2215..\u2215etc",
    "\uff0e\uff0e/etc/passwd",
    "jobs/1/package.zip\x00.txt",
    "file:///etc/passwd",
    "C:\\Windows\\win.ini",
    "s3://bucket/key",
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_reject_path_traversal_attacks(worker, package, attack, logs, shared):
    async def scenario():
        async with worker_session(worker) as peer:
            await peer.send(f"SHARED_INPUT_PATH::{attack}")
            reply = await peer.next_text()
            assert reply.startswith("PATH_ERROR::Path outside shared storage: ")
            assert str(shared.resolve()) not in reply
            # The same worker serves the next valid request.
            await peer.send("SHARED_INPUT_PATH::jobs/1/package.zip")
            assert await peer.next_text() == "PATH_VALIDATED::input"

    run_async(scenario())
    assert any(level == "WARNING" and "security violation" in message.lower() for level, message in logs)


def test_resolve_symlinks_before_validation(worker, package, shared, tmp_path):
    (shared / "jobs" / "alias.zip").symlink_to(package)  # inside the root: followed
    outside = tmp_path / "outside"
    outside.mkdir()
    (shared / "jobs" / "out-existing.zip").symlink_to(outside / "real.zip")
    (outside / "real.zip").write_bytes(package.read_bytes())
    (shared / "jobs" / "out-missing.zip").symlink_to(outside / "nothing-here.zip")

    async def scenario():
        async with worker_session(worker) as peer:
            await peer.send("SHARED_INPUT_PATH::jobs/out-existing.zip")
            existing = await peer.next_text()
            await peer.send("SHARED_INPUT_PATH::jobs/out-missing.zip")
            missing = await peer.next_text()
            assert existing == "PATH_ERROR::Path outside shared storage: jobs/out-existing.zip"
            assert missing == "PATH_ERROR::Path outside shared storage: jobs/out-missing.zip"
            await peer.send("SHARED_OUTPUT_PATH::jobs/out")
            assert await peer.next_text() == "PATH_VALIDATED::output"
            await peer.send("SHARED_INPUT_PATH::jobs/alias.zip")
            assert await peer.next_text() == "PATH_VALIDATED::input"
            assert (await peer.expect("JOB_COMPLETE::", "JOB_FAILED::")).startswith("JOB_COMPLETE::")

    run_async(scenario())


# --- Requirement: Direct File Access --------------------------------------------------------


def test_read_input_file_directly(worker, package):
    async def scenario():
        async with worker_session(worker) as peer:
            done = await run_shared_job(peer, "jobs/1/package.zip", "jobs/1/out")
            assert done.startswith("JOB_COMPLETE::")
            return peer

    peer = run_async(scenario())
    # Nothing but control frames crossed: no FILE_META, no binary chunk, either way.
    assert all(isinstance(m, str) and not m.startswith("FILE_") for m in peer.received)


def test_process_file_in_place(worker, package, shared, tmp_path):
    before = sorted(p.relative_to(shared) for p in shared.rglob("*"))
    package_bytes = package.read_bytes()

    async def scenario():
        async with worker_session(worker) as peer:
            assert (await run_shared_job(peer, "jobs/1/package.zip", "jobs/1/out")).startswith("JOB_COMPLETE::")

    run_async(scenario())
    after = {p.relative_to(shared) for p in shared.rglob("*")}
    # Extraction happened in the worker's own directory: the shared storage only gained
    # the output directory and the results, and the package is untouched.
    assert {
        Path("jobs/1/out"),
        Path("jobs/1/out/summary.txt"),
        Path("jobs/1/out/copy"),
        Path("jobs/1/out/copy/data.txt"),
    } | set(before) == after
    assert package.read_bytes() == package_bytes


def test_write_results_to_shared_output(worker, package, shared, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])

    async def scenario():
        async with worker_session(worker) as peer:
            assert (await run_shared_job(peer, "jobs/1/package.zip", "jobs/1/out")).startswith("JOB_COMPLETE::")

    run_async(scenario())
    out = shared / "jobs" / "1" / "out"
    assert (out / "summary.txt").read_text() == sample_summary(sample_text())
    assert (out / "copy" / "data.txt").read_bytes() == sample_text()
    assert len(synced) >= 3  # each result file and the output directory


# --- Requirement: Job Completion Notification ----------------------------------------------


def test_send_completion_with_relative_output_path(worker, package, shared):
    async def scenario():
        async with worker_session(worker) as peer:
            return await run_shared_job(peer, "jobs/1/package.zip", "jobs/1/out")

    done = run_async(scenario())
    kind, job_id, relative, *_ = done.split("::")
    assert (kind, relative) == ("JOB_COMPLETE", "jobs/1/out")
    assert str(shared) not in done and not relative.startswith("/")


def test_include_result_metadata(worker, package):
    async def scenario():
        async with worker_session(worker) as peer:
            return await run_shared_job(peer, "jobs/1/package.zip", "jobs/1/out")

    done = run_async(scenario())
    _, _, _, file_count, total_mb = done.split("::")
    total = len(sample_text()) + len(sample_summary(sample_text()))
    assert int(file_count) == 2
    assert float(total_mb) == round(total / (1024 * 1024), 2)


# --- Requirement: Shared Storage Error Handling --------------------------------------------


def test_file_not_found_error(worker, shared, logs):
    (shared / "jobs" / "1" / "a-directory.zip").mkdir()

    async def scenario():
        async with worker_session(worker) as peer:
            await peer.send("SHARED_INPUT_PATH::jobs/1/a-directory.zip")
            assert await peer.next_text() == "PATH_ERROR::File not found: jobs/1/a-directory.zip"

    run_async(scenario())
    absolute = str((shared / "jobs" / "1" / "a-directory.zip").resolve().parent)
    assert any(level == "ERROR" and absolute in message for level, message in logs)


PERMISSION_CHILD_TIMEOUT = 90


def test_permission_denied_error(tmp_path):
    """The worker runs as ``nobody`` (root reads everything), in a forked child."""
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges to nobody")
    base = Path(tempfile.mkdtemp(prefix="rtcxfer-perm-"))
    base.chmod(0o755)
    shared = base / "shared"
    (shared / "jobs").mkdir(parents=True)
    for directory in (shared, shared / "jobs"):
        directory.chmod(0o755)
    secret = build_sample_package(shared / "jobs" / "secret.zip")
    secret.chmod(0o600)
    work = base / "work"
    work.mkdir(mode=0o700)
    os.chown(work, 65534, 65534)  # the worker's own, as nobody
    readable, writable = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root, then serve one session
        code = 1
        try:
            os.close(readable)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)

            async def scenario():
                worker = make_worker(shared, work)
                async with worker_session(worker) as peer:
                    await peer.send("SHARED_INPUT_PATH::jobs/secret.zip")
                    return await peer.next_text()

            reply = run_async(scenario(), 60)
            os.write(writable, reply.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(writable)
    try:
        _, status = os.waitpid(pid, 0)
        reply = os.read(readable, 4096).decode()
    finally:
        os.close(readable)
        subprocess.run(["rm", "-rf", str(base)], check=False)
    assert os.waitstatus_to_exitcode(status) == 0
    assert reply == "PATH_ERROR::Permission denied: jobs/secret.zip"


def test_disk_space_error_during_write(tmp_path, package):
    with small_tmpfs(tmp_path / "small-shared", "512k", busy_ok=True) as small:
        (small / "jobs").mkdir()
        # A small package whose job writes more than the 512 KiB the shared storage holds.
        writes_too_much = (
            "import os, pathlib\n"
            "out = pathlib.Path(os.environ['RTCXFER_OUTPUT_DIR'])\n"
            "(out / 'a.bin').write_bytes(os.urandom(300 * 1024))\n"
            "(out / 'b.bin').write_bytes(os.urandom(400 * 1024))\n"
        )
        build_sample_package(small / "jobs" / "big.zip", data=b"x", program=writes_too_much)
        worker = make_worker(small, tmp_path / "work")

        async def scenario():
            async with worker_session(worker) as peer:
                failed = await run_shared_job(peer, "jobs/big.zip", "jobs/out")
                assert failed == "JOB_FAILED::Disk space exhausted on shared storage"
                # The worker keeps serving: a job whose results fit.
                (small / "jobs" / "big.zip").unlink()
                build_sample_package(small / "jobs" / "fits.zip", data=b"tiny\n")
                return failed, await run_shared_job(peer, "jobs/fits.zip", "jobs/out2")

        failed, second = run_async(scenario())
        assert list((small / "jobs" / "out").iterdir()) == []  # partial files cleaned up
        assert second.startswith("JOB_COMPLETE::")


def test_corrupted_file_detection(worker, shared):
    good = build_sample_package(shared / "jobs" / "1" / "good.zip").read_bytes()
    (shared / "jobs" / "1" / "bad.zip").write_bytes(good[: len(good) // 2])
    (shared / "jobs" / "1" / "notazip.zip").write_bytes(b"this is not a zip file at all")

    async def scenario():
        async with worker_session(worker) as peer:
            for name in ("bad.zip", "notazip.zip"):
                await peer.send(f"SHARED_INPUT_PATH::jobs/1/{name}")
                assert await peer.next_text() == "PATH_VALIDATED::input"
                reply = await peer.expect("PATH_ERROR::", "JOB_COMPLETE::", "JOB_FAILED::")
                assert reply == f"PATH_ERROR::File corrupted or invalid format: jobs/1/{name}"
            assert (await run_shared_job(peer, "jobs/1/good.zip", "jobs/1/out")).startswith("JOB_COMPLETE::")

    run_async(scenario())


# --- Requirement: Backward Compatibility ----------------------------------------------------


def send_package_over_rtc(peer, data: bytes, name: str = "package.zip"):
    transfer_id = hashlib.sha256(name.encode() + data).hexdigest()[:32]
    sha = hashlib.sha256(data).hexdigest()

    async def go():
        await peer.send(f"FILE_META::{transfer_id}::{name}::{len(data)}::{sha}::65536")
        assert await peer.next_text() == f"FILE_ACCEPT::{transfer_id}::0"
        for offset in range(0, len(data), 60000):
            await peer.send(pack_chunk_header(transfer_id, offset) + data[offset : offset + 60000])
        await peer.send(f"FILE_END::{transfer_id}")
        assert await peer.next_text() == f"FILE_ACK::{transfer_id}::{sha}"

    return go()


def test_receive_rtc_transfer_messages(tmp_path, monkeypatch):
    # A worker with no shared storage at all still runs a job sent with FILE_META: the
    # chunked logic never touches shared-storage resolution.
    monkeypatch.delenv("SHARED_STORAGE_ROOT", raising=False)
    monkeypatch.setattr("rtcxfer.files.shared_storage.KNOWN_MOUNT_POINTS", ())
    worker = make_worker(None, tmp_path / "work")
    data = build_sample_package(tmp_path / "package.zip").read_bytes()
    resolved: list[str] = []
    monkeypatch.setattr(
        shared_fs.paths,
        "resolve_peer_path",
        lambda *a: resolved.append(a) or pytest.fail("shared-storage resolution attempted"),
    )

    async def scenario():
        async with worker_session(worker) as peer:
            await peer.send("JOB_SUBMIT::job-rtc::rtc-chunked")
            assert await peer.next_text() == "JOB_ACCEPTED::job-rtc"
            await send_package_over_rtc(peer, data)
            return await peer.finish_job()

    done, files = run_async(scenario())
    assert done == "JOB_COMPLETE::job-rtc::job-rtc::2::0.11"
    assert files == {"summary.txt": sample_summary(sample_text()).encode(), "copy/data.txt": sample_text()}
    assert resolved == []


def test_mixed_transfer_modes_in_same_session(worker, package, shared, tmp_path):
    data = package.read_bytes()

    async def scenario():
        async with worker_session(worker) as peer:
            first = await run_shared_job(peer, "jobs/1/package.zip", "jobs/1/out")
            await peer.send("JOB_SUBMIT::second::rtc-chunked")
            assert await peer.next_text() == "JOB_ACCEPTED::second"
            await send_package_over_rtc(peer, data)
            second, files = await peer.finish_job()
            assert files["copy/data.txt"] == sample_text()
            third = await run_shared_job(peer, "jobs/1/package.zip", "jobs/1/out3")
            return first, second, third, peer

    first, second, third, peer = run_async(scenario())
    assert first.startswith("JOB_COMPLETE::") and first.split("::")[2] == "jobs/1/out"
    assert second == "JOB_COMPLETE::second::second::2::0.11"
    assert third.split("::")[2] == "jobs/1/out3"
    # The second job's results came back as bytes (FILE_META from the worker).
    assert any(isinstance(m, str) and m.startswith("FILE_META::") for m in peer.received)


# --- Requirement: Performance Monitoring ----------------------------------------------------


def test_log_file_access_time(worker, package, logs):
    async def scenario():
        async with worker_session(worker) as peer:
            await run_shared_job(peer, "jobs/1/package.zip", "jobs/1/out")

    run_async(scenario())
    size = package.stat().st_size
    assert any(f"read jobs/1/package.zip ({size} bytes, via shared-fs)" in m and " s" in m for _, m in logs)


def test_log_validation_time(worker, package, logs, monkeypatch):
    async def validate_once():
        async with worker_session(worker) as peer:
            assert (await run_shared_job(peer, "jobs/1/package.zip", "jobs/1/out")).startswith("JOB_COMPLETE::")

    run_async(validate_once())
    timing = [(level, m) for level, m in logs if m.startswith("validated shared input jobs/1/package.zip")]
    assert timing and timing[-1][0] == "INFO" and " in " in timing[-1][1]
    # Past the threshold the same record is a warning (the threshold lowered, not the clock).
    monkeypatch.setattr(shared_fs, "SLOW_VALIDATION_SECONDS", 0.0)
    run_async(validate_once())
    timing = [(level, m) for level, m in logs if m.startswith("validated shared input jobs/1/package.zip")]
    assert timing[-1][0] == "WARNING"


def test_package_members_are_not_trusted(worker, shared):
    """A hostile package read from shared storage is refused like a corrupted one."""
    hostile = shared / "jobs" / "1" / "hostile.zip"
    with zipfile.ZipFile(hostile, "w") as archive:
        archive.writestr("rtcxfer.json", '{"command": ["python", "-c", "pass"]}')
        archive.writestr("../../escaped.txt", "gotcha")

    async def scenario():
        async with worker_session(worker) as peer:
            await peer.send("SHARED_INPUT_PATH::jobs/1/hostile.zip")
            assert await peer.next_text() == "PATH_VALIDATED::input"
            return await peer.expect("PATH_ERROR::", "JOB_COMPLETE::", "JOB_FAILED::")

    assert run_async(scenario()) == "PATH_ERROR::File corrupted or invalid format: jobs/1/hostile.zip"
    assert not any(p.name == "escaped.txt" for p in shared.parent.rglob("escaped.txt"))


def test_unauthenticated_session_is_refused_before_any_job_frame(worker, package):
    async def scenario():
        async with worker_session(worker, authenticate=False) as peer:
            await peer.send("SHARED_INPUT_PATH::jobs/1/package.zip")
            return await peer.next_text()

    if worker.legacy:
        # A session that does not open with HELLO speaks the legacy protocol, authenticated
        # only by the signaling server: the path is validated, no job starts without
        # SHARED_STORAGE_JOB::start.
        assert run_async(scenario()) == "PATH_VALIDATED::input"
    else:
        assert run_async(scenario()) == "AUTH_FAILED::authenticate with HELLO first"

    async def wrong_token():
        async with worker_session(worker, authenticate=False) as peer:
            return await peer.hello("not-the-token")

    assert run_async(wrong_token()) == "AUTH_FAILED::invalid token"
