"""The receiving side of a file (:mod:`rtcxfer.files.receiving`) on its own, on real files:
announce, reserve space, resume, write, verify, publish, abandon."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtcxfer.files import kept_partials
from rtcxfer.files.receiving import (
    PART_NAME,
    REASON_HASH,
    REASON_INCOMPLETE,
    IncomingFile,
    NotEnoughSpaceError,
    checked_name,
    is_receiving_into,
    new_transfer_id,
    part_name,
    transfer_id_for,
)
from rtcxfer.protocol.errors import IntegrityError, LocalProtocolError, TransferError
from rtcxfer.testing.contract import run_async

TID = "ab" * 16
MiB = 1024 * 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def names_in(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


async def receive_all(incoming: IncomingFile, data: bytes, sha: str | None = None):
    incoming.write(data[incoming.offset :])
    return await incoming.complete(sha)


def opening(directory: Path, data: bytes = b"", **overrides) -> IncomingFile:
    """``IncomingFile.open`` of ``data`` as ``x.bin`` (or what ``overrides`` say), run to the end."""
    fields = {"transfer_id": TID, "name": "x.bin", "size": len(data), "sha256": sha256(data), "transport": "test"}
    fields.update(overrides)
    return IncomingFile.open(directory, **fields)


# --- a whole file ---------------------------------------------------------------------------


def test_a_file_is_received_under_a_partial_name_and_published_under_its_own(tmp_path):
    data = os.urandom(3 * MiB + 5)
    incoming_dir = tmp_path / "in"

    async def scenario():
        delivered = []
        incoming = await opening(incoming_dir, data, name="sub/dir/x.bin")
        assert incoming.offset == 0 and incoming.outstanding == len(data)
        incoming.write(data[:MiB])
        # Nothing incomplete carries the final name.
        partial = incoming.partial_path
        assert PART_NAME.fullmatch(partial.name) and partial.name == part_name("x.bin", TID)
        assert names_in(incoming_dir / "sub/dir") == [partial.name]
        assert is_receiving_into(incoming_dir / "sub/dir")
        incoming.write(data[MiB:])
        assert not (incoming_dir / "sub/dir/x.bin").exists()
        acknowledged = []

        async def acknowledge(digest):
            acknowledged.append(digest)

        async def deliver(received):
            delivered.append(received)

        received = await incoming.complete(acknowledge=acknowledge, deliver=deliver)
        return received, acknowledged, delivered, incoming

    received, acknowledged, delivered, incoming = run_async(scenario())
    final = incoming_dir.resolve() / "sub/dir/x.bin"
    assert (received.name, received.path, received.size, received.sha256) == (
        "sub/dir/x.bin",
        final,
        len(data),
        sha256(data),
    )
    assert (received.transport, received.transfer_id) == ("test", TID)
    assert acknowledged == [sha256(data)] and delivered == [received]
    assert final.read_bytes() == data
    assert names_in(final.parent) == ["x.bin"]
    assert incoming.published and incoming.finished and not is_receiving_into(final.parent)


def test_a_file_of_the_same_name_is_replaced_by_the_newest_verified_copy(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"old")
    run_async(receive_all_of(tmp_path, b"new bytes"))
    assert names_in(tmp_path) == ["x.bin"] and (tmp_path / "x.bin").read_bytes() == b"new bytes"


async def receive_all_of(directory: Path, data: bytes, **overrides):
    return await receive_all(await opening(directory, data, **overrides), data)


def test_an_empty_file_is_received(tmp_path):
    received = run_async(receive_all_of(tmp_path, b""))
    assert received.size == 0 and received.sha256 == sha256(b"") and names_in(tmp_path) == ["x.bin"]


# --- peers' names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../x.bin", "unsafe name: name escapes the destination directory"),
        ("/etc/passwd", "unsafe name: name escapes the destination directory"),
        ("a\\b", "unsafe name: Unsafe path: backslash"),
        (f".x.bin.{TID}.part", "unsafe name: reserved for partial files"),
        (f"d/.y.{'0' * 32}.part", "unsafe name: reserved for partial files"),
    ],
)
def test_unsafe_names_are_refused_before_anything_is_written(tmp_path, name, reason):
    with pytest.raises(TransferError) as caught:
        run_async(opening(tmp_path / "in", b"x", name=name))
    assert str(caught.value) == reason
    assert not (tmp_path / "in").exists()


@given(st.text(max_size=60))
def test_checked_name_returns_a_plain_relative_path_or_a_transfer_error(name):
    try:
        relative = checked_name(name)
    except TransferError as error:
        assert str(error).startswith("unsafe name: ")
        return
    assert relative.parts and not relative.is_absolute() and ".." not in relative.parts
    assert not PART_NAME.fullmatch(relative.name)


def test_a_size_over_the_limit_is_refused_before_the_disk_is_touched(tmp_path):
    with pytest.raises(TransferError, match="size 11 exceeds the limit of 10 bytes"):
        run_async(opening(tmp_path / "in", b"x" * 11, max_size=10))
    assert not (tmp_path / "in").exists()


# --- symlinks -------------------------------------------------------------------------------


def test_a_symlink_planted_in_the_destination_path_is_refused(tmp_path):
    incoming_dir, outside = tmp_path / "in", tmp_path / "outside"
    incoming_dir.mkdir()
    outside.mkdir()
    (incoming_dir / "jobs").symlink_to(outside)
    with pytest.raises(TransferError) as caught:
        run_async(opening(incoming_dir, b"payload", name="jobs/x.bin"))
    assert str(caught.value) == "destination directory is not usable"  # no local path for the peer
    assert list(outside.iterdir()) == []


def test_a_symlink_planted_as_the_partial_is_not_written_through(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    incoming_dir = tmp_path / "in"
    incoming_dir.mkdir()
    (incoming_dir / part_name("x.bin", TID)).symlink_to(victim)
    data = b"payload"
    received = run_async(receive_all_of(incoming_dir, data))
    assert received.path.read_bytes() == data and victim.read_bytes() == b"precious"
    assert names_in(incoming_dir) == ["x.bin"]


def test_a_directory_swapped_for_a_symlink_after_the_announcement_is_not_followed(tmp_path):
    incoming_dir, outside = tmp_path / "in", tmp_path / "outside"
    outside.mkdir()
    data = os.urandom(1000)

    async def scenario():
        incoming = await opening(incoming_dir, data, name="jobs/x.bin")
        incoming.write(data)
        (incoming_dir / "jobs").rename(tmp_path / "moved")
        (incoming_dir / "jobs").symlink_to(outside)
        await incoming.complete()

    run_async(scenario())
    # Everything went through the directory's descriptor: the file is where the directory went.
    assert list(outside.iterdir()) == []
    assert (tmp_path / "moved" / "x.bin").read_bytes() == data


# --- verify ---------------------------------------------------------------------------------


def test_a_hash_mismatch_removes_the_partial(tmp_path):
    data = b"the bytes the sender meant"

    async def scenario():
        incoming = await opening(tmp_path, data)
        incoming.write(b"the bytes the sender MEANT")
        with pytest.raises(IntegrityError) as caught:
            await incoming.complete()
        return caught.value, incoming

    error, incoming = run_async(scenario())
    assert str(error) == f"{REASON_HASH}: the received bytes hash to {sha256(b'the bytes the sender MEANT')}"
    assert names_in(tmp_path) == [] and incoming.finished


def test_a_short_file_fails_verification_and_its_partial_goes(tmp_path):
    async def scenario():
        incoming = await opening(tmp_path, b"0123456789")
        incoming.write(b"01234")
        with pytest.raises(IntegrityError, match=f"^{REASON_INCOMPLETE}: received 5 of 10 bytes$"):
            incoming.verify()
        with pytest.raises(LocalProtocolError):
            await incoming.publish()

    run_async(scenario())
    assert names_in(tmp_path) == []


def test_the_hash_may_come_after_the_bytes_and_is_checked_then(tmp_path):
    data = b"hash announced at the end"

    async def scenario():
        incoming = await opening(tmp_path, data, sha256=None)
        incoming.write(data)
        with pytest.raises(IntegrityError):
            incoming.verify("0" * 64)
        incoming = await opening(tmp_path, data, sha256=None)
        return await receive_all(incoming, data, sha256(data))

    assert run_async(scenario()).sha256 == sha256(data)


def test_without_any_announced_hash_the_size_is_checked_and_the_hash_reported(tmp_path):
    """A legacy upload: name and size only, a random id, never resumed."""
    data = b"legacy upload"
    stale = tmp_path / part_name("up.bin", TID)
    stale.write_bytes(b"leg")  # the same id by chance: without resume it is replaced, not continued

    async def scenario():
        incoming = await opening(tmp_path, data, name="up.bin", sha256=None, resume=False)
        assert incoming.offset == 0
        return await receive_all(incoming, data)

    received = run_async(scenario())
    assert received.sha256 == sha256(data) and (tmp_path / "up.bin").read_bytes() == data
    assert len(new_transfer_id()) == 32 and new_transfer_id() != new_transfer_id()


def test_a_directory_in_the_way_of_the_final_name_fails_the_publish_and_the_partial_goes(tmp_path):
    (tmp_path / "x.bin").mkdir()
    (tmp_path / "x.bin" / "keep").write_bytes(b"")
    with pytest.raises(TransferError, match="^cannot store the file$"):
        run_async(receive_all_of(tmp_path, b"data"))
    assert names_in(tmp_path) == ["x.bin"] and names_in(tmp_path / "x.bin") == ["keep"]


# --- resume ---------------------------------------------------------------------------------


def test_an_abandoned_transfer_kept_is_resumed_and_the_hash_covers_the_prefix(tmp_path):
    data = os.urandom(2 * MiB + 3)

    async def scenario():
        first = await opening(tmp_path, data)
        first.write(data[:MiB])
        first.abandon(keep=True)
        second = await opening(tmp_path, data)
        assert second.offset == second.received == MiB and second.outstanding == len(data) - MiB
        return await receive_all(second, data)

    assert run_async(scenario()).path.read_bytes() == data


def test_a_corrupt_prefix_is_caught_by_the_whole_file_hash(tmp_path):
    data = os.urandom(MiB)
    (tmp_path / part_name("x.bin", TID)).write_bytes(b"\xff" * 1000)

    async def scenario():
        incoming = await opening(tmp_path, data)
        assert incoming.offset == 1000
        with pytest.raises(IntegrityError):
            await receive_all(incoming, data)

    run_async(scenario())
    assert names_in(tmp_path) == []


def test_a_partial_longer_than_the_file_is_discarded(tmp_path):
    (tmp_path / part_name("x.bin", TID)).write_bytes(b"too long for the file")
    received = run_async(receive_all_of(tmp_path, b"short"))
    assert received.path.read_bytes() == b"short"


def test_a_kept_partial_from_an_earlier_session_is_adopted_and_resumed(tmp_path):
    data = os.urandom(MiB + 11)
    tid = transfer_id_for("client", "pkg.zip", len(data), sha256(data))
    session, kept = tmp_path / "session-1", tmp_path / "work" / kept_partials.DIRECTORY_NAME
    session.mkdir()
    kept.parent.mkdir()
    (session / part_name("pkg.zip", tid)).write_bytes(data[:4096])
    assert kept_partials.keep_partials(session, kept) == 1

    async def scenario():
        incoming = await opening(tmp_path / "session-2", data, transfer_id=tid, name="pkg.zip", kept_partials_dir=kept)
        assert incoming.offset == 4096
        return await receive_all(incoming, data)

    received = run_async(scenario())
    assert received.path.read_bytes() == data
    assert names_in(tmp_path / "session-2") == ["pkg.zip"]
    assert not any(kept.iterdir())  # the one kept was adopted; the directory stays (its worker holds it open)


def test_an_idle_holder_of_the_partial_is_taken_over_and_cannot_write_or_remove_it(tmp_path):
    data = os.urandom(10_000)

    async def scenario():
        old = await opening(tmp_path, data)
        old.write(data[:4000])
        new = await opening(tmp_path, data)  # a new session; the old one has not noticed its loss
        assert new.offset == 4000 and old.detached
        with pytest.raises(TransferError, match="transfer resumed in another session"):
            old.write(data[4000:5000])
        old.abandon(keep=False)  # not its partial any more
        return await receive_all(new, data)

    assert run_async(scenario()).path.read_bytes() == data


def test_a_holder_whose_thread_is_writing_is_not_taken_over(tmp_path):
    data = os.urandom(10_000)
    writing, release = threading.Event(), threading.Event()

    def write_slowly(incoming: IncomingFile) -> None:
        incoming.write(data[:5000])
        writing.set()
        release.wait(10)
        incoming.write(data[5000:])

    async def scenario():
        holder = await opening(tmp_path, data)
        lent = asyncio.ensure_future(holder.run_in_thread(write_slowly, holder))
        await asyncio.to_thread(writing.wait, 10)
        with pytest.raises(TransferError, match="transfer busy in another session; retry later"):
            await opening(tmp_path, data)
        release.set()
        await lent
        return await holder.complete()

    assert run_async(scenario()).path.read_bytes() == data


def test_abandoning_a_file_lent_to_a_thread_waits_for_it_and_stops_its_writes(tmp_path):
    data = os.urandom(10_000)
    writing, release = threading.Event(), threading.Event()
    outcome: list[BaseException] = []

    def write_slowly(incoming: IncomingFile) -> None:
        incoming.write(data[:5000])
        writing.set()
        release.wait(10)
        try:
            incoming.write(data[5000:])
        except TransferError as error:
            outcome.append(error)
            raise

    async def scenario():
        incoming = await opening(tmp_path, data)
        lent = asyncio.ensure_future(incoming.run_in_thread(write_slowly, incoming))
        await asyncio.to_thread(writing.wait, 10)
        incoming.abandon(keep=True)  # the session closed
        assert not incoming.finished and is_receiving_into(tmp_path)  # the thread still has it
        release.set()
        with pytest.raises(TransferError):
            await lent
        assert incoming.finished and not is_receiving_into(tmp_path)

    run_async(scenario())
    assert [str(error) for error in outcome] == ["transfer abandoned on this side"]
    # Kept, with what was written before the abandon, for the next transfer to resume.
    assert (tmp_path / part_name("x.bin", TID)).read_bytes() == data[:5000]


def test_a_kept_partial_without_any_byte_is_removed(tmp_path):
    async def scenario():
        (await opening(tmp_path, b"data")).abandon(keep=True)

    run_async(scenario())
    assert names_in(tmp_path) == []


# --- free space ------------------------------------------------------------------------------


def test_space_is_reserved_across_announcements_until_a_file_is_abandoned(tmp_path):
    """Two files that fit one at a time but not together: the second is refused while the first
    is open, accepted once it is gone. Sizes are announced, never written."""
    size = int(shutil.disk_usage(tmp_path).free * 0.6)

    async def scenario():
        first = await opening(tmp_path, transfer_id="01" * 16, name="one.bin", size=size, sha256=None)
        with pytest.raises(NotEnoughSpaceError, match="^not enough free space for the file$"):
            await opening(tmp_path, transfer_id="02" * 16, name="two.bin", size=size, sha256=None)
        assert names_in(tmp_path) == [first.partial_path.name]  # the refused one left nothing
        first.abandon(keep=False)
        second = await opening(tmp_path, transfer_id="02" * 16, name="two.bin", size=size, sha256=None)
        second.abandon(keep=False)

    run_async(scenario())
    assert names_in(tmp_path) == []
