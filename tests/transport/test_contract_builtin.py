"""The transport contract suite (rtcxfer.testing.contract) run against the built-in transports.

Third-party transports run the very same suite; see plugins/rtcxfer-s3/tests/test_contract.py.
"""

from __future__ import annotations

import pytest

from rtcxfer.protocol.frames import FileMeta
from rtcxfer.testing.contract import TransportContract
from rtcxfer.transport.host import PluginHost


class TestRtcChunkedContract(TransportContract):
    @pytest.fixture
    def transport_name(self) -> str:
        return "rtc-chunked"

    @pytest.fixture
    def host(self) -> PluginHost:
        return PluginHost(autoload=False)

    @pytest.fixture
    def hostile_frames(self):
        def frames(transfer_id: str):
            names = ("../escape.bin", "a/../../escape.bin", "/etc/passwd", "s3://bucket/x", "a\\..\\b")
            return [
                FileMeta(transfer_id=transfer_id, name=name, size=1, sha256="0" * 64, chunk_size=65509)
                for name in names
            ]

        return frames


class TestDirectContract(TransportContract):
    @pytest.fixture
    def transport_name(self) -> str:
        return "direct"

    @pytest.fixture
    def host(self) -> PluginHost:
        return PluginHost(autoload=False)
