"""What a transport gets from its context (``rtcxfer.transport.base.TransportContext``)."""

from __future__ import annotations

from rtcxfer.transport.base import TransportContext


def test_a_transport_gets_progress_from_its_context_without_being_known_by_name(tmp_path):
    calls = []
    context = TransportContext(role="client", incoming_dir=tmp_path, progress=lambda *call: calls.append(call))
    report = context.progress_reporter("my-own-transport")
    report("file.bin", 5, 10)
    assert calls == [("my-own-transport", "file.bin", 5, 10)]
    own = []
    context.options["my-own-transport"] = {"progress": lambda *call: own.append(call)}
    context.progress_reporter("my-own-transport")("file.bin", 10, 10)
    assert own == [("file.bin", 10, 10)] and len(calls) == 1
