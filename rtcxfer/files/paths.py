"""Validate relative paths sent by a peer and open them without escaping the shared root.

Threat model
------------
The peer chooses the relative path text (``SHARED_INPUT_PATH::jobs/1/data.zip``) and may be able
to create files and symlinks on the shared storage, including *while* the worker is using a path.
Nothing it sends may make the worker read, write or create anything outside ``shared_root``, and
nothing the worker sends back may reveal the worker's absolute paths.

The defence has three layers:

1. :func:`check_relative_text` rejects text that is not a plain relative POSIX path: absolute
   paths, drive letters, ``..``, control and format characters, backslashes, URL schemes and
   fsspec ``::`` chains, percent-encoded separators, Unicode look-alikes of ``.`` ``/`` ``\\``
   ``:`` and overlong names. It never touches the filesystem.
2. :func:`validate_path_in_root` / :func:`resolve_peer_path` follow the user's spec: resolve
   symlinks and require the resolved path to lie inside the resolved root (whole components).
   An escape is reported identically whether or not the target exists.
3. :func:`open_beneath` and friends close the window between check and use: they open relative to
   a descriptor of the root and refuse to follow *any* symlink on the way (``openat2`` with
   ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`` on Linux, otherwise a component-by-component
   ``O_NOFOLLOW`` walk with ``dir_fd``). Callers that want symlinks inside the root to work
   resolve first (:func:`open_peer_path` does both).

Error messages are the spec's fixed texts (``"File not found"``, ``"Permission denied"``,
``"Path outside shared storage"``...); the peer's text is in ``exc.peer_path``, so a reply is
``f"{exc}: {exc.peer_path}"``. Absolute paths are only logged locally.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import re
import stat
import sys
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Literal

from rtcxfer.log import logger
from rtcxfer.protocol import texts
from rtcxfer.protocol.characters import first_unshowable
from rtcxfer.protocol.errors import (
    NotARegularFileError,
    PathError,
    PathExistsError,
    PathNotFoundError,
    PathOutsideRootError,
    PathPermissionError,
    StorageFullError,
    UnsafePathError,
)

__all__ = [
    "MAX_COMPONENT_BYTES",
    "MAX_PATH_BYTES",
    "OUTSIDE_ROOT_MESSAGE",
    "check_relative_text",
    "create_fresh_at",
    "fsync_directory_at",
    "is_dir_beneath",
    "makedirs_beneath",
    "open_beneath",
    "open_directory_beneath",
    "open_for_update_at",
    "open_peer_path",
    "remove_tree",
    "resolve_peer_path",
    "stat_beneath",
    "validate_path_in_root",
]

OpenMode = Literal["rb", "wb", "xb"]

MAX_COMPONENT_BYTES = 255
MAX_PATH_BYTES = 4096

OUTSIDE_ROOT_MESSAGE = texts.OUTSIDE_ROOT
NOT_FOUND_MESSAGE = texts.NOT_FOUND
PERMISSION_MESSAGE = texts.PERMISSION_DENIED
NOT_REGULAR_MESSAGE = "Not a regular file"
EXISTS_MESSAGE = "File already exists"
DISK_FULL_MESSAGE = texts.DISK_FULL

# Characters that some later layer (NFKC, Windows "best fit" code pages, a human reading a log)
# may turn into a separator, a dot, a drive colon or a percent sign although NFKC leaves them
# alone. Those whose NFKC form *is* one of ``./\:%`` are caught by the NFKC rule instead.
_LOOKALIKES = frozenset(
    "\u2044\u2215\u2571\u29f8\u1735\u3033\u0338\u0337"  # slashes
    "\u2216\u2572\u29f5\u29f9\u29f7"  # backslashes
    "\u2027\u2e31\u2e33\u0701\u0702\ua4f8\ua60e\u06d4\U00010a50"  # dots
    "\u2236\ua789\u0589\u05c3\u16ec\u1803\u1809\u205a\u02d0\u02f8\ua4fd"  # colons
    "\u066a\u2052"  # percent signs
)
_SPECIAL_ASCII = "./\\:%"
_PERCENT_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def _shown(text: str, limit: int = 120) -> str:
    """A log-safe rendering of peer text: escaped, quoted, truncated."""
    shown = ascii(text[:limit])
    return shown + ("..." if len(text) > limit else "")


def _unsafe(reason: str, text: str) -> UnsafePathError:
    logger.warning("Rejected peer path {}: {}", _shown(text), reason)
    return UnsafePathError(reason, peer_path=text)


def _check_characters(text: str) -> None:
    """Reject control/format characters, backslashes, schemes, look-alikes and encodings."""
    if first_unshowable(text) is not None:
        raise _unsafe("Unsafe path: control character", text)
    if "\\" in text:
        raise _unsafe("Unsafe path: backslash", text)
    if "::" in text:
        raise _unsafe("Unsafe path: '::' chain", text)
    for char in text:
        if char in _LOOKALIKES or (
            not char.isascii() and any(c in _SPECIAL_ASCII for c in unicodedata.normalize("NFKC", char))
        ):
            raise _unsafe("Unsafe path: look-alike character", text)
    for match in _PERCENT_ESCAPE.finditer(text):
        # Someone may URL-decode the text later: no encoded separators, dots, percent signs
        # (double encoding) or controls.
        code = int(match.group(1), 16)
        if chr(code) in _SPECIAL_ASCII or code < 0x20 or code >= 0x7F:
            raise _unsafe("Unsafe path: percent-encoded character", text)


def check_relative_text(text: str) -> PurePosixPath:
    """Check that ``text`` is a plain relative POSIX path and return it normalised.

    Empty components and ``.`` are dropped (``a//./b`` -> ``a/b``). Raises
    :class:`UnsafePathError` (``peer_path=text``) for anything else that is not a plain relative
    path; absolute paths and ``..`` get the spec's ``"Path outside shared storage"`` message.
    """
    if not isinstance(text, str):
        raise UnsafePathError("Unsafe path: not text", peer_path=repr(text))
    if not text:
        raise _unsafe("Unsafe path: empty", text)
    if len(text) > MAX_PATH_BYTES:  # cheap bound before any per-character work
        raise _unsafe("Unsafe path: too long", text)
    _check_characters(text)
    if text.startswith("/"):
        raise _unsafe(OUTSIDE_ROOT_MESSAGE, text)
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:  # pragma: no cover - surrogates are rejected as Cs above
        raise _unsafe("Unsafe path: not UTF-8", text) from None
    if len(encoded) > MAX_PATH_BYTES:
        raise _unsafe("Unsafe path: too long", text)
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if not parts:
        raise _unsafe("Unsafe path: empty", text)
    if ":" in parts[0]:
        # "file:", "s3://", "C:" and any other "name:" prefix a later layer may take as a scheme
        raise _unsafe("Unsafe path: scheme or drive prefix", text)
    for part in parts:
        if part == "..":
            raise _unsafe(OUTSIDE_ROOT_MESSAGE, text)
        if part.strip(". \t") == "":
            # "...", ".. ": Windows servers (SMB shares) strip trailing dots and spaces.
            raise _unsafe("Unsafe path: dots-only component", text)
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise _unsafe("Unsafe path: component too long", text)
    if ".." in unicodedata.normalize("NFKC", text).split("/"):  # pragma: no cover - belt and braces
        raise _unsafe(OUTSIDE_ROOT_MESSAGE, text)
    return PurePosixPath(*parts)


def _resolve(path: str | os.PathLike[str]) -> Path | None:
    """``Path(path).resolve()``, or ``None`` when the path cannot be resolved at all."""
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError, ValueError):
        # RuntimeError: symlink loop (Python < 3.13); ValueError: embedded NUL.
        return None
    # From Python 3.13 a loop no longer raises: resolution stops at a link that is still a
    # link. A fully resolved path has no link in it anywhere.
    if any(part.is_symlink() for part in (resolved, *resolved.parents)):
        return None
    return resolved


def validate_path_in_root(path: str | os.PathLike[str], shared_root: str | os.PathLike[str]) -> Path:
    """Resolve ``path`` (following symlinks) and require it to lie inside the resolved root.

    Whole components are compared, so ``/root2`` is not inside ``/root``. Returns the resolved
    path; raises :class:`PathOutsideRootError` (message ``"Path outside shared storage"``,
    ``peer_path=str(path)``) otherwise, including when ``path`` cannot be resolved (a symlink
    loop). The absolute paths are logged as a security violation.
    """
    root = Path(shared_root).resolve()
    resolved = _resolve(path)
    if resolved is not None:
        try:
            resolved.relative_to(root)
        except ValueError:
            pass
        else:
            return resolved
    logger.warning(
        "Security violation: path {} resolves to {} outside shared root {}",
        _shown(str(path)),
        resolved,
        root,
    )
    raise PathOutsideRootError(OUTSIDE_ROOT_MESSAGE, peer_path=str(path))


def resolve_peer_path(relative_text: str, shared_root: str | os.PathLike[str]) -> Path:
    """Check the peer's text, join it to the root and validate the resolved result.

    Returns the resolved absolute path (symlinks inside the root are followed). An escape raises
    :class:`PathOutsideRootError` with the same message whether or not the target exists, and
    ``peer_path`` is the peer's own text, never an absolute path.
    """
    started = time.perf_counter()
    relative = check_relative_text(relative_text)
    try:
        resolved = validate_path_in_root(Path(shared_root) / relative, shared_root)
    except PathOutsideRootError:
        raise PathOutsideRootError(OUTSIDE_ROOT_MESSAGE, peer_path=relative_text) from None
    elapsed = time.perf_counter() - started
    if elapsed > 1.0:
        logger.warning("Validating peer path {} took {:.3f} s", _shown(relative_text), elapsed)
    else:
        logger.debug("Validated peer path {} in {:.6f} s", _shown(relative_text), elapsed)
    return resolved


# --- descriptor-based access -------------------------------------------------------------------

_O_PATH = getattr(os, "O_PATH", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_NOCTTY = getattr(os, "O_NOCTTY", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
# A directory used only as dir_fd needs no read permission with O_PATH (Linux), only search.
_DIR_FLAGS = (_O_PATH or os.O_RDONLY) | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC

_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE_FLAGS = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437}.get(platform.machine())

_FILE_FLAGS: dict[str, int] = {
    # O_NONBLOCK: opening a FIFO must not block; it is cleared once fstat shows a regular file.
    # No O_TRUNC for "wb": a non-regular file must be refused before anything is changed.
    "rb": os.O_RDONLY | _O_NONBLOCK,
    "wb": os.O_WRONLY | os.O_CREAT | _O_NONBLOCK,
    "xb": os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NONBLOCK,
}


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _Openat2:
    """The ``openat2`` system call through ctypes, probed once; ``None`` when unusable."""

    _syscall = None
    _probed = False

    @classmethod
    def available(cls) -> bool:
        if not cls._probed:
            cls._probed = True
            cls._syscall = cls._probe()
        return cls._syscall is not None

    @classmethod
    def _probe(cls):  # type: ignore[no-untyped-def]
        if not sys.platform.startswith("linux") or _SYS_OPENAT2 is None:
            return None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            syscall = libc.syscall
        except (OSError, AttributeError):
            return None
        syscall.restype = ctypes.c_long
        cls._syscall = syscall
        try:
            fd = cls.call(-100, "/", os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC, 0, 0)  # AT_FDCWD
        except OSError as exc:
            # ENOSYS: kernel < 5.6; EPERM: a seccomp filter; E2BIG/EINVAL: an odd struct size.
            logger.debug("openat2 unavailable ({}); using the O_NOFOLLOW walk", exc)
            return None
        os.close(fd)
        return syscall

    @classmethod
    def call(cls, dir_fd: int, path: str, flags: int, mode: int, resolve: int) -> int:
        how = _OpenHow(flags, mode, resolve)
        raw = os.fsencode(path)
        while True:
            fd = cls._syscall(
                ctypes.c_long(_SYS_OPENAT2),
                ctypes.c_int(dir_fd),
                ctypes.c_char_p(raw),
                ctypes.byref(how),
                ctypes.c_size_t(ctypes.sizeof(how)),
            )
            if fd >= 0:
                return int(fd)
            err = ctypes.get_errno()
            if err != errno.EINTR:
                raise OSError(err, os.strerror(err), path)


def _require_dir_fd_support() -> None:
    if os.open not in os.supports_dir_fd or os.mkdir not in os.supports_dir_fd:
        # Without *at() calls there is no race-free way to stay beneath the root: refuse.
        raise NotImplementedError("safe path access needs openat()/mkdirat() on this platform")


def _map_os_error(exc: OSError, peer_path: str, absolute: Path) -> Exception:
    """Turn an OS error met beneath the root into the matching typed error."""
    code = exc.errno
    if code in (errno.ELOOP, errno.EXDEV):
        logger.warning("Security violation: symlink or escape on the way to {} ({})", absolute, exc)
        return PathOutsideRootError(OUTSIDE_ROOT_MESSAGE, peer_path=peer_path)
    logger.info("Cannot access {}: {}", absolute, exc)
    if code in (errno.ENOENT, errno.ENOTDIR):
        return PathNotFoundError(NOT_FOUND_MESSAGE, peer_path=peer_path)
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PathPermissionError(PERMISSION_MESSAGE, peer_path=peer_path)
    if code in (errno.EISDIR, errno.ENXIO, errno.ENODEV):
        return NotARegularFileError(NOT_REGULAR_MESSAGE, peer_path=peer_path)
    if code == errno.EEXIST:
        return PathExistsError(EXISTS_MESSAGE, peer_path=peer_path)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return StorageFullError(DISK_FULL_MESSAGE)
    if code == errno.ENAMETOOLONG:
        return UnsafePathError("Unsafe path: too long", peer_path=peer_path)
    return PathError("Cannot access path", peer_path=peer_path)


@contextmanager
def _root_fd(root: str | os.PathLike[str]) -> Iterator[tuple[int, Path]]:
    """An ``O_PATH`` descriptor of the resolved root, closed on exit."""
    resolved = Path(root).resolve()
    fd = os.open(resolved, _DIR_FLAGS)
    try:
        yield fd, resolved
    finally:
        os.close(fd)


def _is_symlink_at(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _walk_dirs(root_fd: int, parts: tuple[str, ...]) -> int:
    """Open the directory ``parts`` beneath ``root_fd`` one component at a time, no symlinks.

    Returns a new descriptor (the caller closes it). A symlink on the way raises ``ELOOP`` like
    ``openat2`` with ``RESOLVE_NO_SYMLINKS`` would; ``..`` never reaches here.
    """
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except NotADirectoryError:
                # O_NOFOLLOW | O_DIRECTORY on a symlink gives ENOTDIR: tell the cases apart.
                if _is_symlink_at(fd, part):
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), part) from None
                raise
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_dir_beneath(root_fd: int, parts: tuple[str, ...]) -> int:
    """A descriptor of directory ``parts`` beneath ``root_fd``, with no symlink followed."""
    if not parts:
        return os.dup(root_fd)
    if _Openat2.available():
        # Without O_NOFOLLOW: a trailing symlink then fails with ELOOP (RESOLVE_NO_SYMLINKS)
        # instead of ENOTDIR, so it is reported like a symlink anywhere else.
        return _Openat2.call(root_fd, "/".join(parts), _DIR_FLAGS & ~_O_NOFOLLOW, 0, _RESOLVE_FLAGS)
    return _walk_dirs(root_fd, parts)


def _open_file_fd(root_fd: int, relative: PurePosixPath, flags: int, perm: int) -> int:
    """Open ``relative`` beneath ``root_fd`` with ``flags``, following no symlink at all."""
    flags |= _O_NOFOLLOW | _O_CLOEXEC | _O_NOCTTY
    if _Openat2.available():
        return _Openat2.call(root_fd, str(relative), flags, perm if flags & os.O_CREAT else 0, _RESOLVE_FLAGS)
    parent_fd = _walk_dirs(root_fd, relative.parts[:-1])
    try:
        return os.open(relative.name, flags, perm, dir_fd=parent_fd)
    finally:
        os.close(parent_fd)


def _prepare_file(fd: int, mode: OpenMode) -> None:
    """Refuse non-regular files, clear O_NONBLOCK, and truncate for ``"wb"``."""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise OSError(errno.ENXIO, "not a regular file")
    if _O_NONBLOCK:
        os.set_blocking(fd, True)
    if mode == "wb":
        os.ftruncate(fd, 0)


def _as_text(relative: str | os.PathLike[str]) -> str:
    return relative if isinstance(relative, str) else os.fspath(relative)


def open_beneath(
    root: str | os.PathLike[str],
    relative: str | os.PathLike[str],
    mode: OpenMode = "rb",
    *,
    perm: int = 0o666,
) -> BinaryIO:
    """Open ``relative`` beneath ``root`` without following any symlink, and return a file object.

    ``mode`` is ``"rb"`` (read), ``"wb"`` (create or truncate) or ``"xb"`` (create, fail if it
    exists). ``relative`` is checked with :func:`check_relative_text` first. Only regular files
    are opened: directories, FIFOs and devices raise :class:`NotARegularFileError` (a FIFO never
    blocks). A symlink anywhere on the way raises :class:`PathOutsideRootError`, even one that
    points inside the root: resolve first (:func:`open_peer_path`) to allow those.
    """
    if mode not in _FILE_FLAGS:
        raise ValueError(f"mode must be one of {sorted(_FILE_FLAGS)}, not {mode!r}")
    _require_dir_fd_support()
    text = _as_text(relative)
    rel = check_relative_text(text)
    with _root_fd(root) as (root_fd, resolved_root):
        absolute = resolved_root / rel
        try:
            fd = _open_file_fd(root_fd, rel, _FILE_FLAGS[mode], perm)
        except OSError as exc:
            raise _map_os_error(exc, text, absolute) from None
    try:
        _prepare_file(fd, mode)
        return os.fdopen(fd, "rb" if mode == "rb" else "wb")
    except OSError as exc:
        os.close(fd)
        raise _map_os_error(exc, text, absolute) from None
    except BaseException:
        os.close(fd)
        raise


def open_peer_path(relative_text: str, shared_root: str | os.PathLike[str], mode: OpenMode = "rb") -> BinaryIO:
    """The whole chain for a peer's path: :func:`resolve_peer_path`, then :func:`open_beneath`.

    Symlinks inside the root are followed by the resolution; the open then follows none, so a
    symlink swapped in between is refused. Errors carry the peer's own text as ``peer_path``.
    """
    resolved = resolve_peer_path(relative_text, shared_root)
    inside = resolved.relative_to(Path(shared_root).resolve())
    if not inside.parts:
        raise NotARegularFileError(NOT_REGULAR_MESSAGE, peer_path=relative_text)
    try:
        return open_beneath(shared_root, inside.as_posix(), mode)
    except UnsafePathError as exc:
        # The resolved name (a symlink's target) may hold text we would refuse from a peer.
        raise UnsafePathError(str(exc), peer_path=relative_text) from None
    except PathError as exc:
        raise type(exc)(str(exc), peer_path=relative_text) from None


def _make_dirs_fd(root_fd: int, parts: tuple[str, ...], perm: int) -> int:
    """Create and enter ``parts`` beneath ``root_fd`` one component at a time; returns a new
    descriptor of the last one. An existing symlink anywhere fails with ``ELOOP``."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            # An existing entry is checked by the O_NOFOLLOW open below.
            with suppress(FileExistsError):
                os.mkdir(part, perm, dir_fd=fd)
            next_fd = _walk_dirs(fd, (part,))
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def makedirs_beneath(root: str | os.PathLike[str], relative: str | os.PathLike[str], *, perm: int = 0o777) -> Path:
    """Create the directory ``relative`` and its missing parents beneath ``root``.

    Each component is created with ``mkdirat`` and entered with ``O_NOFOLLOW``, so an existing
    symlink anywhere raises :class:`PathOutsideRootError` and an existing file
    :class:`PathNotFoundError` (message ``"File not found"``, as for ``ENOTDIR``). Returns the
    absolute path (under the resolved root) of the directory.
    """
    os.close(open_directory_beneath(root, relative, create=True, perm=perm))
    return Path(root).resolve() / check_relative_text(_as_text(relative))


def open_directory_beneath(
    root: str | os.PathLike[str], relative: str | os.PathLike[str], *, create: bool = False, perm: int = 0o777
) -> int:
    """A descriptor of the directory ``relative`` beneath ``root`` (created with its parents if
    ``create``), reached without following any symlink. The caller closes it. ``""`` or ``"."``
    is ``root`` itself.

    Work done through the descriptor (:func:`create_fresh_at`, :func:`open_for_update_at`,
    ``os.unlink(name, dir_fd=fd)``) stays in that very directory even if its path is later
    swapped for a symlink elsewhere. The descriptor may be an ``O_PATH`` one (Linux): use it as
    ``dir_fd`` and with :func:`fsync_directory_at`, not for reading. Errors are the typed ones
    of :func:`makedirs_beneath`.
    """
    _require_dir_fd_support()
    text = _as_text(relative)
    rel = PurePosixPath() if text in ("", ".") else check_relative_text(text)
    with _root_fd(root) as (root_fd, resolved_root):
        try:
            if create:
                return _make_dirs_fd(root_fd, rel.parts, perm)
            return _open_dir_beneath(root_fd, rel.parts)
        except OSError as exc:
            raise _map_os_error(exc, text, resolved_root / rel) from None


def create_fresh_at(dir_fd: int, name: str, *, perm: int = 0o666) -> BinaryIO:
    """A new, empty regular file ``name`` in the directory ``dir_fd``, open for writing.

    Whatever had that name (an old file, a hard link planted to a file elsewhere, a symlink) is
    unlinked first: only the name goes, never what it pointed at. The file is then created with
    ``O_CREAT | O_EXCL | O_NOFOLLOW``, so anything planted between the two steps makes it fail
    (:class:`PathExistsError`) instead of being written through. Bytes written land in an inode
    nobody else could have linked beforehand.
    """
    if not name or "/" in name or name in (".", ".."):
        raise UnsafePathError("Unsafe path: not a single file name", peer_path=name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC | _O_NOCTTY
    try:
        with suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
        fd = os.open(name, flags, perm, dir_fd=dir_fd)
    except OSError as exc:
        raise _map_os_error(exc, name, Path(f"<directory fd {dir_fd}>") / name) from None
    return os.fdopen(fd, "wb")


def open_for_update_at(dir_fd: int, name: str) -> BinaryIO:
    """The existing regular file ``name`` in the directory ``dir_fd``, open for reading and
    writing (``"r+b"``, positioned at its start).

    No symlink is followed (a symlink raises :class:`PathOutsideRootError`), a FIFO never
    blocks, and anything but a regular file raises :class:`NotARegularFileError`; a missing
    file raises :class:`PathNotFoundError`.
    """
    if not name or "/" in name or name in (".", ".."):
        raise UnsafePathError("Unsafe path: not a single file name", peer_path=name)
    where = Path(f"<directory fd {dir_fd}>") / name
    flags = os.O_RDWR | _O_NONBLOCK | _O_NOFOLLOW | _O_CLOEXEC | _O_NOCTTY
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        raise _map_os_error(exc, name, where) from None
    try:
        _prepare_file(fd, "rb")
        return os.fdopen(fd, "r+b")
    except OSError as exc:
        os.close(fd)
        raise _map_os_error(exc, name, where) from None
    except BaseException:
        os.close(fd)
        raise


def fsync_directory_at(dir_fd: int) -> None:
    """Flush a directory's entries (new names) to storage, given any descriptor of it."""
    fd = os.open(".", os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove the directory ``path`` and everything in it, as ``rm -rf`` would, without recursion.

    Depth is unbounded: a peer's 2,000 nested directories cost a loop, not Python's stack
    (``shutil.rmtree`` raises ``RecursionError`` there on some versions). Work is relative to
    directory descriptors, no symlink is ever followed (a symlink is removed as a name), and at
    most two descriptors are open at a time. A missing ``path`` is not an error, nor is an
    entry that another remover takes away meanwhile (a job's clean-up and its session's may
    overlap); anything else the system refuses raises ``OSError``.
    """
    _require_dir_fd_support()
    top = Path(path)
    parent_fd = os.open(top.parent, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    try:
        try:
            info = os.stat(top.name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(info.st_mode):
            os.unlink(top.name, dir_fd=parent_fd)
            return
        _remove_directory_contents(parent_fd, top.name)
        with suppress(FileNotFoundError):
            os.rmdir(top.name, dir_fd=parent_fd)
    finally:
        os.close(parent_fd)


_LIST_FLAGS = os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC


def _remove_directory_contents(parent_fd: int, name: str) -> None:
    # Descend by name, come back up by "..", checking each step by (device, inode): only two
    # descriptors and one list of names per level are held, whatever the depth.
    try:
        fd = os.open(name, _LIST_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        return
    own = os.fstat(fd)
    ancestors: list[tuple[int, int, str]] = []  # (dev, ino) of each parent, and our name in it
    try:
        while True:
            subdirectory = None
            with os.scandir(fd) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        subdirectory = subdirectory or entry.name
                    else:
                        with suppress(FileNotFoundError):
                            os.unlink(entry.name, dir_fd=fd)
            if subdirectory is not None:
                try:
                    child = os.open(subdirectory, _LIST_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    continue  # removed by someone else meanwhile: look again
                ancestors.append((own.st_dev, own.st_ino, subdirectory))
                os.close(fd)
                fd, own = child, os.fstat(child)
                continue
            if not ancestors:
                return
            dev, ino, my_name = ancestors.pop()
            try:
                parent = os.open("..", _LIST_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                return  # another remover took this whole branch away, and finishes it
            parent_info = os.fstat(parent)
            os.close(fd)
            fd, own = parent, parent_info
            if (parent_info.st_dev, parent_info.st_ino) != (dev, ino):
                raise OSError(errno.ESTALE, "directory moved while it was being removed", my_name)
            with suppress(FileNotFoundError):
                os.rmdir(my_name, dir_fd=fd)
    finally:
        os.close(fd)


def stat_beneath(root: str | os.PathLike[str], relative: str | os.PathLike[str]) -> os.stat_result:
    """``lstat`` of ``relative`` beneath ``root``; no symlink is followed.

    A symlink in a directory component raises :class:`PathOutsideRootError`; a symlink as the last
    component is reported as itself (``S_ISLNK``), never followed.
    """
    _require_dir_fd_support()
    text = _as_text(relative)
    rel = check_relative_text(text)
    with _root_fd(root) as (root_fd, resolved_root):
        absolute = resolved_root / rel
        try:
            parent_fd = _open_dir_beneath(root_fd, rel.parts[:-1])
            try:
                return os.stat(rel.name, dir_fd=parent_fd, follow_symlinks=False)
            finally:
                os.close(parent_fd)
        except OSError as exc:
            raise _map_os_error(exc, text, absolute) from None


def is_dir_beneath(root: str | os.PathLike[str], relative: str | os.PathLike[str]) -> bool:
    """Whether ``relative`` is a real directory beneath ``root`` (a symlink to one is not).

    Missing paths give ``False``; unsafe text, escapes and permission problems still raise.
    """
    try:
        return stat.S_ISDIR(stat_beneath(root, relative).st_mode)
    except PathNotFoundError:
        return False
