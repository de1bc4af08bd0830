"""The contract between rtcxfer and its transport plugins.

* :mod:`~rtcxfer.transport.base`: :class:`Transport`, the class every transport subclasses,
  and what it hands over (:class:`ReceivedFile`, :class:`Delivery`, :class:`TransportContext`);
* :mod:`~rtcxfer.transport.hookspecs`: the pluggy hook specifications (``hookimpl`` marks an
  implementation);
* :mod:`~rtcxfer.transport.host`: :class:`~rtcxfer.transport.host.PluginHost`, which finds the
  plugins and answers every question about them (it logs, so it is not imported here: the
  contract itself stays sans-IO).
"""

from rtcxfer.transport.base import Delivery, ReceivedFile, Transport, TransportContext
from rtcxfer.transport.hookspecs import hookimpl

__all__ = ["Delivery", "ReceivedFile", "Transport", "TransportContext", "hookimpl"]
