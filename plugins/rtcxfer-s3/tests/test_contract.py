"""The transport contract suite from rtcxfer, run against the s3 transport and a real server."""

from __future__ import annotations

import pytest
from moto_server import BUCKET, PREFIX, make_contexts
from rtcxfer_s3.frames import S3Object

from rtcxfer.testing.contract import HOSTILE_NAMES, TransportContract


class TestS3Contract(TransportContract):
    @pytest.fixture
    def transport_name(self) -> str:
        return "s3"

    @pytest.fixture
    def make_contexts(self, moto):
        return lambda tmp_path: make_contexts(tmp_path, moto)

    @pytest.fixture
    def hostile_names(self):
        return (*HOSTILE_NAMES, "a::b", "%2e%2e/escape.bin", "x?versionId=1")

    @pytest.fixture
    def hostile_frames(self):
        def frames(transfer_id: str):
            keys = (
                f"{PREFIX}/{transfer_id}/../../escape.bin",
                f"{PREFIX}/../{transfer_id}/escape.bin",
                f"other/{transfer_id}/escape.bin",
                f"{PREFIX}-sibling/{transfer_id}/escape.bin",
                f"{PREFIX}/{transfer_id}//etc/passwd",
                f"{PREFIX}/{transfer_id}/s3://{BUCKET}/x",
                f"{PREFIX}/{'0' * 32}/wrong-transfer-id.bin",
                f"{PREFIX}/{transfer_id}",
            )
            return [S3Object(transfer_id=transfer_id, size=1, sha256="0" * 64, key=key) for key in keys]

        return frames
