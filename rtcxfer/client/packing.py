"""What ``rtcxfer submit`` does with its argument before anything crosses the network.

* :func:`check_package` reads a package's manifest on the client, so a file that is not a job
  package (random bytes, a truncated ZIP, a text file, a ZIP without ``rtcxfer.json``) is
  refused at once with the reason, instead of after a full upload by the worker.
* :func:`pack_directory` turns a directory that holds ``rtcxfer.json`` into a package. The
  ZIP is deterministic (sorted members, fixed timestamps and modes): the same directory gives
  the same bytes, hence the same SHA-256, so a re-run resumes the interrupted upload.
"""

from __future__ import annotations

import json
import os
import stat
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

from rtcxfer.protocol.errors import JobError
from rtcxfer.protocol.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest, ManifestError

#: The timestamp every member of a packed directory carries (the ZIP format's earliest).
FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)


class PackageError(JobError):
    """The file or directory given to ``submit`` is not a usable job package."""


def check_package(path: Path) -> Manifest:
    """The manifest of the package at ``path``, or :class:`PackageError` saying what is wrong
    and what to do about it. Reads only the ZIP's directory and its manifest."""
    hint = f"a job package is a ZIP with {MANIFEST_NAME} at its root (see README, Job packages)"
    if not zipfile.is_zipfile(path):
        raise PackageError(f"{path} is not a ZIP file (truncated, or not a package at all); {hint}")
    try:
        with zipfile.ZipFile(path) as archive:
            try:
                info = archive.getinfo(MANIFEST_NAME)
            except KeyError:
                raise PackageError(f"{path} has no {MANIFEST_NAME} at its root; {hint}") from None
            if info.file_size > MAX_MANIFEST_BYTES:
                raise PackageError(f"{path}: {MANIFEST_NAME} is larger than {MAX_MANIFEST_BYTES} bytes")
            raw = archive.read(info)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError, OSError) as error:
        raise PackageError(f"{path} cannot be read as a ZIP ({error}); {hint}") from None
    try:
        return Manifest.from_dict(json.loads(raw))
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise PackageError(f"{path}: {MANIFEST_NAME} is not valid JSON: {error}") from None
    except ManifestError as error:
        raise PackageError(manifest_problem(f"{path}: {MANIFEST_NAME}", error)) from None


def manifest_problem(manifest: str, error: ManifestError) -> str:
    """``error`` about the manifest called ``manifest`` (``DIR/rtcxfer.json``, ``pkg.zip:
    rtcxfer.json``), naming it once: ``DIR/rtcxfer.json has unknown keys: ...``."""
    message = str(error)
    if message.startswith(f"{MANIFEST_NAME} "):
        return f"{manifest}{message[len(MANIFEST_NAME):]}"
    return f"{manifest}: {message}"


#: The version of what :func:`pack_directory` writes: a change to the ZIP's layout (member
#: order, timestamps, modes, compression) must change it, so packs kept by
#: :mod:`rtcxfer.client.pack_cache` under the old layout are not taken for the new one.
FORMAT_VERSION = 2

#: A file whose first :data:`COMPRESSION_SAMPLE` bytes deflate (at level 1) to more than this
#: share of themselves is stored, not deflated: data compressed already (images, video, model
#: weights, archives) gains nothing from deflate and costs its CPU on the client, and a stored
#: member is the one a worker extracts as it arrives without writing it twice.
STORE_ABOVE_RATIO = 0.9
COMPRESSION_SAMPLE = 1 << 20

#: One file of a directory to pack: its name in the ZIP, its path, its ``lstat``.
Member = tuple[str, Path, os.stat_result]
#: Told while a directory is packed: bytes of its files read so far, and in all.
PackProgress = Callable[[int, int], None]


def check_directory_manifest(directory: Path) -> Manifest:
    """The manifest of the directory ``directory``, or :class:`PackageError` naming the
    directory's own ``rtcxfer.json`` (the file the user edits, not the pack made of it)."""
    path = directory / MANIFEST_NAME
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_MANIFEST_BYTES + 1)
    except OSError as error:
        raise PackageError(f"cannot read {path}: {error.strerror or error}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise PackageError(f"{path} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        return Manifest.from_dict(json.loads(raw))
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise PackageError(f"{path} is not valid JSON: {error}") from None
    except ManifestError as error:
        raise PackageError(manifest_problem(str(path), error)) from None


def directory_members(directory: Path) -> list[Member]:
    """The files :func:`pack_directory` puts in the package of ``directory``, sorted by name.

    Links and other special files are refused rather than followed: what the worker runs is
    what the directory holds, nothing it points to.
    """
    if not (directory / MANIFEST_NAME).is_file():
        raise PackageError(
            f"{directory} is a directory without {MANIFEST_NAME}; put one there "
            f'(e.g. {{"command": ["python", "main.py"]}}) to send it as a job'
        )
    check_directory_manifest(directory)
    members: list[Member] = []
    try:
        # onerror: a subdirectory that cannot be read is an error, not a package without it.
        for parent, subdirs, names in os.walk(directory, onerror=_raise, followlinks=False):
            subdirs.sort()
            for name in [*subdirs, *names]:
                path = Path(parent) / name
                info = path.lstat()
                if stat.S_ISLNK(info.st_mode) or not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
                    raise PackageError(f"{path} is a link or a special file; a package holds regular files only")
                if stat.S_ISREG(info.st_mode):
                    members.append((path.relative_to(directory).as_posix(), path, info))
    except OSError as error:
        raise PackageError(f"cannot read {error.filename or directory}: {error.strerror or error}") from None
    return sorted(members, key=lambda member: member[0])


def _raise(error: OSError) -> None:
    raise error


def compression_for(sample: bytes) -> int:
    """``zipfile.ZIP_STORED`` for a file that begins with ``sample`` when that does not
    compress (see :data:`STORE_ABOVE_RATIO`; an empty or a tiny file does not either), else
    ``zipfile.ZIP_DEFLATED``."""
    if not sample or len(zlib.compress(sample, 1)) > STORE_ABOVE_RATIO * len(sample):
        return zipfile.ZIP_STORED
    return zipfile.ZIP_DEFLATED


def pack_directory(
    directory: Path, destination: Path, members: list[Member] | None = None, progress: PackProgress | None = None
) -> Path:
    """Write the files under ``directory`` (its :func:`directory_members`, unless the caller
    listed them already) into the ZIP ``destination``, deterministically; ``progress`` hears
    the bytes read so far after every block, and once at the end."""
    if members is None:
        members = directory_members(directory)
    total = sum(info.st_size for _, _, info in members)
    done = 0
    if progress is not None:
        progress(done, total)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(destination, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, path, _ in members:
            info = zipfile.ZipInfo(name, FIXED_DATE_TIME)
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            # O_NOFOLLOW: a file swapped for a link since it was listed is refused, not followed.
            with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)), "rb") as source:
                info.compress_type = compression_for(source.read(COMPRESSION_SAMPLE))
                source.seek(0)
                with archive.open(info, "w", force_zip64=os.fstat(source.fileno()).st_size >= 1 << 31) as target:
                    while block := source.read(1 << 20):
                        target.write(block)
                        done += len(block)
                        if progress is not None:
                            progress(min(done, total), total)
    if progress is not None and done < total:  # a member shrank since it was listed
        progress(total, total)
    check_package(destination)
    return destination
