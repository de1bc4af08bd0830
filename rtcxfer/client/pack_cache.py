"""Packed directories kept between runs of ``rtcxfer submit DIR``.

``submit DIR`` sends a ZIP of the directory. Packed afresh on every run, that ZIP would be a
new file each time: ``direct`` keys an upload by the file's inode and modification time
(:func:`rtcxfer.transports.direct.transfer_id_of`), so an interrupted upload would never
resume over it, and a large directory would be compressed again for nothing. So the ZIP is
kept here, in a per-user cache (default ``$XDG_CACHE_HOME/rtcxfer/packs``, else
``~/.cache/rtcxfer/packs``), and the next run of the same, unchanged directory sends that very
file.

*Which pack.* An entry is a directory named after the *fingerprint* of the directory to pack:
a hash of its absolute path, the packer's :data:`~rtcxfer.client.packing.FORMAT_VERSION`, and each
member's name, size, inode, ``st_mtime_ns`` and ``st_ctime_ns``. Writing a file, replacing it,
``touch``, ``chmod``, adding or removing one all change it (the ctime cannot be set back by
hand), so a changed directory gets a new pack; a pack the same directory no longer matches is
removed when the new one is made. The stat fields cannot show a write made in the same
timestamp tick as the previous one, just after the packer read the file (git's "racy" entries):
a member changed less than :data:`RACY_SECONDS` before its pack was started is therefore
compared with the pack's CRC-32 when the pack is reused, and a mismatch makes the pack stale.

*Atomic.* A pack is written as a hidden temporary file in its entry, checked, fsynced and only
then renamed onto its final name: nothing half written ever carries that name. A directory
that changed while it was being packed is packed for this run only, not kept.

*Concurrent runs.* Each entry has two lock files (``flock``): ``use.lock``, held shared by
every run sending the pack and taken exclusively (without waiting) by the evictor, so a pack
in use is never removed; and ``build.lock``, which a run holds while it packs, so a second run
of the same directory waits for the first one's pack and sends it too, instead of packing
again. A lock is re-checked against its path once taken (an evictor may have removed the entry
meanwhile); locks held by a process that died are released by the kernel.

*Bounded.* After a pack is made and when a run ends, entries not in use go: those unused for
:data:`MAX_AGE_SECONDS`, stale ones, and, least recently used first, those beyond
:data:`MAX_BYTES` in all (or :data:`MAX_SHARE` of the filesystem, if less). The pack of a run
whose upload may not have finished is kept even if it alone is larger: it is what the next run
resumes; once its job succeeded, it goes if it does not fit.

*Private.* The cache holds job code and data: it is created ``0700``, and one that another
user owns, or that group or others may write, is refused (:class:`PackCacheError`): anyone
who could swap a pack there would choose what the worker runs.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import attrs

from rtcxfer.client import packing
from rtcxfer.files.private_dirs import PrivateDirectory, UnsafeDirectoryError, open_private_directory
from rtcxfer.log import logger
from rtcxfer.protocol.errors import RtcxferError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no cache, every run packs afresh
    fcntl = None  # type: ignore[assignment]

#: An entry unused for this long is removed (seconds).
MAX_AGE_SECONDS = 7 * 24 * 3600
#: Packs in all, at most (bytes), and at most :data:`MAX_SHARE` of their filesystem.
MAX_BYTES = 4 * 1024**3
MAX_SHARE = 0.1
#: A member changed this shortly before its pack was started is checked against the pack's
#: CRC-32 before the pack is reused: wider than any filesystem's timestamp granularity.
RACY_SECONDS = 2.0

USE_LOCK = "use.lock"
BUILD_LOCK = "build.lock"
RECORD = "pack.json"
#: Present in an entry whose pack no longer matches its directory: removed when no run uses it.
STALE_MARK = "stale"
TRASH_PREFIX = ".trash-"

_ENTRY_NAME = re.compile(r"[0-9a-f]{32}")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class PackCacheError(RtcxferError):
    """The pack cache cannot be used (its directory is unsafe, or reading or writing it failed)."""


@attrs.define
class Pack:
    """The package made of a directory for one run of ``submit``.

    ``reused``: the pack an earlier run made, sent again as is (same file, same inode).
    ``cached``: it lives in the cache; ``False`` for a pack made for this run only.
    The caller sets ``succeeded`` once the job succeeded: its pack then need not outlive the
    cache's budget.
    """

    path: Path
    reused: bool
    cached: bool
    succeeded: bool = False
    #: Where the pack is as a person finds it (``path`` may go through the cache's descriptor).
    location: Path | None = None

    @property
    def shown(self) -> Path:
        return self.location or self.path


def default_root(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_CACHE_HOME/rtcxfer/packs``, else ``~/.cache/rtcxfer/packs``."""
    cache_home = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache_home) / "rtcxfer" / "packs"


def fingerprint(source: Path, members: Iterable[packing.Member]) -> str:
    """The entry name of ``source`` (an absolute path) as it is now: see the module's text."""
    digest = hashlib.sha256(json.dumps(["rtcxfer-pack", packing.FORMAT_VERSION, str(source)]).encode())
    for name, _, info in members:
        record = [name, info.st_size, info.st_ino, info.st_mtime_ns, info.st_ctime_ns]
        digest.update(json.dumps(record).encode() + b"\n")
    return digest.hexdigest()[:32]


def pack_name(source: Path) -> str:
    """The package's file name: the directory's, so a re-run sends the same name."""
    return f"{source.name or 'package'}.zip"


@contextlib.contextmanager
def one_off(directory: Path, progress: packing.PackProgress | None = None) -> Iterator[Pack]:
    """A pack of ``directory`` for this run only, in a temporary directory removed after it;
    ``progress`` hears how the packing goes."""
    with tempfile.TemporaryDirectory(prefix="rtcxfer-pack-") as scratch:
        try:
            path = packing.pack_directory(
                directory, Path(scratch) / pack_name(directory.resolve()), progress=progress
            )
        except OSError as error:
            raise packing.PackageError(f"cannot pack {directory}: {error}") from None
        yield Pack(path, reused=False, cached=False)


class PackCache:
    """The packs under ``root`` (see the module's text); :meth:`open` makes one."""

    def __init__(
        self,
        root: Path,
        *,
        directory: PrivateDirectory | None = None,
        max_bytes: int | None = None,
        max_age: float = MAX_AGE_SECONDS,
    ) -> None:
        #: Where the cache is, as the user named it (for messages).
        self.root = root
        #: Where it is used from: the directory :meth:`open` checked, held open
        #: (:class:`~rtcxfer.files.private_dirs.PrivateDirectory`), or the name itself.
        self._directory = directory
        self._base = directory.via if directory is not None else root
        self.max_age = max_age
        if max_bytes is None:
            max_bytes = MAX_BYTES
            with contextlib.suppress(OSError):
                info = os.statvfs(self._base)
                max_bytes = min(max_bytes, int(info.f_blocks * info.f_frsize * MAX_SHARE))
        self.max_bytes = max_bytes

    @classmethod
    def open(cls, root: Path | None = None, **limits) -> PackCache:
        """The cache at ``root`` (default :func:`default_root`), created ``0700`` if missing.

        Raises :class:`PackCacheError` when it cannot be used safely: not a directory (or a
        link), owned by another user, or writable by group or others.
        """
        if fcntl is None:  # pragma: no cover
            raise PackCacheError("the pack cache needs POSIX file locks")
        root = Path(root or default_root()).expanduser().absolute()
        try:
            # Checked on what is open, and used through it after: no window in which its name can
            # be swapped for a link to someone else's directory.
            directory = open_private_directory(root, what="the pack cache")
        except UnsafeDirectoryError as error:
            raise PackCacheError(str(error)) from None
        return cls(root, directory=directory, **limits)

    # --- one run's pack -------------------------------------------------------------------

    @contextlib.contextmanager
    def pack(self, directory: Path, progress: packing.PackProgress | None = None) -> Iterator[Pack]:
        """The pack of ``directory`` for one run: the cached one if the directory is unchanged,
        else a new one (kept for the next run). It is not removed while the ``with`` lasts.
        ``progress`` hears how the packing goes, if there is any to do.

        Raises :class:`~rtcxfer.client.packing.PackageError` for a directory that is not a package,
        :class:`PackCacheError` when the cache cannot be read or written.
        """
        source = directory.resolve()
        members = packing.directory_members(source)
        key = fingerprint(source, members)
        entry = self._base / key
        name = pack_name(source)
        pack: Pack | None = None
        try:
            with contextlib.ExitStack() as held:
                try:
                    held.enter_context(self._use(entry))
                    pack = self._cached(entry, name, source, members, progress)
                    if pack is None:
                        with self._locked(entry / BUILD_LOCK, fcntl.LOCK_EX):
                            pack = self._cached(entry, name, source, members, progress) or self._build(
                                entry, name, source, key, progress
                            )
                except OSError as error:
                    raise PackCacheError(f"cannot pack {source} into the pack cache {self.root}: {error}") from None
                if not pack.cached:
                    held.callback(_remove, pack.path)
                pack.location = self.root / pack.path.relative_to(self._base)
                yield pack
        finally:
            # The pack of an upload that may be unfinished stays, whatever its size: the next run resumes it.
            self.trim(keep=(key,) if pack is not None and pack.cached and not pack.succeeded else ())

    def _cached(
        self, entry: Path, name: str, source: Path, members: list[packing.Member], progress=None
    ) -> Pack | None:
        """The entry's pack if it is there and still matches the directory, else ``None``; a
        pack that no longer matches is marked stale and this run packs for itself."""
        path = entry / name
        if not path.is_file():
            return None
        if (entry / STALE_MARK).exists() or not self._matches(entry, path, members):
            (entry / STALE_MARK).touch()
            logger.info("pack cache: {} no longer matches its directory; packing for this run only", path)
            return _for_this_run(self._temporary(entry, name, source, members, progress))
        return Pack(path, reused=True, cached=True)

    def _matches(self, entry: Path, path: Path, members: list[packing.Member]) -> bool:
        try:
            record = json.loads((entry / RECORD).read_text())
            packed_ns = int(record["packed_ns"])
            packing.check_package(path)
            racy_after = packed_ns - int(RACY_SECONDS * 1e9)
            racy = [member for member in members if member[2].st_ctime_ns >= racy_after]
            if not racy:
                return True
            with zipfile.ZipFile(path) as archive:
                return all(_same_content(member[1], archive.getinfo(member[0])) for member in racy)
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, packing.PackageError) as error:
            logger.info("pack cache: {} unusable: {}", path, error)
            return False

    def _build(self, entry: Path, name: str, source: Path, key: str, progress=None) -> Pack:
        """Pack ``source`` into ``entry`` (the caller holds the build lock); a directory that
        changed since it was fingerprinted is packed for this run only."""
        for leftover in [*entry.glob(".*.tmp"), entry / STALE_MARK]:  # of a run killed while packing
            _remove(leftover)
        packed_ns = time.time_ns()
        members = packing.directory_members(source)
        temporary = self._temporary(entry, name, source, members, progress)
        try:
            if not fingerprint(source, members) == key == fingerprint(source, packing.directory_members(source)):
                logger.info("pack cache: {} changed while it was packed; not kept", source)
                return _for_this_run(temporary)
            _write_atomically(entry / RECORD, json.dumps({"source": str(source), "packed_ns": packed_ns}).encode())
            os.rename(temporary, entry / name)
        except BaseException:
            _remove(temporary)
            raise
        logger.info("pack cache: packed {} into {}", source, entry / name)
        self.trim(keep=(key,), superseded=str(source))
        return Pack(entry / name, reused=False, cached=True)

    @staticmethod
    def _temporary(entry: Path, name: str, source: Path, members: list[packing.Member], progress=None) -> Path:
        """A complete, fsynced pack under a hidden temporary name in ``entry``."""
        temporary = entry / f".{name}.{secrets.token_hex(8)}.tmp"
        try:
            packing.pack_directory(source, temporary, members, progress)
            descriptor = os.open(temporary, os.O_RDONLY | _CLOEXEC)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        except BaseException:
            _remove(temporary)
            raise
        return temporary

    # --- locks ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _use(self, entry: Path) -> Iterator[None]:
        """Hold ``entry``'s use lock (shared), creating the entry if needed."""
        with self._locked(entry / USE_LOCK, fcntl.LOCK_SH) as descriptor:
            os.utime(descriptor)  # the entry's last use, for the eviction order
            yield

    @contextlib.contextmanager
    def _locked(self, path: Path, operation: int) -> Iterator[int]:
        """``flock(operation)`` on ``path``, re-taken until the path still names the locked
        file (an evictor may have renamed the entry away while we waited)."""
        while True:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            try:
                descriptor = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o600)
            except FileNotFoundError:
                continue  # the entry went between the mkdir and the open
            try:
                fcntl.flock(descriptor, operation)
                if _same_file(descriptor, path):
                    break
            except BaseException:
                os.close(descriptor)
                raise
            os.close(descriptor)
        try:
            yield descriptor
        finally:
            os.close(descriptor)

    # --- eviction -------------------------------------------------------------------------

    def trim(self, keep: Iterable[str] = (), superseded: str | None = None, now: float | None = None) -> int:
        """Remove the entries no run uses that are stale, unused for :attr:`max_age`, packs of
        ``superseded`` (a source directory that has a newer pack), or, least recently used
        first, beyond :attr:`max_bytes`; never those named in ``keep``. Returns how many went;
        problems are logged, never raised."""
        now = time.time() if now is None else now
        keep = set(keep)
        entries = []
        try:
            with os.scandir(self._base) as children:
                for child in children:
                    if child.name.startswith(TRASH_PREFIX):
                        shutil.rmtree(child.path, ignore_errors=True)  # of an evictor that died
                    elif _ENTRY_NAME.fullmatch(child.name) and child.is_dir(follow_symlinks=False):
                        entries.append(_describe(Path(child.path)))
        except OSError as error:
            logger.warning("pack cache: cannot list {}: {}", self.root, error)
            return 0
        removed, total = 0, 0
        for entry, last_used, size, source, stale in sorted(entries, key=lambda item: -item[1]):
            if entry.name not in keep:
                # No source: no pack was ever completed there (its run died, or its directory changed).
                expired = stale or source is None or now - last_used > self.max_age or total + size > self.max_bytes
                if (expired or (superseded is not None and source == superseded)) and self._evict(entry):
                    removed += 1
                    continue
            total += size
        return removed

    def _evict(self, entry: Path) -> bool:
        """Remove ``entry`` unless a run holds its use lock; ``True`` if it went."""
        lock = entry / USE_LOCK
        try:
            descriptor = os.open(lock, os.O_RDWR | _NOFOLLOW | _CLOEXEC)
        except FileNotFoundError:
            descriptor = None  # a run that made the directory takes the lock next: it retries
        except OSError as error:
            logger.warning("pack cache: cannot remove {}: {}", entry, error)
            return False
        try:
            if descriptor is not None:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False  # in use
                if not _same_file(descriptor, lock):
                    return False
            trash = self._base / f"{TRASH_PREFIX}{secrets.token_hex(8)}"
            try:
                os.rename(entry, trash)
            except OSError as error:
                if error.errno != errno.ENOENT:
                    logger.warning("pack cache: cannot remove {}: {}", entry, error)
                return False
        finally:
            if descriptor is not None:
                os.close(descriptor)
        shutil.rmtree(trash, ignore_errors=True)
        logger.info("pack cache: removed {}", entry.name)
        return True


def _for_this_run(temporary: Path) -> Pack:
    """A pack for one run only, renamed so that the next builder, which removes the ``.tmp``
    files of packers that died, leaves it alone; the run removes it, or the entry's eviction."""
    path = temporary.with_suffix(".run")
    try:
        os.rename(temporary, path)
    except BaseException:
        _remove(temporary)
        raise
    return Pack(path, reused=False, cached=False)


def _describe(entry: Path) -> tuple[Path, float, int, str | None, bool]:
    """(entry, last use, bytes, source directory, stale) of one entry."""
    size, last_used, source = 0, 0.0, None
    with contextlib.suppress(OSError):
        last_used = os.stat(entry).st_mtime
        last_used = os.stat(entry / USE_LOCK).st_mtime
    with contextlib.suppress(OSError):
        with os.scandir(entry) as children:
            size = sum(child.stat(follow_symlinks=False).st_size for child in children)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        source = str(json.loads((entry / RECORD).read_text())["source"])
    return entry, last_used, size, source, (entry / STALE_MARK).exists()


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(descriptor)
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def _same_content(path: Path, info: zipfile.ZipInfo) -> bool:
    """Whether the file at ``path`` has the size and CRC-32 of the ZIP member ``info``."""
    crc, size = 0, 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            crc = zlib.crc32(block, crc)
            size += len(block)
    return (size, crc) == (info.file_size, info.CRC)


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
