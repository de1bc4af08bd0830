"""A job package is checked on the client before anything is sent, and a directory becomes a
package (``rtcxfer.client.packing``)."""

from __future__ import annotations

import json
import os
import time
import zipfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtcxfer.client.packing import PackageError, check_package, pack_directory
from rtcxfer.client.sample import build_sample_package
from tests.support.packages import bad_packages

# --- the package is checked on the client ---------------------------------------------------------


def test_check_package_refuses_each_kind_of_non_package_with_its_reason(tmp_path):
    for kind, (path, reason) in bad_packages(tmp_path).items():
        with pytest.raises(PackageError, match=reason):
            check_package(path)
        assert kind


def test_check_package_reads_a_good_manifest(tmp_path):
    manifest = check_package(build_sample_package(tmp_path / "ok.zip"))
    assert manifest.command == ("python", "job.py")


@given(st.binary(max_size=2048))
def test_check_package_never_raises_anything_but_package_error(data):
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"rtcxfer-hypothesis-{os.getpid()}.zip"
    try:
        path.write_bytes(data)
        try:
            check_package(path)
        except PackageError:
            pass
    finally:
        path.unlink(missing_ok=True)


# --- a directory becomes a package ----------------------------------------------------------------


def make_job_directory(directory: Path) -> Path:
    (directory / "sub").mkdir(parents=True)
    (directory / "rtcxfer.json").write_text(json.dumps({"command": ["python", "job.py"]}))
    (directory / "job.py").write_text("print('hi')\n")
    (directory / "sub" / "data.bin").write_bytes(os.urandom(10_000))
    return directory


def test_pack_directory_is_deterministic_and_holds_every_file(tmp_path):
    source = make_job_directory(tmp_path / "job")
    first = pack_directory(source, tmp_path / "a" / "job.zip")
    time.sleep(0.01)
    os.utime(source / "job.py")  # a new mtime must not change the bytes (the resume key)
    second = pack_directory(source, tmp_path / "b" / "job.zip")
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as archive:
        assert sorted(archive.namelist()) == ["job.py", "rtcxfer.json", "sub/data.bin"]
        assert archive.read("sub/data.bin") == (source / "sub" / "data.bin").read_bytes()


def test_pack_directory_refuses_a_directory_without_manifest_and_links(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "x.txt").write_text("x")
    with pytest.raises(PackageError, match="without rtcxfer.json"):
        pack_directory(plain, tmp_path / "plain.zip")
    linked = make_job_directory(tmp_path / "linked")
    (linked / "escape").symlink_to("/etc/passwd")
    with pytest.raises(PackageError, match="link"):
        pack_directory(linked, tmp_path / "linked.zip")
