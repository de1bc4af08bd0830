"""Plugin discovery and the one object the rest of rtcxfer uses to talk to plugins.

:class:`PluginHost` wraps a :class:`pluggy.PluginManager` (in the manner of tox 4's manager):
every hook call goes through a typed method here, so no other module touches pluggy.

Load order: built-in transports first, then the ``rtcxfer.transports`` entry point group.
Because pluggy asks the most recently registered plugin first, an installed plugin can take
over a frame type from a built-in.

Environment:

* ``RTCXFER_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry points (built-ins only).
* ``RTCXFER_BLOCK_PLUGINS=a,b``: never load the plugins named ``a`` and ``b`` (the entry
  point name for third-party plugins, the transport name for built-ins).

A plugin that fails to import or breaks the contract is reported with a warning and skipped;
it never takes the host down.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Iterable, Mapping
from importlib import metadata

import attrs
import pluggy

from rtcxfer import __version__
from rtcxfer.log import logger
from rtcxfer.protocol.errors import PluginError
from rtcxfer.protocol.frames import BUILTIN_FRAME_TYPES, Frame, FrameCatalogue
from rtcxfer.transport import hookspecs
from rtcxfer.transport.base import Transport

ENTRY_POINT_GROUP = "rtcxfer.transports"
DISABLE_AUTOLOAD_ENV = "RTCXFER_DISABLE_PLUGIN_AUTOLOAD"
BLOCK_ENV = "RTCXFER_BLOCK_PLUGINS"

#: Built-in transport plugins: plugin name -> module. Registered like third-party plugins.
BUILTIN_PLUGINS: Mapping[str, str] = {
    "shared-fs": "rtcxfer.transports.shared_fs",
    "direct": "rtcxfer.transports.direct",
    "rtc-chunked": "rtcxfer.transports.rtc_chunked",
}


class PluginWarning(UserWarning):
    """A plugin could not be loaded or broke the contract and was skipped."""


@attrs.frozen
class TransportInfo:
    """A transport and where it came from, as ``rtcxfer plugins`` shows it."""

    name: str
    transport: type[Transport]
    plugin: str
    distribution: str
    version: str

    @property
    def rank(self) -> int:
        return self.transport.rank


def _env_flag(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false", "no")


def _env_names(value: str | None) -> frozenset[str]:
    return frozenset(name.strip() for name in (value or "").split(",") if name.strip())


class PluginHost:
    """Discovers transport plugins and answers every question about them."""

    def __init__(
        self,
        *,
        autoload: bool | None = None,
        blocked: Iterable[str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        environ = os.environ if environ is None else environ
        self.autoload = not _env_flag(environ.get(DISABLE_AUTOLOAD_ENV)) if autoload is None else autoload
        self.blocked = _env_names(environ.get(BLOCK_ENV)) if blocked is None else frozenset(blocked)
        self._pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self._origins: dict[str, tuple[str, str]] = {}
        #: Plugins that were skipped, with the reason: name -> message.
        self.failures: dict[str, str] = {}
        for name in self.blocked:
            self._pm.set_blocked(name)
        self._load_builtins()
        if self.autoload:
            self._load_entry_points()
        self._transports = self._collect_transports()
        self.catalogue = self._collect_frame_types()

    # --- loading ----------------------------------------------------------------------

    def _load_builtins(self) -> None:
        for name, module_name in BUILTIN_PLUGINS.items():
            if name in self.blocked:
                continue
            self._register(
                name, lambda module_name=module_name: importlib.import_module(module_name), ("rtcxfer", __version__)
            )

    def _load_entry_points(self) -> None:
        for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if entry_point.name in self.blocked or self._pm.get_plugin(entry_point.name) is not None:
                continue
            dist = entry_point.dist
            origin = (dist.name, dist.version) if dist is not None else ("unknown", "unknown")
            self._register(entry_point.name, entry_point.load, origin)

    def _register(self, name: str, load, origin: tuple[str, str]) -> None:
        try:
            plugin = load()
            self._pm.register(plugin, name=name)
            self._pm.check_pending()
        except Exception as error:  # a broken plugin must never take the host down
            self._skip(name, f"failed to load: {type(error).__name__}: {error}")
            return
        self._origins[name] = origin
        logger.debug("loaded rtcxfer plugin {} from {} {}", name, *origin)

    def _skip(self, name: str, reason: str) -> None:
        plugin = self._pm.get_plugin(name)
        if plugin is not None:
            self._pm.unregister(plugin)
        self._origins.pop(name, None)
        self.failures[name] = reason
        message = f"rtcxfer plugin {name!r} skipped: {reason}"
        logger.warning(message)
        warnings.warn(message, PluginWarning, stacklevel=3)

    def _loaded(self) -> list[tuple[str, object]]:
        """Loaded plugins in registration order (built-ins first), as a snapshot."""
        return [(name, self._pm.get_plugin(name)) for name in list(self._origins)]

    def _collect_transports(self) -> dict[str, TransportInfo]:
        found: dict[str, TransportInfo] = {}
        # Registration order, so built-ins keep their names against later duplicates.
        for plugin_name, plugin in self._loaded():
            impl = getattr(plugin, "rtcxfer_register_transports", None)
            if impl is None:
                continue
            offered: list[type[Transport]] = []
            try:
                impl(register=offered.append)
                for transport in offered:
                    if not (isinstance(transport, type) and issubclass(transport, Transport) and transport.name):
                        raise PluginError(f"registered {transport!r}, which is not a named Transport subclass")
                    if transport.name in found:
                        raise PluginError(f"transport name {transport.name!r} is already taken")
            except Exception as error:  # a broken plugin must never take the host down
                self._skip(plugin_name, f"broke the contract: {type(error).__name__}: {error}")
                continue
            distribution, version = self._origins[plugin_name]
            for transport in offered:
                found[transport.name] = TransportInfo(transport.name, transport, plugin_name, distribution, version)
        return found

    def _collect_frame_types(self) -> FrameCatalogue:
        catalogue = FrameCatalogue(BUILTIN_FRAME_TYPES)
        for plugin_name, plugin in self._loaded():
            impl = getattr(plugin, "rtcxfer_frame_types", None)
            if impl is None:
                continue
            try:
                declared = list(impl() or ())
                trial = FrameCatalogue(list(catalogue))
                for frame_class in declared:
                    if not (isinstance(frame_class, type) and issubclass(frame_class, Frame)):
                        raise PluginError(f"{frame_class!r} is not a Frame class")
                    trial.register(frame_class)
            except Exception as error:  # a broken plugin must never take the host down
                self._skip(plugin_name, f"declared bad frame types: {type(error).__name__}: {error}")
                self._transports = {n: t for n, t in self._transports.items() if t.plugin != plugin_name}
                continue
            catalogue = trial
        return catalogue

    def register(self, plugin: object, name: str, *, distribution: str = "local", version: str = "") -> bool:
        """Register a plugin object directly (an application's own, or a test's).

        Returns whether it loaded; a broken plugin is skipped with a warning as usual.
        """
        if name in self.blocked:
            return False
        self._register(name, lambda: plugin, (distribution, version))
        self._transports = self._collect_transports()
        self.catalogue = self._collect_frame_types()
        return name in self._origins

    # --- questions --------------------------------------------------------------------

    def plugin_names(self) -> list[str]:
        """Names of the loaded plugins, built-ins first."""
        return list(self._origins)

    def transports(self) -> list[TransportInfo]:
        """Every loaded transport, highest rank first."""
        return sorted(self._transports.values(), key=lambda info: (-info.rank, info.name))

    def transport(self, name: str) -> TransportInfo:
        """The transport called ``name``; :class:`PluginError` says what is installed if absent."""
        try:
            return self._transports[name]
        except KeyError:
            installed = ", ".join(sorted(self._transports)) or "none"
            raise PluginError(f"no transport named {name!r} is installed (installed: {installed})") from None

    def fallback_transport(self, among: Iterable[str]) -> str | None:
        """The transport to fall back on, of those named in ``among`` (the ones usable in a
        session): the one declaring :attr:`~rtcxfer.transport.base.Transport.fallback` that
        was registered last, so an installed plugin takes the role over from a built-in; ``None``
        when none of them declares it."""
        usable = set(among)
        for name in reversed(list(self._transports)):
            if name in usable and self._transports[name].transport.fallback:
                return name
        return None

    def claim(self, frame: Frame) -> str | None:
        """The name of the transport that handles ``frame`` (firstresult hook), or ``None``."""
        try:
            name = self._pm.hook.rtcxfer_claim_frame(frame=frame)
        except Exception as error:  # a plugin's bug must not end the session
            logger.exception("a plugin failed while claiming a {} frame: {}", frame.TYPE, error)
            return None
        if name is not None and name not in self._transports:
            logger.warning("a plugin claimed {} for unknown transport {!r}", frame.TYPE, name)
            return None
        return name
