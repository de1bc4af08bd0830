"""Directories a process keeps for itself: a worker's work directory and its kept partial
uploads, a client's pack cache.

Such a directory may lie where others can write (a path given on the command line, under a
shared ``/scratch``): whoever may write its parent could have made it first, or make it a link
to a directory of theirs later, and read what the worker keeps there or plant what it takes
back. So a directory is used only when it is a real directory (not a link), owned by this
process's user and not writable by group or others, checked on the directory itself once open;
and from then on it is used through that open descriptor (``/proc/self/fd/N`` on Linux,
:attr:`PrivateDirectory.via`), so its name swapped afterwards changes nothing.
"""

from __future__ import annotations

import errno
import os
import stat
import weakref
from pathlib import Path

from rtcxfer.protocol.errors import RtcxferError

_OPEN_FLAGS = (
    os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
)


class UnsafeDirectoryError(RtcxferError):
    """A directory this process would keep for itself is not one it can trust (the message says
    why and what to do)."""


class PrivateDirectory:
    """A checked directory, held open. :attr:`path` is its name (for messages, and for other
    processes such as a job, which cannot use this process's descriptors); :attr:`via` reaches
    the very directory that was checked."""

    def __init__(self, path: Path, descriptor: int) -> None:
        self.path = path
        self.descriptor = descriptor
        self._finalizer = weakref.finalize(self, os.close, descriptor)
        by_descriptor = Path(f"/proc/self/fd/{descriptor}")
        self.via = by_descriptor if by_descriptor.is_dir() else path
        #: Where the checked directory is now, with no link on the way: the name to give other
        #: processes (a job), which cannot use :attr:`via`.
        self.real = Path(os.readlink(by_descriptor)) if self.via is by_descriptor else path.resolve()

    def close(self) -> None:
        self._finalizer()

    def __repr__(self) -> str:
        return f"<PrivateDirectory {self.path}>"


def open_private_directory(path: str | os.PathLike[str], *, what: str, create: bool = True) -> PrivateDirectory:
    """``path`` checked and held open; made ``0700`` (with its parents) when missing and ``create``.

    Raises :class:`UnsafeDirectoryError` when it is a link or not a directory, belongs to another
    user, or may be written by group or others; ``what`` names it in the message (``"the work
    directory"``)."""
    path = Path(path)
    if create:
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except FileExistsError:
            pass  # a file or a link of that name: refused below
        except OSError as error:
            raise UnsafeDirectoryError(f"cannot create {what} {path}: {error.strerror or error}") from None
    try:
        descriptor = os.open(path, _OPEN_FLAGS)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeDirectoryError(f"{what} {path} is not a directory (or is a link)") from None
        raise UnsafeDirectoryError(f"cannot open {what} {path}: {error.strerror or error}") from None
    try:
        info = os.fstat(descriptor)
        if info.st_uid != os.geteuid():
            raise UnsafeDirectoryError(f"{what} {path} belongs to another user: give one of your own")
        if info.st_mode & 0o022:
            raise UnsafeDirectoryError(
                f"{what} {path} may be written by other users (mode {stat.S_IMODE(info.st_mode):o}); chmod 700 it"
            )
    except BaseException:
        os.close(descriptor)
        raise
    return PrivateDirectory(path, descriptor)
