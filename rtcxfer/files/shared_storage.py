"""Finding the shared storage root on this machine, and proving that a peer sees the same one.

Two mounts with the same name are not proof of the same storage, so a session verifies it:
the client writes a probe file with random content under its root (:func:`write_probe`) and the
worker must read the same bytes under its own root (:func:`check_probe`; see the ``shared-fs``
transport, and ``rtcxfer doctor``, which runs both on one machine). A worker also tells its
room a fingerprint of its storage that never shows its path (:func:`shared_root_fingerprint`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import TypeVar

import attrs

from rtcxfer.files import paths
from rtcxfer.log import logger
from rtcxfer.protocol.errors import PathError, StorageFullError
from rtcxfer.protocol.frames import SharedProbe

_T = TypeVar("_T")

ENV_VAR = "SHARED_STORAGE_ROOT"

#: Mount points of the container platforms we know, checked in order.
KNOWN_MOUNT_POINTS: tuple[str, ...] = (
    "/home/jovyan/vast/amick",  # RunAI / Vast.ai containers of the spec
    "/home/jovyan/shared",
    "/workspace/shared",
    "/mnt/shared",
    "/shared",
)

#: Where probes live, relative to the shared root.
PROBE_DIR = PurePosixPath(".rtcxfer") / "probes"
PROBE_BYTES = 64


@attrs.frozen
class SharedRootChoice:
    """The root found, and why it was chosen (for ``rtcxfer doctor`` and the logs)."""

    root: Path | None
    source: str


def detect_shared_root(
    explicit: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    candidates: Iterable[str] = KNOWN_MOUNT_POINTS,
) -> SharedRootChoice:
    """The shared storage root: an explicit option, else ``$SHARED_STORAGE_ROOT``, else the
    first known container mount point that is a directory. ``root`` is ``None`` if none is."""
    environ = os.environ if environ is None else environ
    if explicit is not None:
        return _checked(Path(explicit), "option")
    from_env = environ.get(ENV_VAR, "").strip()
    if from_env:
        return _checked(Path(from_env), f"${ENV_VAR}")
    for candidate in candidates:
        path = Path(candidate)
        if path.is_dir():
            logger.info("shared storage detected at known mount point {}", path)
            return SharedRootChoice(path.resolve(), f"mount point {candidate}")
    return SharedRootChoice(None, "none found")


def _checked(path: Path, source: str) -> SharedRootChoice:
    if not path.is_dir():
        logger.warning("shared storage root {} from {} is not a directory; shared-fs is off", path, source)
        return SharedRootChoice(None, f"{source} (not a directory: {path})")
    return SharedRootChoice(path.resolve(), source)


@attrs.frozen
class Probe:
    """A probe file written under the client's root."""

    relative_path: str
    sha256: str
    root: Path

    def remove(self) -> None:
        """Remove the probe, and the probes' directory once empty, through descriptors (no link
        followed on the way, whoever else writes to the shared storage)."""
        name = PurePosixPath(self.relative_path).name
        try:
            probes = paths.open_directory_beneath(self.root, PROBE_DIR.as_posix())
        except (PathError, OSError):
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=probes)
        finally:
            os.close(probes)
        with contextlib.suppress(PathError, OSError):
            parent = paths.open_directory_beneath(self.root, PROBE_DIR.parent.as_posix())
            try:
                os.rmdir(PROBE_DIR.name, dir_fd=parent)  # only when empty: another peer's probe stays
            finally:
                os.close(parent)


def remove_empty_directories(directory: Path, root: Path) -> None:
    """Remove ``directory`` and its parents up to (not including) ``root`` while they are empty:
    what rtcxfer made on shared storage for a moment is not left there as clutter."""
    directory, root = Path(directory), Path(root)
    while directory != root and root in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return  # not empty (someone else's file), or already gone
        directory = directory.parent


def make_then_create(directory: Path, create: Callable[[], _T]) -> _T:
    """``mkdir -p directory`` then ``create()``, again if another peer's
    :func:`remove_empty_directories` took the directory away in between."""
    for attempt in range(3):
        directory.mkdir(parents=True, exist_ok=True)
        try:
            return create()
        except FileNotFoundError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def write_probe(shared_root: Path) -> Probe:
    """Write a fresh probe file with random content under ``shared_root``.

    Everything under the root may be another user's doing: the directories are made and entered
    with no link followed, and the file is created fresh in the very directory that was checked
    (:mod:`rtcxfer.files.paths`), so a ``.rtcxfer`` planted as a link elsewhere gets nothing
    written through it (:class:`PathError`)."""
    content = secrets.token_bytes(PROBE_BYTES)
    relative = PROBE_DIR / f"{secrets.token_hex(16)}.probe"
    for attempt in range(3):
        directory = paths.open_directory_beneath(shared_root, PROBE_DIR.as_posix(), create=True)
        try:
            with paths.create_fresh_at(directory, relative.name, perm=0o644) as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            break
        except PathError:
            # Another peer's clean-up removed the empty directory between our open and our file.
            if attempt == 2:
                raise
        finally:
            os.close(directory)
    return Probe(relative.as_posix(), hashlib.sha256(content).hexdigest(), Path(shared_root))


#: The file under a shared root whose content identifies that storage wherever it is mounted.
ROOT_MARKER = ".rtcxfer/storage-id"
_MARKER_DIR, _, _MARKER_NAME = ROOT_MARKER.rpartition("/")


def shared_root_fingerprint(root: Path | None) -> str | None:
    """A stable id of the storage mounted at ``root``, the same on every machine that mounts it.

    It hashes the content of a marker file (:data:`ROOT_MARKER`, random, made by the first
    rtcxfer to look), not the path: two machines mounting the same export at different places
    match, two different storages that happen to share a mount point do not, and the absolute
    path is never revealed. None when there is no root, or no marker and no way to write one.
    """
    if root is None:
        return None
    try:
        # Made and entered with no link followed: a `.rtcxfer` another user planted as a link
        # (to /etc/sudoers.d, say) gets no file made through it, by a worker run as root least of all.
        directory = paths.open_directory_beneath(root, _MARKER_DIR, create=True)
    except (PathError, StorageFullError, OSError) as error:
        logger.warning("shared storage fingerprint: {} under the root is unusable ({}); none given", _MARKER_DIR, error)
        return None
    try:
        content = _read_marker(directory)
        if content is None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(_MARKER_NAME, flags, 0o644, dir_fd=directory)
            except FileExistsError:
                fd = None  # another machine or process made it first: theirs counts
            if fd is not None:
                with os.fdopen(fd, "w") as handle:
                    handle.write(secrets.token_hex(16))
            content = _read_marker(directory)
    except OSError:
        return None
    finally:
        os.close(directory)
    if not content:
        return None
    return hashlib.sha256(b"rtcxfer-shared-root\0" + content).hexdigest()[:32]


def _read_marker(directory: int) -> bytes | None:
    try:
        fd = os.open(_MARKER_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=directory)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return None  # a FIFO or a device planted there: neither read nor trusted
        return handle.read(256).strip()


def check_probe(root: Path | None, probe: SharedProbe) -> str:
    """The worker's verdict on a probe: ``verified``, ``mismatch``, ``missing`` or ``unavailable``."""
    if root is None:
        return "unavailable"
    if PurePosixPath(probe.relative_path).parent != PROBE_DIR:
        # Only probe files may be hashed: anything else would let a peer test the content of
        # arbitrary files against guessed hashes.
        logger.warning("refused a probe outside {}: {!r}", PROBE_DIR, probe.relative_path)
        return "missing"
    try:
        with paths.open_peer_path(probe.relative_path, root) as handle:
            content = handle.read(PROBE_BYTES + 1)
    except PathError as error:
        logger.info("shared storage probe not readable here: {}", error)
        return "missing"
    if len(content) > PROBE_BYTES:
        # Not a probe file (they are at most PROBE_BYTES long), and hashing only a prefix of it
        # would call two different files the same.
        logger.info("shared storage probe: mismatch (the file is longer than {} bytes)", PROBE_BYTES)
        return "mismatch"
    verdict = "verified" if hashlib.sha256(content).hexdigest() == probe.sha256 else "mismatch"
    logger.info("shared storage probe: {}", verdict)
    return verdict
