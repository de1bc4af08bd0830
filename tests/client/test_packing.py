"""A job package is checked on the client before anything is sent, and a directory becomes a
package (``rtcxfer.client.packing``)."""

from __future__ import annotations

import json
import os
import time
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
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


def test_files_that_do_not_compress_are_stored_and_the_others_deflated(tmp_path):
    source = make_job_directory(tmp_path / "job")
    (source / "weights.bin").write_bytes(os.urandom(3 << 20))  # compressed already, in effect
    (source / "table.csv").write_bytes(b"id,value\n" + b"".join(b"%d,%d\n" % (n, n * n) for n in range(50_000)))
    (source / "empty.txt").write_bytes(b"")
    package = pack_directory(source, tmp_path / "job.zip")
    with zipfile.ZipFile(package) as archive:
        methods = {info.filename: info.compress_type for info in archive.infolist()}
        for name in methods:
            assert archive.read(name) == (source / name).read_bytes()
    assert methods["table.csv"] == zipfile.ZIP_DEFLATED
    # Random bytes, an empty file and ones too small for deflate to shrink them (job.py, rtcxfer.json).
    assert {methods[name] for name in ("weights.bin", "empty.txt", "job.py", "rtcxfer.json")} == {zipfile.ZIP_STORED}
    # Stored members carry their sizes in their local headers: a worker extracts them as they arrive.
    raw = package.read_bytes()
    with zipfile.ZipFile(package) as archive:
        info = archive.getinfo("weights.bin")
    assert not info.flag_bits & 0x08
    local_sizes = int.from_bytes(raw[info.header_offset + 18 : info.header_offset + 22], "little")
    assert local_sizes == 3 << 20


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=2048), st.integers(min_value=1, max_value=600)), max_size=4))
def test_any_bytes_stored_or_deflated_come_back_as_they_were(tmp_path_factory, contents):
    """Whatever the sample decides, a member holds its file's bytes (a sample that compresses
    and a tail that does not, or the other way round, included)."""
    base = tmp_path_factory.mktemp("pack")
    source = make_job_directory(base / "job")
    for number, (piece, repeat) in enumerate(contents):
        (source / f"file{number}.bin").write_bytes(piece * repeat + os.urandom(number * 700_000))
    package = pack_directory(source, base / "job.zip")
    with zipfile.ZipFile(package) as archive:
        assert archive.testzip() is None
        for number in range(len(contents)):
            assert archive.read(f"file{number}.bin") == (source / f"file{number}.bin").read_bytes()


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
