"""Properties of the path validator, the safe opener and the ZIP extractor under hypothesis.

Roots are made with :mod:`tempfile` in module-scoped fixtures or inside the test body, never
with ``tmp_path``: function-scoped fixtures are not reset between hypothesis examples.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from rtcxfer.files.paths import open_beneath, resolve_peer_path
from rtcxfer.files.safezip import ZipLimits, extract_zip
from rtcxfer.protocol.errors import ArchiveError, PathError, PathOutsideRootError
from tests.support.zips import Member, build

SYMLINK_NAMES = ["in_rel", "in_abs", "file_in", "out_dir", "out_file", "chain", "dangling", "loop1", "dotdot", "prefix"]

FRAGMENTS = [
    "..", ".", "/", "//", "\\", "\x00", "\n", "\x7f", "\u202e", "\u200b", "\ufeff",
    "\u2024", "\u2025", "\uff0e", "\ufe52", "\u2215", "\uff0f", "\u2044", "\uff3c", "\uff1a",
    "%2e", "%2E", "%2f", "%5c", "%00", "%25", "%41", "C:", "c:\\", "\\\\host\\", "file:", "s3://",
    "::", ":", "~", " ", "...", "data", "f.txt", "sub", "secret", "root2", "outside", "x",
    "\u00e9", "\u65e5", *SYMLINK_NAMES,
]  # fmt: skip

fragment = st.sampled_from(FRAGMENTS)
attack_text = st.one_of(
    st.lists(fragment, max_size=8).map("".join),
    st.lists(st.one_of(fragment, st.text(max_size=4)), max_size=6).map("/".join),
    st.text(max_size=20),
    # Walks through the planted symlinks, to exercise escapes rather than text checks.
    st.lists(
        st.sampled_from([*SYMLINK_NAMES, "data", "sub", "up", "f.txt", "secret", "x", "."]),
        min_size=1,
        max_size=5,
    ).map("/".join),
)


def _build_tree(base: Path, *, outside_target_exists: bool = True) -> Path:
    """``base/root`` with symlinks pointing inside and outside; relative targets stay in ``base``."""
    root = base / "root"
    (root / "data" / "sub").mkdir(parents=True)
    (root / "data" / "f.txt").write_bytes(b"inside")
    (root / "data" / "sub" / "x").write_bytes(b"deep")
    (base / "outside").mkdir()
    if outside_target_exists:
        (base / "outside" / "secret").write_bytes(b"secret")
        (base / "outside" / "data").mkdir()
        (base / "outside" / "data" / "f.txt").write_bytes(b"outside")
    (base / "root2").mkdir()
    os.symlink("data", root / "in_rel")
    os.symlink(root / "data" / "sub", root / "in_abs")
    os.symlink("data/f.txt", root / "file_in")
    os.symlink("../outside", root / "out_dir")
    os.symlink("../outside/secret", root / "out_file")
    os.symlink("out_dir", root / "chain")
    os.symlink("../outside/nothing", root / "dangling")
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    os.symlink("..", root / "dotdot")
    os.symlink("../root2", root / "prefix")
    os.symlink("../outside", root / "data" / "sub" / "up")
    return root


@pytest.fixture(scope="module")
def roots() -> Iterator[tuple[Path, Path]]:
    """Two structurally identical trees: in the first the outside targets exist, not in the other."""
    base = Path(tempfile.mkdtemp(prefix="rtcxfer-fuzz-"))
    try:
        first = _build_tree(base / "a", outside_target_exists=True)
        second = _build_tree(base / "b", outside_target_exists=False)
        yield first, second
    finally:
        shutil.rmtree(base)


def _regular_inodes(root: Path) -> set[tuple[int, int]]:
    inodes = set()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st_ = os.lstat(Path(dirpath) / name)
            if stat.S_ISREG(st_.st_mode):
                inodes.add((st_.st_dev, st_.st_ino))
    return inodes


@settings()
@given(text=attack_text)
def test_resolve_peer_path_stays_inside_or_raises_path_error(roots: tuple[Path, Path], text: str) -> None:
    root = roots[0]
    resolved_root = root.resolve()
    try:
        result = resolve_peer_path(text, root)
    except PathError as exc:
        event(f"resolve: {type(exc).__name__}")
        assert str(resolved_root) not in str(exc)
    else:
        event("resolve: inside")
        result.relative_to(resolved_root)
        assert result == (root / text).resolve()
    try:
        with open_beneath(root, text) as handle:
            opened = os.fstat(handle.fileno())
    except PathError as exc:
        assert str(resolved_root) not in str(exc)
    else:
        # Whatever was opened is one of the regular files that really live under the root.
        assert (opened.st_dev, opened.st_ino) in _regular_inodes(root)


def _outcome(call, root: Path):  # type: ignore[no-untyped-def]
    try:
        value = call()
    except PathError as exc:
        return ("raised", type(exc), exc.args, exc.peer_path)
    if isinstance(value, Path):
        return ("returned", value.relative_to(root.resolve()))
    return ("returned", type(value))


@settings()
@given(text=attack_text)
def test_escape_report_does_not_depend_on_target_existence(roots: tuple[Path, Path], text: str) -> None:
    with_target, without_target = roots
    first = _outcome(lambda: resolve_peer_path(text, with_target), with_target)
    second = _outcome(lambda: resolve_peer_path(text, without_target), without_target)
    escaped = [o[0] == "raised" and o[1] is PathOutsideRootError for o in (first, second)]
    event(f"escape: {escaped}")
    if any(escaped):
        assert first == second


# --- ZIP -------------------------------------------------------------------------------------

NAME_PARTS = [
    "..", ".", "", "a", "b", "dir", "f.txt", "\\", "..\\x", "C:", "/", "\u2024\u2024", "%2e%2e", "link", "\x1b", "A",
]  # fmt: skip
KINDS = {
    "file": stat.S_IFREG | 0o644,
    "dir": stat.S_IFDIR | 0o755,
    "symlink": stat.S_IFLNK | 0o777,
    "fifo": stat.S_IFIFO | 0o644,
    "setuid": stat.S_IFREG | 0o4755,
    "none": 0,
}

member_name = st.one_of(
    st.lists(st.sampled_from(["a", "b", "dir", "f.txt", "A", "x y"]), min_size=1, max_size=3).map("/".join),
    st.lists(st.sampled_from(NAME_PARTS), min_size=1, max_size=4).map("/".join),
    st.lists(st.sampled_from(NAME_PARTS), min_size=1, max_size=3).map(lambda parts: "/".join(parts) + "/"),
    st.sampled_from(["/abs", "//x", "../../outside/pwned", "link/pwned", "a/../../outside/x"]),
)
member = st.builds(
    Member,
    name=member_name,
    data=st.one_of(st.binary(max_size=64), st.integers(0, 300_000).map(lambda n: b"\0" * n)),
    mode=st.one_of(st.none(), st.sampled_from(sorted(KINDS.values())).map(lambda m: m or None)),
    compress=st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]),
)
ZIP_LIMITS = ZipLimits(max_members=12, max_total_bytes=1_000_000, max_ratio=50, ratio_min_bytes=100_000, max_depth=5)


def _snapshot(path: Path) -> dict[str, tuple[int, bytes | str | None]]:
    shot: dict[str, tuple[int, bytes | str | None]] = {}
    for dirpath, dirs, files in os.walk(path):
        for name in dirs + files:
            full = Path(dirpath) / name
            st_ = os.lstat(full)
            kind = stat.S_IFMT(st_.st_mode)
            content: bytes | str | None = None
            if stat.S_ISREG(st_.st_mode):
                content = full.read_bytes()
            elif stat.S_ISLNK(st_.st_mode):
                content = os.readlink(full)
            shot[full.relative_to(path).as_posix()] = (kind, content)
    return shot


def _check_extraction(data: bytes) -> None:
    base = Path(tempfile.mkdtemp(prefix="rtcxfer-zipfuzz-"))
    try:
        parent = base / "parent"
        outside = base / "outside"
        parent.mkdir()
        outside.mkdir()
        (outside / "keep").write_bytes(b"keep")
        os.symlink(outside, parent / "link")  # a trap beside the fresh directory
        before_base = sorted(os.listdir(base))
        before_outside = _snapshot(outside)
        try:
            result = extract_zip(io.BytesIO(data), parent, limits=ZIP_LIMITS)
        except ArchiveError as exc:
            event(f"zip: {type(exc).__name__}")
            result = None
        else:
            event("zip: extracted")
        assert sorted(os.listdir(base)) == before_base
        assert _snapshot(outside) == before_outside
        entries = sorted(os.listdir(parent))
        if result is None:
            assert entries == ["link"]
        else:
            assert entries == sorted(["link", result.root.name])
            files = 0
            for rel, (kind, _content) in _snapshot(result.root).items():
                assert kind in (stat.S_IFREG, stat.S_IFDIR), rel
                files += kind == stat.S_IFREG
                mode = os.lstat(result.root / rel).st_mode
                assert not mode & (stat.S_ISUID | stat.S_ISGID)
            assert files == result.files
    finally:
        shutil.rmtree(base)


@settings()
@given(members=st.lists(member, max_size=8), duplicate=st.booleans())
def test_hostile_zip_writes_nothing_outside(members: list[Member], duplicate: bool) -> None:
    if duplicate and members:
        members = [*members, members[0]]
    _check_extraction(build(members))


GOOD_ZIP = build(
    [
        Member("a/b.txt", b"hello world" * 20),
        Member("a/"),
        Member("c.bin", bytes(range(256)), compress=zipfile.ZIP_STORED),
    ]
)


@settings()
@given(
    edits=st.lists(st.tuples(st.integers(0, len(GOOD_ZIP) - 1), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.one_of(st.none(), st.integers(0, len(GOOD_ZIP))),
)
def test_mutated_zip_raises_only_archive_errors(edits: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(GOOD_ZIP)
    for offset, value in edits:
        data[offset] = value
    _check_extraction(bytes(data[:cut]) if cut is not None else bytes(data))
