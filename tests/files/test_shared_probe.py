"""The worker's verdict on a shared-storage probe (docs/protocol.md, section 3.3)."""

from __future__ import annotations

import hashlib
import os

import pytest

from rtcxfer.files.shared_storage import PROBE_BYTES, PROBE_DIR, check_probe
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
