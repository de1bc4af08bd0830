"""The s3 receiver uses rtcxfer's own receiving side: a download cut midway resumes from its
partial with a ranged read, and an object that cannot fit on this side's disk is refused.

Two real aiortc peers and a real S3-compatible server on 127.0.0.1; the store's failure is a
real exception out of s3fs's ranged read, where a dropped connection would surface.
"""

from __future__ import annotations

import asyncio
import shutil

import pytest
from moto_server import PREFIX, keys_under, make_contexts
from rtcxfer_s3 import S3NoSpaceError, S3UnreachableError
from rtcxfer_s3.errors import error_from_reason
from rtcxfer_s3.frames import S3Error, S3Object
from s3fs.core import S3File

from rtcxfer.testing.contract import contract_pair, make_file, run_async, sha256_of

MiB = 1024 * 1024


def names_in(directory) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_a_download_cut_by_a_failing_store_resumes_from_its_partial(host, moto, tmp_path, monkeypatch):
    size = 20 * MiB + 17
    client, worker = make_contexts(tmp_path, moto, worker={"part_size": 5 * MiB})
    source = make_file(tmp_path / "big.bin", size, seed=4)
    incoming = tmp_path / "worker-incoming"
    read_range = S3File._fetch_range
    fetched: list[int] = []

    def failing_read(self, start, end):
        if start > 0:  # the first range arrives, then the store goes away
            raise ConnectionError("connection reset by the store")
        return read_range(self, start, end)

    def counted_read(self, start, end):
        data = read_range(self, start, end)
        fetched.append(len(data))
        return data

    async def scenario():
        async with contract_pair(host, "s3", client, worker) as pair:
            assert await pair.client.negotiate()
            monkeypatch.setattr(S3File, "_fetch_range", failing_read)
            with pytest.raises(S3UnreachableError, match="unreachable: downloading .*: the store is unreachable"):
                await pair.client.send_file(source, "big.bin")
            [partial] = [path for path in incoming.iterdir() if path.name.startswith(".big.bin.")]
            held = partial.stat().st_size
            assert not (incoming / "big.bin").exists()
            # The same file again, in the same session: the same transfer id and key.
            monkeypatch.setattr(S3File, "_fetch_range", counted_read)
            delivery = await pair.client.send_file(source, "big.bin")
            while len(pair.worker.downloads) < 2:
                await asyncio.sleep(0.01)
            return held, delivery, pair.worker.downloads, pair.received["worker"]

    held, delivery, (first, second), received = run_async(scenario())
    assert 0 < held < size
    assert (first.offset, first.fetched, first.completed) == (0, held, False)
    assert second.transfer_id == first.transfer_id
    assert (second.offset, second.fetched, second.completed) == (held, size - held, True)
    # What the store served the second time: the rest of the object only.
    assert sum(fetched) == size - held < size
    assert delivery.sha256 == sha256_of(source) == sha256_of(incoming / "big.bin")
    assert [(file.name, file.sha256) for file in received] == [("big.bin", delivery.sha256)]
    assert names_in(incoming) == ["big.bin"]
    assert keys_under(moto) == []


def test_an_object_larger_than_the_free_space_is_refused_with_a_clear_error(host, moto, tmp_path):
    client, worker = make_contexts(tmp_path, moto)
    worker.max_file_bytes = 1 << 62
    incoming = tmp_path / "worker-incoming"
    incoming.mkdir()
    announced = shutil.disk_usage(incoming).free + 1024**3
    tid = "7" * 32
    key = f"{PREFIX}/{tid}/huge.bin"
    small = make_file(tmp_path / "small.bin", 1000)

    async def scenario():
        async with contract_pair(host, "s3", client, worker) as pair:
            assert await pair.client.negotiate()
            link = pair.peers.client.link
            # Refused before the object is even looked for: none was uploaded.
            await link.send(S3Object(transfer_id=tid, size=announced, sha256="0" * 64, key=key))
            reply = await link.wait_for(lambda frame: isinstance(frame, S3Error), timeout=20)
            # The session goes on by s3.
            await pair.client.send_file(small, "small.bin")
            return reply

    reply = run_async(scenario())
    assert reply.transfer_id == tid
    assert reply.reason == f"no-space: not enough free space on this side for 'huge.bin' ({announced} bytes)"
    assert isinstance(error_from_reason(reply.reason, key), S3NoSpaceError)
    assert names_in(incoming) == ["small.bin"]
