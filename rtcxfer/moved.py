"""Old module paths keep working: ``import rtcxfer.frames`` still gives the frames.

rtcxfer's modules were once side by side at the top of the package; they now live in the
layer each belongs to (``rtcxfer.protocol.frames``, ``rtcxfer.net.signaling``...). Code
written against the old paths goes on working: importing one gives a stand-in module whose
every attribute is looked up in the module (or modules, for one that was split) where the name
lives now, and warns once with a :class:`DeprecationWarning` that names the new path.

The stand-in only reads: assigning to one of its attributes (``monkeypatch.setattr``) does not
reach the real module, so tests and patches must use the new paths.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Sequence

#: Old module path -> the module(s) that hold its names now, searched in order.
MOVED: dict[str, tuple[str, ...]] = {
    "rtcxfer.advice": ("rtcxfer.cli.messages",),
    "rtcxfer.auth": ("rtcxfer.protocol.auth",),
    "rtcxfer.cli_room": ("rtcxfer.cli.workers", "rtcxfer.cli.worker", "rtcxfer.cli.submit", "rtcxfer.cli.tables"),
    "rtcxfer.config": ("rtcxfer.cli.config",),
    "rtcxfer.demo": ("rtcxfer.cli.demo",),
    "rtcxfer.engine": ("rtcxfer.protocol.engine",),
    "rtcxfer.errors": ("rtcxfer.protocol.errors",),
    "rtcxfer.filesystem": ("rtcxfer.files.filesystem",),
    "rtcxfer.frames": ("rtcxfer.protocol.frames",),
    "rtcxfer.hookspecs": ("rtcxfer.transport.hookspecs",),
    "rtcxfer.jobrunner": ("rtcxfer.worker.jobrunner",),
    "rtcxfer.jobs": ("rtcxfer.worker.jobs", "rtcxfer.protocol.manifest"),
    "rtcxfer.legacy": ("rtcxfer.protocol.legacy",),
    "rtcxfer.legacy.protocol": ("rtcxfer.protocol.legacy",),
    "rtcxfer.legacy.session": ("rtcxfer.worker.legacy_session",),
    "rtcxfer.limits": ("rtcxfer.worker.limits", "rtcxfer.net.rate_limits"),
    "rtcxfer.link": ("rtcxfer.net.link",),
    "rtcxfer.pack_cache": ("rtcxfer.client.pack_cache",),
    "rtcxfer.packing": ("rtcxfer.client.packing",),
    "rtcxfer.plugins": ("rtcxfer.transport.host",),
    "rtcxfer.progress": ("rtcxfer.cli.progress",),
    "rtcxfer.resume": ("rtcxfer.files.kept_partials",),
    "rtcxfer.room": ("rtcxfer.client.room",),
    "rtcxfer.rtc": ("rtcxfer.net.peer",),
    "rtcxfer.safezip": ("rtcxfer.files.safezip",),
    "rtcxfer.sample": ("rtcxfer.client.sample",),
    "rtcxfer.sctp_packet_size": ("rtcxfer.net.aiortc_internals",),
    "rtcxfer.security": ("rtcxfer.files.paths",),
    "rtcxfer.shared_storage": ("rtcxfer.files.shared_storage",),
    "rtcxfer.signaling": (
        "rtcxfer.net.signaling.server",
        "rtcxfer.net.signaling.client",
        "rtcxfer.net.signaling.messages",
    ),
    "rtcxfer.transports.partial": ("rtcxfer.files.receiving",),
    "rtcxfer.transports.write_behind": ("rtcxfer.files.write_behind",),
    "rtcxfer.worker_choice": ("rtcxfer.client.worker_choice",),
    "rtcxfer.worker_description": (
        "rtcxfer.protocol.worker_description",
        "rtcxfer.worker.description",
        "rtcxfer.files.shared_storage",
    ),
    "rtcxfer.worker_slots": ("rtcxfer.worker.slots",),
    "rtcxfer.testing.session_pair": ("rtcxfer.testing.engine_pair",),
}
#: Old paths that were packages: their stand-ins can have submodules.
PACKAGES = frozenset({"rtcxfer.legacy"})


class MovedModule(types.ModuleType):
    """The stand-in for an old module path: reads every name from where it lives now."""

    def __init__(self, old: str, new: Sequence[str]) -> None:
        super().__init__(old, f"Moved to {', '.join(new)}.")
        self.__moved_to__ = tuple(new)

    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        for target in self.__moved_to__:
            module = importlib.import_module(target)
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {self.__name__!r} (now {', '.join(self.__moved_to__)}) has no attribute {name!r}")

    def __dir__(self) -> list[str]:
        names: set[str] = set()
        for target in self.__moved_to__:
            names.update(dir(importlib.import_module(target)))
        return sorted(names)


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old paths of :data:`MOVED` (and only those) and loads their stand-ins."""

    def find_spec(self, fullname: str, path: object = None, target: object = None):
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=fullname in PACKAGES)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} has moved to {' and '.join(new)}; import it from there",
            DeprecationWarning,
            stacklevel=2,
        )
        return MovedModule(spec.name, new)

    def exec_module(self, module: types.ModuleType) -> None:
        if module.__name__ in PACKAGES:
            module.__path__ = []


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
