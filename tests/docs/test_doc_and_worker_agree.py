"""``docs/protocol.md`` and the worker agree, by test: each test drives a real worker (over real
aiortc peers on loopback, on real files) with the frames as the document gives them, and checks
the worker's replies against the document's own text (issue 24, points 12 to 15).

Where a test needs a text the document promises (a reason, a sequence of frames), it reads it
from the document, so changing either side alone fails here."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import zipfile
from pathlib import Path

import pytest

from rtcxfer.client.sample import build_sample_package, sample_text
from rtcxfer.net import aiortc_internals
from rtcxfer.net.peer import PeerConnection, PeerOptions
from rtcxfer.net.signaling import Relay, SignalingClient, SignalingServer
from rtcxfer.protocol import texts
from rtcxfer.protocol.frames import CHUNK_HEADER_SIZE, pack_chunk_header, unpack_chunk
from rtcxfer.testing import run_async
from rtcxfer.testing.contract import contract_pair, make_file, sha256_of
from rtcxfer.transport.base import TransportContext
from rtcxfer.transport.host import PluginHost
from rtcxfer.transports import direct
from tests.docs.protocol_doc import (
    BINARY_LINE,
    doc_text,
    exchanges,
    first_code,
    flat,
    reason_pattern,
    section,
    table_rows,
)
from tests.support.worker_harness import WorkerPeer, make_worker, start_serving, stop_serving, worker_session

WAIT = 30.0
#: Frames whose number and order depend on timing (rate-limited output, coalesced progress).
TIMING = ("JOB_LOG::", "JOB_PROGRESS::")
#: How the document's example shows a job id the worker chose (9.4).
IMPLICIT_ID = re.compile(r"job-[0-9a-f]{8}")


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    root = tmp_path / "shared"
    (root / "jobs").mkdir(parents=True)
    return root


def zip_with(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return path


async def next_message(peer: WorkerPeer) -> str | bytes:
    """The worker's next message, but for the output lines and progress reports whose count
    depends on timing."""
    while True:
        message = await asyncio.wait_for(peer.channel.recv(), WAIT)
        peer.received.append(message)
        if not (isinstance(message, str) and message.startswith(TIMING)):
            return message


async def send_bytes_of(peer: WorkerPeer, data: bytes, transfer_id: str, chunk_size: int = 65509) -> None:
    for offset in range(0, len(data), chunk_size):
        await peer.send(pack_chunk_header(transfer_id, offset) + data[offset: offset + chunk_size])


async def upload(peer: WorkerPeer, data: bytes, name: str, transfer_id: str) -> str:
    """Send ``data`` as one rtc-chunked transfer (section 5); the worker's last reply."""
    sha = hashlib.sha256(data).hexdigest()
    await peer.send(f"FILE_META::{transfer_id}::{name}::{len(data)}::{sha}::65509")
    accepted = await peer.next_text()
    if not accepted.startswith("FILE_ACCEPT::"):
        return accepted
    await send_bytes_of(peer, data, transfer_id)
    await peer.send(f"FILE_END::{transfer_id}")
    return await peer.next_text()


# --- point 13 and 15: the worked examples of 9.4, replayed against a worker ---------------


class Replay:
    """Plays the client's side of a documented exchange against a worker and checks each of
    the worker's messages against the document's line.

    Exactly as written: every frame but those about the package's bytes (a ZIP is not the same
    bytes twice: its size and SHA-256 are the real package's, its transfer id the document's)
    and the worker-chosen job id of an implicit job (any ``job-<8 hex>``, the same throughout)."""

    def __init__(self, peer: WorkerPeer, package: bytes) -> None:
        self.peer = peer
        self.package = package
        self.substitutions: dict[str, str] = {}
        self.uploads: dict[str, bool] = {}
        self.implicit_id: str | None = None

    def _text(self, documented: str) -> str:
        for old, new in self.substitutions.items():
            documented = documented.replace(old, new)
        return documented

    async def play(self, exchange: list[tuple[str, str]]) -> None:
        for direction, documented in exchange:
            if documented.startswith(TIMING):
                continue
            if direction == "C->W":
                await self._send(documented)
            else:
                await self._expect(documented)

    async def _send(self, documented: str) -> None:
        binary = BINARY_LINE.match(documented)
        if binary:
            transfer_id = binary.group(2)[6:38]
            if not self.uploads.get(transfer_id):
                self.uploads[transfer_id] = True
                await send_bytes_of(self.peer, self.package, transfer_id)
            return
        if documented.startswith("FILE_META::"):
            transfer_id, name, size, sha, chunk_size = documented.split("::")[1:]
            real_sha = hashlib.sha256(self.package).hexdigest()
            self.substitutions[f"::{size}::{sha}::"] = f"::{len(self.package)}::{real_sha}::"
            self.substitutions[f"::{sha}"] = f"::{real_sha}"
            self.uploads[transfer_id] = False
        await self.peer.send(self._text(documented))

    async def _expect(self, documented: str) -> None:
        message = await next_message(self.peer)
        binary = BINARY_LINE.match(documented)
        if binary:
            assert isinstance(message, bytes), f"documented {documented!r}, the worker sent {message!r}"
            length, header = int(binary.group(1)), binary.group(2)
            assert (len(message), message[:CHUNK_HEADER_SIZE].hex()) == (length, header), documented
            unpack_chunk(message)
            return
        assert isinstance(message, str), f"documented {documented!r}, the worker sent {len(message)} bytes"
        expected = self._text(documented)
        documented_ids = set(IMPLICIT_ID.findall(expected))
        if documented_ids:
            actual_ids = set(IMPLICIT_ID.findall(message))
            assert len(documented_ids) == 1 and len(actual_ids) == 1, (documented, message)
            self.implicit_id = self.implicit_id or actual_ids.pop()
            expected = expected.replace(documented_ids.pop(), self.implicit_id)
        assert message == expected, f"docs/protocol.md 9.4 says {documented!r}; the worker sent {message!r}"


def test_the_worked_examples_of_9_4_are_what_a_worker_answers(shared, tmp_path):
    """The specification's messages only (an implicit job whose results land on the shared
    storage), a refused input that ends its job, and a package corrupted on the shared storage
    resent as bytes: the frames of 9.4, sent as written, get the worker's replies as written."""
    examples = exchanges(section(doc_text(), "### 9.4"))
    assert len(examples) == 3, "9.4 should hold three exchanges"
    package = build_sample_package(shared / "jobs" / "sample-package.zip")
    data = package.read_bytes()
    (shared / "jobs" / "corrupted.zip").write_bytes(data[: len(data) // 2])
    worker = make_worker(shared, tmp_path / "work")

    async def scenario() -> str | None:
        async with worker_session(worker) as peer:
            replay = Replay(peer, data)
            for exchange in examples:
                await replay.play(exchange)
            return replay.implicit_id

    implicit_id = run_async(scenario(), 120)
    # The implicit job's results are where its JOB_COMPLETE said, on the shared storage.
    results = shared / "rtcxfer-results" / implicit_id
    assert (results / "copy" / "data.txt").read_bytes() == sample_text()
    assert (shared / "rtcxfer-results" / "job-2" / "summary.txt").is_file()


# --- point 12: every JOB_FAILED reason is one of 6.4's ------------------------------------


def documented_failures() -> dict[str, re.Pattern[str]]:
    """6.4's table: each documented reason start, as a pattern."""
    rows = table_rows(section(doc_text(), "### 6.4"))
    return {first_code(row[0]): reason_pattern(first_code(row[0])) for row in rows}


def documented_row(reason: str) -> str:
    """The one row of 6.4 whose text ``reason`` starts with."""
    rows = [text for text, pattern in documented_failures().items() if pattern.match(reason)]
    assert len(rows) == 1, f"JOB_FAILED::{reason} matches {len(rows)} rows of docs/protocol.md 6.4: {rows}"
    return rows[0]


def test_every_reason_of_6_4_names_its_job_as_documented():
    failures = documented_failures()
    assert "Job <id>: package is corrupted or invalid: ..." in failures
    assert texts.DISK_FULL in failures  # the specification's words, exactly
    assert f"Job <id> stopped: {texts.WORKER_SHUTTING_DOWN}" in failures
    assert f"Job <id>: {texts.PACKAGE_REFUSED}: ..." in failures
    assert f"Job <id>: {texts.PACKAGE_UNREADABLE}: ..." in failures


def test_a_refused_package_or_manifest_fails_with_the_documented_reason(shared, tmp_path):
    """6.4: "the ZIP or its manifest was refused" is one reason, whatever was wrong, and by
    whichever transport the package came; only the ZIP read in place gets the specification's
    PATH_ERROR instead (section 7)."""
    packages = {
        "not-a-zip.zip": b"this is not a zip file at all",
        "no-manifest.zip": zip_with(tmp_path / "a.zip", {"run.py": "print(1)"}).read_bytes(),
        "bad-json.zip": zip_with(tmp_path / "b.zip", {"rtcxfer.json": "{nope"}).read_bytes(),
        "empty-command.zip": zip_with(tmp_path / "c.zip", {"rtcxfer.json": '{"command": []}'}).read_bytes(),
        "typo.zip": zip_with(tmp_path / "d.zip", {"rtcxfer.json": '{"comand": ["true"]}'}).read_bytes(),
    }
    for name, data in packages.items():
        (shared / "jobs" / name).write_bytes(data)
    worker = make_worker(shared, tmp_path / "work")

    async def scenario() -> tuple[dict[str, str], dict[str, str]]:
        by_bytes, in_place = {}, {}
        async with worker_session(worker) as peer:
            for number, (name, data) in enumerate(packages.items()):
                job = f"bytes-{number}"
                await peer.send(f"JOB_SUBMIT::{job}::rtc-chunked")
                assert await peer.next_text() == f"JOB_ACCEPTED::{job}"
                acked = await upload(peer, data, name, f"{number:032x}")
                assert acked.startswith("FILE_ACK::"), acked
                by_bytes[name] = await peer.expect("JOB_COMPLETE::", "JOB_FAILED::", "PATH_ERROR::")
                job = f"shared-{number}"
                await peer.send(f"JOB_SUBMIT::{job}::shared-fs")
                assert await peer.next_text() == f"JOB_ACCEPTED::{job}"
                await peer.send(f"SHARED_INPUT_PATH::jobs/{name}")
                assert await peer.next_text() == "PATH_VALIDATED::input"
                in_place[name] = await peer.expect("JOB_COMPLETE::", "JOB_FAILED::", "PATH_ERROR::")
        return by_bytes, in_place

    by_bytes, in_place = run_async(scenario(), 120)
    refused = f"Job <id>: {texts.PACKAGE_REFUSED}: ..."
    for name, reply in by_bytes.items():
        assert reply.startswith("JOB_FAILED::"), (name, reply)
        assert documented_row(reply.removeprefix("JOB_FAILED::")) == refused, (name, reply)
    assert "the package has no rtcxfer.json at its root" in by_bytes["no-manifest.zip"]
    assert "rtcxfer.json is not valid JSON" in by_bytes["bad-json.zip"]
    assert "command must be a non-empty list of strings" in by_bytes["empty-command.zip"]
    assert "rtcxfer.json has unknown keys: comand" in by_bytes["typo.zip"]
    # Read in place: the broken ZIP is the specification's PATH_ERROR, a manifest is 6.4's reason.
    assert in_place.pop("not-a-zip.zip") == f"PATH_ERROR::{texts.CORRUPTED}: jobs/not-a-zip.zip"
    for name, reply in in_place.items():
        assert documented_row(reply.removeprefix("JOB_FAILED::")) == refused, (name, reply)


def test_every_other_failure_a_client_can_cause_is_a_documented_reason(shared, tmp_path):
    failing = build_sample_package(tmp_path / "fails.zip", data=b"x", program="raise SystemExit(3)\n").read_bytes()
    worker = make_worker(shared, tmp_path / "work")

    async def scenario() -> dict[str, str]:
        replies = {}
        async with worker_session(worker) as peer:
            await peer.send("JOB_SUBMIT::job-n::no-such-transport")
            replies["no transport"] = await peer.next_text()
            await peer.send("JOB_SUBMIT::job-c::rtc-chunked")
            assert await peer.next_text() == "JOB_ACCEPTED::job-c"
            await peer.send("JOB_CANCEL::job-c")
            replies["cancelled"] = await peer.next_text()
            await peer.send("JOB_SUBMIT::job-f::rtc-chunked")
            assert await peer.next_text() == "JOB_ACCEPTED::job-f"
            assert (await upload(peer, failing, "fails.zip", "f" * 32)).startswith("FILE_ACK::")
            replies["failed"] = await peer.expect("JOB_COMPLETE::", "JOB_FAILED::")
            worker.job_slots.drain()
            await peer.send("JOB_SUBMIT::job-d::rtc-chunked")
            replies["draining"] = await peer.next_text()
        return replies

    replies = run_async(scenario(), 120)
    expected_rows = {
        "no transport": "Job <id>: no transport ...",
        "cancelled": "Job <id> was cancelled",
        "failed": "Job <id> failed: ...",
        "draining": "Job <id>: this worker is draining and accepts no new jobs",
    }
    for cause, reply in replies.items():
        assert reply.startswith("JOB_FAILED::"), (cause, reply)
        assert documented_row(reply.removeprefix("JOB_FAILED::")) == expected_rows[cause], (cause, reply)
    assert replies["failed"].startswith("JOB_FAILED::Job job-f failed: job exited with code 3")


# --- point 13: a PATH_ERROR ends the job ---------------------------------------------------


def test_a_path_error_ends_the_job_so_the_next_submit_is_accepted(shared, tmp_path):
    """6.3: a job ends with exactly one of JOB_COMPLETE, JOB_FAILED or PATH_ERROR; each of
    section 7's refusals of a path, answered to a job waiting for its input, ends it."""
    doc = flat(doc_text())
    assert "A `PATH_ERROR` (section 7) **ends the job** that waits for its input" in doc
    assert "A job ends with exactly one of `JOB_COMPLETE` (success) or `JOB_FAILED` / `PATH_ERROR` (failure)" in doc
    documented = [first_code(row[0]) for row in table_rows(section(doc_text(), "## 7."))]
    (shared / "jobs" / "a-file").write_text("not a directory")
    package = build_sample_package(shared / "jobs" / "package.zip")
    with_root = make_worker(shared, tmp_path / "work")
    without_root = make_worker(None, tmp_path / "work-no-root")
    refusals = [
        (with_root, "SHARED_INPUT_PATH::jobs/missing.zip", texts.INPUT_MISSING),
        (with_root, "SHARED_INPUT_PATH::../../etc/passwd", texts.OUTSIDE_ROOT),
        (with_root, "SHARED_OUTPUT_PATH::jobs/a-file", texts.NOT_FOUND),
        (without_root, "SHARED_INPUT_PATH::jobs/package.zip", texts.NOT_SHARED),
    ]

    async def scenario() -> list[tuple[str, str, str]]:
        seen = []
        for number, (worker, frame, prefix) in enumerate(refusals):
            async with worker_session(worker) as peer:
                await peer.send(f"JOB_SUBMIT::refused-{number}::shared-fs")
                assert await peer.next_text() == f"JOB_ACCEPTED::refused-{number}"
                await peer.send(frame)
                refusal = await peer.next_text()
                # Not "job refused-N is still running": the refusal ended it.
                await peer.send(f"JOB_SUBMIT::next-{number}::rtc-chunked")
                seen.append((refusal, prefix, await peer.next_text()))
                if worker is with_root:
                    # ... and the new job runs to its end.
                    reply = await upload(peer, package.read_bytes(), "package.zip", f"{number + 1:032x}")
                    assert reply.startswith("FILE_ACK::"), reply
                    done, files = await peer.finish_job()
                    assert done.startswith(f"JOB_COMPLETE::next-{number}::"), done
        return seen

    for number, (refusal, prefix, after) in enumerate(run_async(scenario(), 120)):
        assert refusal.startswith(f"PATH_ERROR::{prefix}: "), refusal
        assert prefix in documented, f"{prefix!r} is not in docs/protocol.md section 7"
        assert after == f"JOB_ACCEPTED::next-{number}", (refusal, after)


def test_a_package_that_vanishes_once_validated_is_the_specifications_file_not_found(shared, tmp_path, monkeypatch):
    """6.3 and 7: the package on the shared storage was validated, then is gone when the job
    reads it: the specification's ``PATH_ERROR::File not found: <path>`` after ``extracting``,
    and that ends the job."""
    from rtcxfer.files import paths

    build_sample_package(shared / "jobs" / "vanishing.zip")
    real_open = paths.open_peer_path
    opened: list[str] = []

    def open_then_remove(relative, root, *args, **kwargs):
        handle = real_open(relative, root, *args, **kwargs)
        if relative == "jobs/vanishing.zip" and not opened:
            opened.append(relative)
            (Path(root) / relative).unlink()  # validated, then deleted before the job reads it
        return handle

    monkeypatch.setattr(paths, "open_peer_path", open_then_remove)
    assert "`File not found` | a path that vanished while being read (after `PATH_VALIDATED::input`" in doc_text()
    worker = make_worker(shared, tmp_path / "work")

    async def scenario() -> list[str]:
        async with worker_session(worker) as peer:
            await peer.send("JOB_SUBMIT::job-v::shared-fs")
            assert await peer.next_text() == "JOB_ACCEPTED::job-v"
            await peer.send("SHARED_INPUT_PATH::jobs/vanishing.zip")
            replies = [await peer.next_text() for _ in range(3)]
            await peer.send("JOB_SUBMIT::job-w::rtc-chunked")
            replies.append(await peer.next_text())
            return replies

    assert run_async(scenario(), 60) == [
        "PATH_VALIDATED::input",
        "JOB_STATUS::job-v::extracting",
        f"PATH_ERROR::{texts.NOT_FOUND}: jobs/vanishing.zip",
        "JOB_ACCEPTED::job-w",
    ]


# --- point 14: FILE_ERROR reasons and the partial, the direct ACK, the examples' fingerprints --


def file_error_rows() -> list[list[str]]:
    return table_rows(section(doc_text(), "### 5.2"))


def test_only_the_documented_cancel_reason_keeps_the_bytes_for_a_resume(tmp_path):
    """5.2: after the sender's ``FILE_ERROR::<id>::cancelled by the sender`` the same transfer
    id resumes where it stopped (with the prefix's SHA-256); after any other reason it starts
    at 0."""
    rows = file_error_rows()
    keeps = first_code(rows[0][0])
    assert "**kept**" in rows[0][3] and rows[0][1] == "sender"
    assert rows[1][0] == "anything else" and rows[1][3].startswith("removed")
    data = build_sample_package(tmp_path / "package.zip", data=os.urandom(200_000)).read_bytes()
    assert len(data) > 65509 * 2
    worker = make_worker(None, tmp_path / "work")
    half = 65509

    async def scenario() -> tuple[str, str, str]:
        async with worker_session(worker) as peer:
            await peer.send("JOB_SUBMIT::job-r::rtc-chunked")
            assert await peer.next_text() == "JOB_ACCEPTED::job-r"
            sha = hashlib.sha256(data).hexdigest()
            replies = []
            for transfer_id, reason in (("a" * 32, keeps), ("b" * 32, "my disk went away")):
                meta = f"FILE_META::{transfer_id}::package.zip::{len(data)}::{sha}::65509"
                await peer.send(meta)
                assert await peer.next_text() == f"FILE_ACCEPT::{transfer_id}::0"
                await peer.send(pack_chunk_header(transfer_id, 0) + data[:half])
                await peer.send(f"FILE_ERROR::{transfer_id}::{reason}")
                await asyncio.sleep(0.5)  # the worker reads the FILE_ERROR before the next META
                await peer.send(meta)
                replies.append(await peer.next_text())
            await peer.send("JOB_CANCEL::job-r")
            await peer.expect("JOB_FAILED::")
            return replies[0], replies[1], hashlib.sha256(data[:half]).hexdigest()

    kept, removed, prefix = run_async(scenario(), 60)
    assert kept == f"FILE_ACCEPT::{'a' * 32}::{half}::{prefix}"
    assert removed == f"FILE_ACCEPT::{'b' * 32}::0"


def test_an_unsafe_name_is_refused_with_the_documented_reason(tmp_path):
    rows = file_error_rows()
    unsafe = next(row for row in rows if row[0].startswith("`unsafe name: "))
    examples = re.findall(r"`([^`]+)`", unsafe[2].partition("e.g.")[2])
    assert examples, unsafe
    names = {
        "../escape.zip": "name escapes the destination directory",
        ".x.0123456789abcdef0123456789abcdef.part": "reserved for partial files",
        "a\\b.zip": "Unsafe path: backslash",
    }
    assert set(names.values()) == set(examples), "5.2's examples of an unsafe name"
    worker = make_worker(None, tmp_path / "work")

    async def scenario() -> dict[str, str]:
        replies = {}
        async with worker_session(worker) as peer:
            await peer.send("JOB_SUBMIT::job-u::rtc-chunked")
            assert await peer.next_text() == "JOB_ACCEPTED::job-u"
            for number, name in enumerate(names):
                await peer.send(f"FILE_META::{number:032x}::{name}::3::{'0' * 64}::65509")
                replies[name] = await peer.next_text()
        return replies

    for name, reply in run_async(scenario(), 60).items():
        transfer_id = f"{list(names).index(name):032x}"
        assert reply == f"FILE_ERROR::{transfer_id}::unsafe name: {names[name]}", (name, reply)
    assert not [p for p in (tmp_path / "work").rglob("*") if p.name.endswith(("escape.zip", "b.zip"))]


def test_the_direct_records_carry_what_3_4_says(tmp_path):
    """3.4's records, sent raw on a real direct connection to a worker's transport: ACCEPT is
    8 bytes big-endian, ACK 64 lowercase hex digits as ASCII, ERROR UTF-8."""
    table = {int(row[0]): row for row in table_rows(section(doc_text(), "### 3.4"))}
    assert {kind: row[1].strip("`") for kind, row in table.items()} == {
        direct.META: "META", direct.DATA: "DATA", direct.END: "END",
        direct.ACCEPT: "ACCEPT", direct.ACK: "ACK", direct.ERROR: "ERROR",
    }
    assert "64 lowercase hex digits as ASCII (64 bytes" in table[direct.ACK][3]
    assert f"at most {direct.MAX_REPLY_RECORD} bytes" in table[direct.ERROR][3]
    source = make_file(tmp_path / "out" / "file.bin", 100_000)
    digest = sha256_of(source)
    contexts = (
        TransportContext("client", tmp_path / "client-in"),
        TransportContext("worker", tmp_path / "worker-in", max_file_bytes=200_000),
    )

    async def scenario() -> list[tuple[int, bytes]]:
        async with contract_pair(PluginHost(autoload=False), "direct", *contexts) as pair:
            assert await pair.client.negotiate()
            await pair.worker.wait_settled(5)
            connection = pair.client._send_connection
            records = []

            def exchange() -> None:
                meta = {"transfer_id": "c" * 32, "name": "file.bin", "size": source.stat().st_size}
                connection.send_record(direct.META, json.dumps(meta).encode())
                records.append(connection.recv_record((direct.ACCEPT, direct.ERROR), 4096))
                connection.send_record(direct.DATA, source.read_bytes())
                connection.send_record(direct.END, digest.encode("ascii"))
                records.append(connection.recv_record((direct.ACK, direct.ERROR), 4096))
                too_big = {"transfer_id": "d" * 32, "name": "big.bin", "size": 300_000}
                connection.send_record(direct.META, json.dumps(too_big).encode())
                records.append(connection.recv_record((direct.ACCEPT, direct.ERROR), 4096))

            await asyncio.to_thread(exchange)
            return records

    accept, ack, error = run_async(scenario(), 60)
    assert accept == (direct.ACCEPT, (0).to_bytes(8, "big"))
    assert ack == (direct.ACK, digest.encode("ascii")) and re.fullmatch(rb"[0-9a-f]{64}", ack[1])
    assert error[0] == direct.ERROR and error[1].decode("utf-8").startswith("size 300000 exceeds the limit")


def test_each_side_of_a_worked_example_offers_its_own_direct_certificate():
    text = doc_text()
    shown = 0
    for heading in ("### 9.1", "### 9.2", "### 9.3"):
        offers = {
            direction: message.split("::")[2]
            for exchange in exchanges(section(text, heading))
            for direction, message in exchange
            if message.startswith("DIRECT_OFFER::")
        }
        if not offers:  # a job that forces another transport negotiates only that one
            continue
        shown += 1
        assert set(offers) == {"C->W", "W->C"}, heading
        assert offers["C->W"] != offers["W->C"], f"{heading}: both DIRECT_OFFERs show one fingerprint"
    assert shown, "no worked example shows direct's negotiation"


# --- point 15: a loopback-only worker and a client without a 127.0.0.1 candidate -----------


def test_the_documented_way_to_gather_on_loopback_holds_for_this_aioice():
    """1.4 tells a stranger to replace ``aioice.ice.get_host_addresses``; it works only while
    aioice's gathering looks that function up, which is what rtcxfer's own restriction probes."""
    import aioice.ice

    section_1_4 = section(doc_text(), "### 1.4")
    assert "aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [\"127.0.0.1\"]" in section_1_4
    assert "`rtcxfer.net.aiortc_internals.restrict_host_candidates(pc, [\"127.0.0.1\"])`" in flat(section_1_4)
    assert callable(aioice.ice.get_host_addresses)
    assert aiortc_internals.host_restriction_unsupported_reason() is None
    assert callable(aiortc_internals.restrict_host_candidates)


def test_a_loopback_only_worker_answers_an_offer_without_a_loopback_candidate_with_the_documented_error(tmp_path):
    documented = re.search(r'"message": "(this worker is loopback-only: .*?); \.\.\."', flat(doc_text()))
    assert documented, "1.4 should quote the worker's error"

    async def scenario() -> list[dict]:
        # A real offer, gathered on 127.0.0.1, then moved to a documentation address (RFC 5737)
        # as a client that gathered elsewhere would send it; nothing is ever sent there.
        offerer = PeerConnection(PeerOptions())
        try:
            sdp = await offerer.create_offer()
        finally:
            await offerer.close()
        elsewhere = re.sub(r"^(a=candidate:\S+ \d+ \S+ \d+) 127\.0\.0\.1 ", r"\1 192.0.2.1 ", sdp, flags=re.M)
        assert "127.0.0.1 " not in "\n".join(line for line in elsewhere.splitlines() if line.startswith("a=cand"))
        async with SignalingServer("127.0.0.1", 0) as server:
            worker = make_worker(None, tmp_path / "work")
            serving = await start_serving(worker, server.url, "lab")
            try:
                async with SignalingClient(server.url, "lab", "client", "stranger") as stranger:
                    await stranger.send_to("worker", {"kind": "offer", "sdp": elsewhere})
                    while True:
                        event = await stranger.receive(timeout=WAIT)
                        if isinstance(event, Relay) and event.sender == "worker":
                            return [event.payload]
            finally:
                await stop_serving(serving)

    (payload,) = run_async(scenario(), 60)
    assert payload["kind"] == "error", payload
    assert payload["message"] == texts.NO_LOOPBACK_CANDIDATE
    assert payload["message"].startswith(documented.group(1))
