"""The worker's verdict on a shared-storage probe (docs/protocol.md, section 3.3)."""

from __future__ import annotations

import hashlib
import os

import pytest

from rtcxfer.files.shared_storage import PROBE_BYTES, PROBE_DIR, check_probe, shared_root_fingerprint, write_probe
from rtcxfer.protocol.errors import PathError
from rtcxfer.protocol.frames import SharedProbe


def _probe(root, content: bytes, sha256: str | None = None) -> SharedProbe:
    relative = f"{PROBE_DIR}/{os.urandom(16).hex()}.probe"
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return SharedProbe(sha256 or hashlib.sha256(content).hexdigest(), relative)


@pytest.mark.parametrize("size", [1, 32, PROBE_BYTES])
def test_a_probe_of_up_to_64_bytes_is_verified(tmp_path, size) -> None:
    assert check_probe(tmp_path, _probe(tmp_path, os.urandom(size))) == "verified"


def test_a_longer_file_is_never_verified_by_the_hash_of_its_prefix(tmp_path) -> None:
    content = os.urandom(1000)
    for prefix in (PROBE_BYTES, PROBE_BYTES + 1, 1000):
        probe = _probe(tmp_path, content, hashlib.sha256(content[:prefix]).hexdigest())
        assert check_probe(tmp_path, probe) == "mismatch"


def test_other_bytes_missing_files_and_paths_outside_the_probe_dir(tmp_path) -> None:
    assert check_probe(tmp_path, _probe(tmp_path, b"a" * 64, hashlib.sha256(b"b" * 64).hexdigest())) == "mismatch"
    assert check_probe(tmp_path, SharedProbe("0" * 64, f"{PROBE_DIR}/absent.probe")) == "missing"
    (tmp_path / "data.bin").write_bytes(b"secret")
    assert check_probe(tmp_path, SharedProbe(hashlib.sha256(b"secret").hexdigest(), "data.bin")) == "missing"
    assert check_probe(None, SharedProbe("0" * 64, f"{PROBE_DIR}/x.probe")) == "unavailable"


# Finding 2 of the second hardening round: another user of the shared storage makes `.rtcxfer`
# (or `.rtcxfer/probes`) a link before any worker looks. Nothing is written through it.


@pytest.fixture
def planted(tmp_path):
    root, elsewhere = tmp_path / "shared", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    return root, elsewhere


def test_the_storage_marker_is_not_made_through_a_planted_link(planted):
    root, elsewhere = planted
    (root / ".rtcxfer").symlink_to(elsewhere, target_is_directory=True)
    assert shared_root_fingerprint(root) is None
    assert list(elsewhere.iterdir()) == []


def test_a_probe_is_not_written_through_a_planted_link(planted):
    root, elsewhere = planted
    (root / ".rtcxfer").mkdir()
    (root / ".rtcxfer" / "probes").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(PathError):
        write_probe(root)
    assert list(elsewhere.iterdir()) == []
    (root / ".rtcxfer" / "probes").unlink()
    (root / ".rtcxfer").rmdir()
    (root / ".rtcxfer").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(PathError):
        write_probe(root)
    assert list(elsewhere.iterdir()) == []


def test_a_planted_marker_that_is_not_a_file_is_neither_read_nor_trusted(planted):
    root, _ = planted
    (root / ".rtcxfer").mkdir()
    os.mkfifo(root / ".rtcxfer" / "storage-id")  # reading a FIFO would block a worker's start-up
    assert shared_root_fingerprint(root) is None


def test_probes_come_and_go_and_the_marker_stays(planted):
    root, _ = planted
    fingerprint = shared_root_fingerprint(root)
    probe = write_probe(root)
    assert check_probe(root, SharedProbe(probe.sha256, probe.relative_path)) == "verified"
    probe.remove()
    assert sorted(path.name for path in (root / ".rtcxfer").iterdir()) == ["storage-id"]
    assert shared_root_fingerprint(root) == fingerprint is not None


@pytest.mark.slow
def test_a_worker_and_submit_write_nothing_through_a_planted_link(planted, tmp_path):
    from rtcxfer.client.sample import build_sample_package
    from rtcxfer.testing.cluster import start_cluster
    from rtcxfer.testing.processes import describe
    from tests.support.cli import environment

    root, elsewhere = planted
    (root / ".rtcxfer").symlink_to(elsewhere, target_is_directory=True)
    package = build_sample_package(tmp_path / "job.zip")
    with start_cluster(tmp_path, token="planted-link-token-0123456789", env=environment()) as cluster:
        cluster.start_worker("lab", "--shared-root", str(root), work_dir=tmp_path / "work")
        run = cluster.submit(package, "--shared-root", str(root), "--results", str(tmp_path / "results"), room="lab")
    assert run.returncode == 0, describe(run)
    assert "shared-fs is not usable" in run.stderr  # its probe went nowhere: another transport carried the job
    assert list(elsewhere.iterdir()) == []
