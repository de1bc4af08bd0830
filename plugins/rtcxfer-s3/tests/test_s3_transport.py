"""The s3 transport between two real aiortc peers and a real S3-compatible server."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
from moto_server import BUCKET, PREFIX, keys_under, make_contexts
from rtcxfer_s3 import S3NotAgreedError, S3Transport
from rtcxfer_s3.frames import S3Reach
from s3fs.core import S3File

from rtcxfer.files.receiving import is_receiving_into
from rtcxfer.protocol.errors import ConnectionClosedError
from rtcxfer.testing.contract import contract_pair, make_file, run_async, sha256_of

MiB = 1024 * 1024


def record_wire(pair) -> list[str]:
    """Every control frame either side sends from now on, as wire text."""
    sent: list[str] = []
    for side in pair.peers.sides:
        channel = side.link.channel
        original = channel.send_text

        async def send_text(text, original=original):
            sent.append(text)
            await original(text)

        channel.send_text = send_text
    return sent


def test_auto_selection_ranks_s3_between_shared_fs_and_rtc_chunked(host):
    names = [info.name for info in host.transports()]
    assert names.index("shared-fs") < names.index("s3") < names.index("rtc-chunked")
    info = host.transport("s3")
    assert (info.distribution, info.version, info.rank) == ("rtcxfer-s3", "0.1.0", 50)


def test_multipart_round_trip_both_ways_with_progress_and_cleanup(host, moto, tmp_path):
    progress: list[tuple[str, int, int]] = []
    part = 5 * MiB
    client, worker = make_contexts(
        tmp_path, moto, client={"part_size": part, "progress": lambda *call: progress.append(call)}
    )
    source = make_file(tmp_path / "input.bin", 12 * MiB + 3, seed=1)
    result = make_file(tmp_path / "result.bin", 6 * MiB, seed=2)

    async def scenario():
        async with contract_pair(host, "s3", client, worker) as pair:
            wire = record_wire(pair)
            assert await pair.client.negotiate()
            assert pair.worker.agreed is True
            sent = await pair.client.send_file(source, "jobs/1/input.bin")
            back = await pair.worker.send_file(result, "results/out.bin")
            return pair.received, sent, back, wire

    received, sent, back, wire = run_async(scenario())
    assert sent.transport == "s3" and sent.sha256 == sha256_of(source)
    assert sent.reference.startswith(f"{PREFIX}/") and sent.reference.endswith("/jobs/1/input.bin")
    assert received["worker"][0].path == tmp_path / "worker-incoming" / "jobs/1/input.bin"
    assert sha256_of(received["worker"][0].path) == sha256_of(source)
    assert sha256_of(received["client"][0].path) == sha256_of(result) == back.sha256
    # Progress went up part by part to the whole size, sending and (the results) receiving.
    upload = [call for call in progress if call[0] == "jobs/1/input.bin"]
    download = [call for call in progress if call[0] == "results/out.bin"]
    assert upload[-1] == ("jobs/1/input.bin", source.stat().st_size, source.stat().st_size)
    assert download[0] == ("results/out.bin", 0, result.stat().st_size)
    assert download[-1] == ("results/out.bin", result.stat().st_size, result.stat().st_size)
    for calls in (upload, download):
        assert [done for _, done, _ in calls] == sorted(done for _, done, _ in calls)
    # Verified objects were cleaned up; no partial files were left behind.
    assert keys_under(moto) == []
    assert not [p for p in tmp_path.rglob("*.part")]
    # Only names crossed the channel: no credentials, no endpoint.
    text = "\n".join(wire)
    assert wire and moto.secret not in text and moto.key not in text and moto.url not in text
    assert any(frame.startswith("S3_OBJECT::") for frame in wire)


def test_objects_are_kept_without_cleanup(host, moto, tmp_path):
    client, worker = make_contexts(tmp_path, moto, client={"cleanup": False})
    source = make_file(tmp_path / "keep.bin", 1000)

    async def scenario():
        async with contract_pair(host, "s3", client, worker) as pair:
            return await pair.client.send_file(source, "keep.bin")

    delivery = run_async(scenario())
    assert delivery.reference in keys_under(moto)
    moto.client().delete_object(Bucket=BUCKET, Key=delivery.reference)


def test_send_file_negotiates_on_first_use_from_either_side(host, moto, tmp_path):
    client, worker = make_contexts(tmp_path, moto)
    source = make_file(tmp_path / "first.bin", 10)

    async def scenario():
        async with contract_pair(host, "s3", client, worker) as pair:
            # The worker asks first this time; both sides learn the answer.
            await pair.worker.send_file(source, "first.bin")
            return pair.client.agreed, pair.worker.agreed

    assert run_async(scenario()) == (True, True)


@pytest.mark.parametrize("worker_url", [f"s3://{BUCKET}/elsewhere", None])
def test_different_prefixes_or_an_unconfigured_peer_mean_no_s3(host, moto, tmp_path, worker_url):
    source = make_file(tmp_path / "x.bin", 10)
    client, worker = make_contexts(tmp_path, moto, worker={"url": worker_url})
    if worker_url is None:
        worker.options["s3"].pop("url")
        assert not S3Transport.usable(worker)

    async def scenario():
        async with contract_pair(host, "s3", client, worker, also=["rtc-chunked"]) as pair:
            assert not await pair.client.negotiate()
            with pytest.raises(S3NotAgreedError, match="no reachable bucket"):
                await pair.client.send_file(source, "x.bin")
            # The session goes on with another transport.
            await pair.attached["client"]["rtc-chunked"].send_file(source, "x.bin")

    run_async(scenario())
    assert (tmp_path / "worker-incoming" / "x.bin").read_bytes() == source.read_bytes()


def test_an_invalid_location_from_the_peer_is_answered_not_fatal(host, moto, tmp_path):
    client, worker = make_contexts(tmp_path, moto)

    async def scenario():
        async with contract_pair(host, "s3", client, worker) as pair:
            link = pair.peers.client.link
            await link.send(S3Reach(url="s3://../etc"))
            reply = await link.wait_for(lambda frame: frame.TYPE == "S3_REACH_RESULT", timeout=20)
            assert reply.verdict == "invalid"
            assert await pair.client.negotiate()

    run_async(scenario())


def test_environment_variables_configure_both_sides(host, moto, tmp_path, monkeypatch):
    monkeypatch.setenv("RTCXFER_S3_URL", f"s3://{BUCKET}/{PREFIX}/env")
    monkeypatch.setenv("RTCXFER_S3_ENDPOINT_URL", moto.url)
    from rtcxfer.transport.base import TransportContext

    client = TransportContext("client", tmp_path / "c")
    worker = TransportContext("worker", tmp_path / "w")
    source = make_file(tmp_path / "env.bin", 2048)

    async def scenario():
        async with contract_pair(host, "s3", client, worker) as pair:
            return await pair.client.send_file(source, "env.bin")

    delivery = run_async(scenario())
    assert delivery.reference.startswith(f"{PREFIX}/env/")
    assert (tmp_path / "w" / "env.bin").read_bytes() == source.read_bytes()
    assert os.environ["RTCXFER_S3_URL"].endswith("/env")


def test_a_session_closed_mid_download_keeps_its_partial_and_the_next_session_resumes_it(
    host, moto, tmp_path, monkeypatch
):
    size = 24 * MiB
    client, worker = make_contexts(tmp_path, moto, worker={"part_size": 5 * MiB})
    source = make_file(tmp_path / "big.bin", size, seed=9)
    incoming = tmp_path / "worker-incoming"
    # The store holds every read after the first range until the session is gone, so the
    # close lands mid-download whatever the machine's speed.
    read_range = S3File._fetch_range
    holding, release = threading.Event(), threading.Event()
    fetched: list[int] = []

    def held_read(self, start, end):
        if start > 0:
            holding.set()
            release.wait(30)
        return read_range(self, start, end)

    def counted_read(self, start, end):
        data = read_range(self, start, end)
        fetched.append(len(data))
        return data

    async def interrupted():
        async with contract_pair(host, "s3", client, worker) as pair:
            assert await pair.client.negotiate()
            sending = asyncio.ensure_future(pair.client.send_file(source, "big.bin"))
            assert await asyncio.to_thread(holding.wait, 30), "the download never started"
            await pair.peers.worker.drop()
            with pytest.raises(ConnectionClosedError):
                await asyncio.wait_for(sending, 30)
            release.set()
            # The download thread's next write fails; it lets go of the partial and keeps it.
            for _ in range(500):
                if not is_receiving_into(incoming):
                    break
                await asyncio.sleep(0.01)
            assert not is_receiving_into(incoming)

    async def resumed():
        async with contract_pair(host, "s3", client, worker) as pair:
            delivery = await pair.client.send_file(source, "big.bin")
            while not pair.worker.downloads:
                await asyncio.sleep(0.01)
            return delivery, pair.worker.downloads[-1], pair.received["worker"]

    monkeypatch.setattr(S3File, "_fetch_range", held_read)
    try:
        run_async(interrupted())
    finally:
        release.set()
    [partial] = [path for path in incoming.iterdir() if path.name.startswith(".big.bin.")]
    held = partial.stat().st_size
    assert partial.name.endswith(".part") and 0 < held < size
    assert not (incoming / "big.bin").exists()
    # The sender cleaned up the object even though the transfer never completed.
    assert keys_under(moto) == []

    monkeypatch.setattr(S3File, "_fetch_range", counted_read)
    delivery, report, received = run_async(resumed())
    assert (report.offset, report.fetched, report.completed) == (held, size - held, True)
    assert sum(fetched) == size - held < size
    assert delivery.sha256 == sha256_of(source) == sha256_of(incoming / "big.bin") == received[0].sha256
    assert sorted(path.name for path in incoming.iterdir()) == ["big.bin"]
    assert keys_under(moto) == []
