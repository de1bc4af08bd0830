"""Path validation and safe opening against every attack class, on real files."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path, PurePosixPath

import pytest

from rtcxfer.files import paths
from rtcxfer.files.paths import (
    check_relative_text,
    is_dir_beneath,
    makedirs_beneath,
    open_beneath,
    open_peer_path,
    resolve_peer_path,
    stat_beneath,
    validate_path_in_root,
)
from rtcxfer.protocol.errors import (
    NotARegularFileError,
    PathError,
    PathNotFoundError,
    PathOutsideRootError,
    RemoteProtocolError,
    UnsafePathError,
)

UNSAFE_TEXTS = {
    "empty": "",
    "only dots": "./.",
    "only slashes": "//",
    "traversal": "../../etc/passwd",
    "inner traversal": "data/../../etc/passwd",
    "trailing traversal": "data/..",
    "absolute": "/etc/passwd",
    "double slash absolute": "//host/share",
    "windows drive backslash": "C:\\Windows\\win.ini",
    "windows drive slash": "C:/Windows/win.ini",
    "drive relative": "c:foo",
    "unc": "\\\\host\\share\\x",
    "backslash traversal": "..\\..\\etc\\passwd",
    "backslash": "data\\f.txt",
    "nul": "data/f.txt\x00.png",
    "newline": "data/f\n.txt",
    "escape char": "data/\x1b[31m",
    "del": "data/f\x7f",
    "c1 control": "data/f\x85",
    "rtl override": "data/\u202etxt.exe",
    "zero width space": "data/\u200b",
    "bom": "\ufeffdata",
    "line separator": "data/\u2028x",
    "lone surrogate": "data/\udc80",
    "file scheme": "file:///etc/passwd",
    "file scheme relative": "file:data",
    "s3 scheme": "s3://bucket/key",
    "http scheme": "http://evil/x",
    "fsspec chain": "zip://x::file://data/a.zip",
    "fsspec chain later": "data/a::b",
    "name prefix": "memory:x",
    "one dot leader": "\u2024\u2024/etc/passwd",
    "two dot leader": "\u2025/etc",
    "fullwidth full stop": "\uff0e\uff0e/etc",
    "small full stop": "\ufe52\ufe52/x",
    "division slash": "..\u2215..\u2215etc",
    "fullwidth solidus": "data\uff0f..\uff0fx",
    "fraction slash": "a\u2044b",
    "set minus": "a\u2216b",
    "fullwidth reverse solidus": "a\uff3cb",
    "fullwidth colon": "c\uff1a/x",
    "fullwidth percent": "\uff05\u0032\u0065",
    "encoded dots": "%2e%2e/%2e%2e/etc/passwd",
    "encoded dots upper": "%2E%2E/etc",
    "encoded slash": "..%2fetc",
    "encoded backslash": "a%5cb",
    "encoded nul": "a%00b",
    "double encoding": "%252e%252e/x",
    "three dots": "data/.../x",
    "dots and space": "data/.. /x",
    "long component": "a" * 256,
    "long multibyte component": "\u00e9" * 128,
    "long path": "/".join(["a" * 200] * 21),
}

SAFE_TEXTS = {
    "data/f.txt": "data/f.txt",
    "./data//f.txt": "data/f.txt",
    "data/./f.txt/": "data/f.txt",
    "jobs/123/data.zip": "jobs/123/data.zip",
    ".hidden": ".hidden",
    "a..b": "a..b",
    "..a": "..a",
    "data/run:1": "data/run:1",
    "100%": "100%",
    "x%41y": "x%41y",
    "caf\u00e9/\u65e5\u672c": "caf\u00e9/\u65e5\u672c",
    "a" * 255: "a" * 255,
}


@pytest.mark.parametrize("text", list(UNSAFE_TEXTS.values()), ids=list(UNSAFE_TEXTS))
def test_check_relative_text_rejects(text: str) -> None:
    with pytest.raises(UnsafePathError) as info:
        check_relative_text(text)
    assert info.value.peer_path == text
    assert isinstance(info.value, RemoteProtocolError)
    assert info.value.reply is None


@pytest.mark.parametrize(("text", "expected"), list(SAFE_TEXTS.items()))
def test_check_relative_text_accepts_and_normalises(text: str, expected: str) -> None:
    assert check_relative_text(text) == PurePosixPath(expected)


@pytest.mark.parametrize("text", ["../../etc/passwd", "/etc/passwd", "a/../../b"])
def test_traversal_and_absolute_use_the_spec_message(text: str) -> None:
    with pytest.raises(UnsafePathError) as info:
        check_relative_text(text)
    assert str(info.value) == "Path outside shared storage"


def test_check_relative_text_refuses_non_text() -> None:
    with pytest.raises(UnsafePathError):
        check_relative_text(b"data")  # type: ignore[arg-type]


# --- a real tree -----------------------------------------------------------------------------


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run each descriptor test with openat2 and with the O_NOFOLLOW walk fallback."""
    if request.param == "openat2":
        if not paths._Openat2.available():
            pytest.skip("openat2 not available here")
    else:
        monkeypatch.setattr(paths._Openat2, "_probed", True)
        monkeypatch.setattr(paths._Openat2, "_syscall", None)
    return request.param


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """``base/root`` with files, dirs and symlinks; ``base/outside`` and ``base/root2`` beside it."""
    base = tmp_path
    root = base / "root"
    (root / "data" / "sub").mkdir(parents=True)
    (root / "data" / "f.txt").write_bytes(b"inside")
    (root / "data" / "sub" / "g.txt").write_bytes(b"deep")
    (base / "outside").mkdir()
    (base / "outside" / "secret").write_bytes(b"secret")
    (base / "root2").mkdir()
    (base / "root2" / "x").write_bytes(b"prefix")
    os.symlink(base / "outside" / "secret", root / "file_out")
    os.symlink("../outside", root / "dir_out")
    os.symlink("dir_out", root / "chain1")
    os.symlink("chain1", root / "chain2")
    os.symlink("../root2", root / "prefix_out")
    os.symlink("data", root / "dir_in")
    os.symlink("data/f.txt", root / "file_in")
    os.symlink(root / "data", root / "abs_in")
    os.symlink("loop_b", root / "loop_a")
    os.symlink("loop_a", root / "loop_b")
    os.symlink(base / "outside" / "missing", root / "dangling_out")
    os.mkfifo(root / "data" / "fifo")
    return root


def _assert_no_root_leak(exc: BaseException, *roots: Path) -> None:
    shown = " ".join([str(exc), repr(exc.args), str(getattr(exc, "peer_path", ""))])
    for root in roots:
        assert str(root) not in shown
        assert str(root.resolve()) not in shown


ESCAPES = [
    "file_out",
    "dir_out/secret",
    "dir_out/missing",
    "chain2/secret",
    "chain1",
    "prefix_out/x",
    "dangling_out",
    "dir_out/deeper/missing",
]


@pytest.mark.parametrize("text", ESCAPES)
def test_resolve_peer_path_refuses_symlink_escapes(tree: Path, text: str) -> None:
    with pytest.raises(PathOutsideRootError) as info:
        resolve_peer_path(text, tree)
    assert str(info.value) == "Path outside shared storage"
    assert info.value.peer_path == text
    _assert_no_root_leak(info.value, tree)


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("data/f.txt", "data/f.txt"),
        ("dir_in/f.txt", "data/f.txt"),
        ("file_in", "data/f.txt"),
        ("abs_in/sub/g.txt", "data/sub/g.txt"),
        ("data/new/missing.txt", "data/new/missing.txt"),
    ],
)
def test_resolve_peer_path_follows_symlinks_inside(tree: Path, text: str, target: str) -> None:
    assert resolve_peer_path(text, tree) == (tree / target).resolve()


def test_resolve_peer_path_symlink_loop_is_refused(tree: Path) -> None:
    with pytest.raises(PathOutsideRootError):
        resolve_peer_path("loop_a/x", tree)


def test_traversal_text_is_refused_before_touching_the_disk(tree: Path) -> None:
    with pytest.raises(UnsafePathError) as info:
        resolve_peer_path("../../etc/passwd", tree)
    assert str(info.value) == "Path outside shared storage"
    _assert_no_root_leak(info.value, tree)


def test_root_prefix_is_compared_by_whole_components(tree: Path) -> None:
    base = tree.parent
    with pytest.raises(PathOutsideRootError):
        validate_path_in_root(base / "root2" / "x", tree)
    with pytest.raises(PathOutsideRootError):
        validate_path_in_root(str(tree) + "2", tree)
    assert validate_path_in_root(tree / "data" / "f.txt", tree) == tree.resolve() / "data" / "f.txt"
    assert validate_path_in_root(tree, tree) == tree.resolve()


def test_validate_path_in_root_error_carries_the_given_path(tree: Path) -> None:
    with pytest.raises(PathOutsideRootError) as info:
        validate_path_in_root("/etc/passwd", tree)
    assert str(info.value) == "Path outside shared storage"
    assert info.value.peer_path == "/etc/passwd"


def _make_escape_root(base: Path, target_exists: bool) -> Path:
    root = base / "root"
    root.mkdir(parents=True)
    (base / "outside").mkdir()
    if target_exists:
        (base / "outside" / "secret").write_bytes(b"x")
    os.symlink("../outside", root / "link")
    os.symlink("../outside/secret", root / "file_link")
    return root


@pytest.mark.parametrize("text", ["link/secret", "file_link", "link/secret/more"])
def test_escape_is_reported_identically_whether_or_not_target_exists(tmp_path: Path, text: str) -> None:
    errors = []
    for exists in (True, False):
        root = _make_escape_root(tmp_path / str(exists), exists)
        with pytest.raises(PathOutsideRootError) as info:
            resolve_peer_path(text, root)
        _assert_no_root_leak(info.value, root)
        with pytest.raises(PathOutsideRootError) as opened:
            open_beneath(root, text)
        errors.append((type(info.value), info.value.args, info.value.peer_path, type(opened.value), opened.value.args))
    assert errors[0] == errors[1]


# --- descriptor-based access -----------------------------------------------------------------


def test_open_beneath_reads_a_regular_file(tree: Path, resolver: str) -> None:
    with open_beneath(tree, "data/sub/g.txt") as handle:
        assert handle.read() == b"deep"
        assert os.get_blocking(handle.fileno())


@pytest.mark.parametrize("text", ["file_out", "dir_out/secret", "chain2/secret", "file_in", "dir_in/f.txt", "loop_a"])
@pytest.mark.parametrize("mode", ["rb", "wb"])
def test_open_beneath_refuses_every_symlink(tree: Path, resolver: str, text: str, mode: str) -> None:
    before = (tree.parent / "outside" / "secret").read_bytes()
    with pytest.raises(PathOutsideRootError) as info:
        open_beneath(tree, text, mode)  # type: ignore[arg-type]
    assert str(info.value) == "Path outside shared storage"
    assert info.value.peer_path == text
    _assert_no_root_leak(info.value, tree)
    assert (tree.parent / "outside" / "secret").read_bytes() == before


def test_open_beneath_does_not_create_through_a_dir_symlink(tree: Path, resolver: str) -> None:
    with pytest.raises(PathOutsideRootError):
        open_beneath(tree, "dir_out/created", "xb")
    assert not (tree.parent / "outside" / "created").exists()


def test_open_peer_path_allows_symlinks_inside(tree: Path, resolver: str) -> None:
    with open_peer_path("dir_in/f.txt", tree) as handle:
        assert handle.read() == b"inside"
    with pytest.raises(PathOutsideRootError) as info:
        open_peer_path("chain2/secret", tree)
    assert info.value.peer_path == "chain2/secret"


def test_symlink_swapped_in_after_validation_is_refused(tree: Path, resolver: str) -> None:
    text = "data/sub/g.txt"
    resolved = resolve_peer_path(text, tree)
    relative = resolved.relative_to(tree.resolve())
    outside = tree.parent / "outside"
    (outside / "g.txt").write_bytes(b"attacker")
    # The attacker replaces a validated directory by a symlink to outside the root.
    shutil.rmtree(tree / "data" / "sub")
    os.symlink(outside, tree / "data" / "sub")
    for mode in ("rb", "wb"):
        with pytest.raises(PathOutsideRootError):
            open_beneath(tree, relative.as_posix(), mode)  # type: ignore[arg-type]
    assert (outside / "g.txt").read_bytes() == b"attacker"
    with pytest.raises(PathOutsideRootError):
        open_peer_path(text, tree)


def test_final_file_swapped_for_symlink_is_refused(tree: Path, resolver: str) -> None:
    resolved = resolve_peer_path("data/f.txt", tree)
    os.unlink(resolved)
    os.symlink(tree.parent / "outside" / "secret", resolved)
    with pytest.raises(PathOutsideRootError):
        open_beneath(tree, "data/f.txt")


def test_missing_file(tree: Path, resolver: str) -> None:
    with pytest.raises(PathNotFoundError) as info:
        open_beneath(tree, "data/nope.txt")
    assert type(info.value) is PathNotFoundError
    assert str(info.value) == "File not found"
    _assert_no_root_leak(info.value, tree)
    with pytest.raises(PathNotFoundError):
        open_beneath(tree, "data/f.txt/below")


@pytest.mark.parametrize("mode", ["rb", "wb"])
def test_directory_where_a_file_is_expected(tree: Path, resolver: str, mode: str) -> None:
    with pytest.raises(NotARegularFileError):
        open_beneath(tree, "data/sub", mode)  # type: ignore[arg-type]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("mode", ["rb", "wb"])
def test_fifo_is_refused_without_blocking(tree: Path, resolver: str, mode: str) -> None:
    with pytest.raises(NotARegularFileError):
        open_beneath(tree, "data/fifo", mode)  # type: ignore[arg-type]


def test_device_is_refused(tmp_path: Path, resolver: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    try:
        os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("cannot create a device node here")
    with pytest.raises(NotARegularFileError):
        open_beneath(root, "null", "wb")


def test_write_modes(tree: Path, resolver: str) -> None:
    with open_beneath(tree, "data/f.txt", "wb") as handle:
        handle.write(b"new")
    assert (tree / "data" / "f.txt").read_bytes() == b"new"
    with open_beneath(tree, "data/created.bin", "xb") as handle:
        handle.write(b"x")
    assert (tree / "data" / "created.bin").read_bytes() == b"x"
    with pytest.raises(PathError) as info:
        open_beneath(tree, "data/created.bin", "xb")
    assert str(info.value) == "File already exists"
    with pytest.raises(PathError):
        open_beneath(tree, "file_in", "xb")
    with pytest.raises(ValueError):
        open_beneath(tree, "data/f.txt", "r+b")  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["../root2/x", "/etc/passwd", "data/%2e%2e", "a::b", "s3://x"])
def test_descriptor_functions_check_the_text(tree: Path, resolver: str, text: str) -> None:
    for call in (
        lambda: open_beneath(tree, text),
        lambda: makedirs_beneath(tree, text),
        lambda: stat_beneath(tree, text),
        lambda: is_dir_beneath(tree, text),
    ):
        with pytest.raises(UnsafePathError):
            call()


def test_makedirs_beneath(tree: Path, resolver: str) -> None:
    created = makedirs_beneath(tree, "out/a/b")
    assert created == tree.resolve() / "out" / "a" / "b"
    assert created.is_dir() and not created.is_symlink()
    assert makedirs_beneath(tree, "out/a/b") == created
    assert is_dir_beneath(tree, "out/a")


@pytest.mark.parametrize("text", ["dir_out/new", "dir_in/new", "chain2/x/y", "dir_out"])
def test_makedirs_beneath_refuses_symlinks(tree: Path, resolver: str, text: str) -> None:
    with pytest.raises(PathOutsideRootError):
        makedirs_beneath(tree, text)
    assert sorted(os.listdir(tree.parent / "outside")) == ["secret"]


def test_makedirs_beneath_over_a_file(tree: Path, resolver: str) -> None:
    with pytest.raises(PathNotFoundError):
        makedirs_beneath(tree, "data/f.txt/x")


def test_stat_beneath_never_follows(tree: Path, resolver: str) -> None:
    assert stat.S_ISREG(stat_beneath(tree, "data/f.txt").st_mode)
    assert stat.S_ISLNK(stat_beneath(tree, "file_out").st_mode)
    assert stat.S_ISLNK(stat_beneath(tree, "dir_in").st_mode)
    assert not is_dir_beneath(tree, "dir_in")
    assert not is_dir_beneath(tree, "missing")
    assert is_dir_beneath(tree, "data/sub")
    with pytest.raises(PathOutsideRootError):
        stat_beneath(tree, "dir_out/secret")
    with pytest.raises(PathNotFoundError):
        stat_beneath(tree, "missing")


# --- permissions -----------------------------------------------------------------------------


def _run_as_nobody(func) -> str:  # type: ignore[no-untyped-def]
    """Run ``func`` in a forked child with nobody's uid and gid; return what it returns.

    A fork, not ``subprocess(user=...)``: the interpreter may live where nobody cannot exec it.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(write_end, func().encode())
            code = 0
        except BaseException as exc:  # noqa: BLE001 - the child must never return into pytest
            os.write(write_end, f"child error {exc!r}".encode())
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        output = reader.read().decode()
    os.waitpid(pid, 0)
    return output


def _outcome(root: Path, text: str, mode: str) -> str:
    try:
        with open_beneath(root, text, mode):  # type: ignore[arg-type]
            return "opened"
    except PathError as exc:
        return type(exc).__name__


@pytest.mark.parametrize("mode", ["rb", "wb"])
def test_permission_denied(resolver: str, mode: str) -> None:
    base = Path(tempfile.mkdtemp(prefix="rtcxfer-perm-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        root = base / "root"
        root.mkdir()
        os.chmod(root, 0o755)
        (root / "secret").write_bytes(b"secret")
        os.chmod(root / "secret", 0o600)
        (root / "public").write_bytes(b"public")
        os.chmod(root / "public", 0o644)
        (root / "locked").mkdir()
        os.chmod(root / "locked", 0o700)
        (root / "locked" / "f").write_bytes(b"f")
        if os.geteuid() == 0:
            outcome = _run_as_nobody(
                lambda: ",".join(_outcome(root, t, mode) for t in ("secret", "public", "locked/f"))
            )
            expected_public = "opened" if mode == "rb" else "PathPermissionError"
            assert outcome == f"PathPermissionError,{expected_public},PathPermissionError"
        else:
            # Without root the file modes apply to this very process.
            assert _outcome(root, "locked/f", mode) == "opened"
            os.chmod(root / "locked", 0o000)
            assert _outcome(root, "locked/f", mode) == "PathPermissionError"
            os.chmod(root / "locked", 0o700)
    finally:
        shutil.rmtree(base)


def test_remove_tree_tolerates_another_remover_of_the_same_tree(tmp_path: Path) -> None:
    """A job's clean-up and its session's may remove the same directories at once ("could not
    remove ...: No such file or directory" was logged at the end of such sessions)."""
    import threading

    for round_number in range(15):
        top = tmp_path / f"session-{round_number}"
        for branch in range(4):
            deep = top.joinpath(*[f"b{branch}d{level}" for level in range(12)])
            deep.mkdir(parents=True)
            for index in range(5):
                (deep / f"f{index}").write_bytes(b"x")
        errors: list[BaseException] = []
        start = threading.Barrier(2)

        def remove(path: Path, start: threading.Barrier = start, errors: list[BaseException] = errors) -> None:
            start.wait()
            try:
                paths.remove_tree(path)
            except OSError as error:
                errors.append(error)

        # The outer directory and one of its branches, as a session and its job do.
        threads = [
            threading.Thread(target=remove, args=(top,)),
            threading.Thread(target=remove, args=(top / "b0d0",)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert not top.exists()
