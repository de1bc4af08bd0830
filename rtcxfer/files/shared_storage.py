"""Finding the shared storage root on this machine, and proving that a peer sees the same one.

Two mounts with the same name are not proof of the same storage, so a session verifies it:
the client writes a probe file with random content under its root (:func:`write_probe`) and the
worker must read the same bytes under its own root (:func:`check_probe`; see the ``shared-fs``
transport, and ``rtcxfer doctor``, which runs both on one machine). A worker also tells its
room a fingerprint of its storage that never shows its path (:func:`shared_root_fingerprint`).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import TypeVar

import attrs

from rtcxfer.files import paths
from rtcxfer.log import logger
from rtcxfer.protocol.errors import PathError
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
    absolute: Path

    def remove(self) -> None:
        self.absolute.unlink(missing_ok=True)
        root = self.absolute.parents[len(PurePosixPath(self.relative_path).parts) - 1]
        remove_empty_directories(self.absolute.parent, root)


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
    """Write a fresh probe file with random content under ``shared_root``."""
    directory = shared_root / PROBE_DIR
    content = secrets.token_bytes(PROBE_BYTES)
    relative = PROBE_DIR / f"{secrets.token_hex(16)}.probe"
    absolute = shared_root / relative
    with make_then_create(directory, lambda: open(absolute, "xb")) as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    return Probe(relative.as_posix(), hashlib.sha256(content).hexdigest(), absolute)


#: The file under a shared root whose content identifies that storage wherever it is mounted.
ROOT_MARKER = ".rtcxfer/storage-id"


def shared_root_fingerprint(root: Path | None) -> str | None:
    """A stable id of the storage mounted at ``root``, the same on every machine that mounts it.

    It hashes the content of a marker file (:data:`ROOT_MARKER`, random, made by the first
    rtcxfer to look), not the path: two machines mounting the same export at different places
    match, two different storages that happen to share a mount point do not, and the absolute
    path is never revealed. None when there is no root, or no marker and no way to write one.
    """
    if root is None:
        return None
    marker = Path(root) / ROOT_MARKER
    try:
        content = _read_marker(marker)
        if content is None:
            marker.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            except FileExistsError:
                fd = None  # another machine or process made it first: theirs counts
            if fd is not None:
                with os.fdopen(fd, "w") as handle:
                    handle.write(secrets.token_hex(16))
            content = _read_marker(marker)
    except OSError:
        return None
    if not content:
        return None
    return hashlib.sha256(b"rtcxfer-shared-root\0" + content).hexdigest()[:32]


def _read_marker(marker: Path) -> bytes | None:
    try:
        fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
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
