"""Authentication between client and worker, attacked in process: a relay in the middle, an impostor
on either side, weak or missing tokens, old protocol versions, and whatever a peer without the
token sends first. Real aiortc peers on loopback, the real worker and client."""

from __future__ import annotations

import asyncio
import contextlib
import secrets

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtcxfer.client.rtc_client import RTCClient
from rtcxfer.files import kept_partials
from rtcxfer.net import peer as rtc
from rtcxfer.protocol import auth
from rtcxfer.protocol.errors import AuthenticationError, ConnectionClosedError
from rtcxfer.testing import run_async
from rtcxfer.worker.rtc_worker_client import RTCWorkerClient
from tests.support.worker_harness import (
    TOKEN,
    WorkerPeer,
    attached_client,
    make_worker,
    worker_session,
)

# --- impostors: a relay in the middle, a worker that cannot prove the token, weak tokens ----------


def test_a_relay_in_the_middle_cannot_authenticate_either_way(tmp_path, logs):
    """An impostor one step further than claiming to be the worker: it holds a channel to the real worker and
    one to the real client and copies every message between them (it never needs the token).
    Both proofs are bound to the DTLS fingerprints each side saw, so the worker refuses the
    forwarded proof and the client learns nothing it could use."""

    async def scenario():
        worker = make_worker(None, tmp_path / "work")
        to_worker, worker_end, close_a = await rtc.connect_pair_in_process()
        client_end, from_client, close_b = await rtc.connect_pair_in_process()
        serving = asyncio.create_task(worker.serve_channel(worker_end, name="relayed"))
        seen: list[str | bytes] = []

        async def copy(source, sink):
            with contextlib.suppress(Exception):
                while True:
                    message = await source.recv()
                    seen.append(message)
                    await (sink.send_text(message) if isinstance(message, str) else sink.send_bytes(message))

        pumps = [asyncio.create_task(copy(from_client, to_worker)), asyncio.create_task(copy(to_worker, from_client))]
        client = RTCClient(token=TOKEN, detect_shared_storage=False, results_dir=tmp_path / "results")
        with pytest.raises(AuthenticationError, match="invalid token"):
            await client.attach(client_end)
        await client.close()
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        await close_a()
        await close_b()
        await asyncio.wait_for(serving, 30)
        return seen

    seen = run_async(scenario())
    assert not any(isinstance(m, str) and TOKEN in m for m in seen)
    assert [m.split("::")[0] for m in seen] == ["HELLO", "AUTH_CHALLENGE", "AUTH_PROOF", "AUTH_FAILED"]
    assert any("refused: invalid token" in message for _, message in logs)


def test_the_client_refuses_a_worker_that_cannot_prove_the_token(tmp_path):
    """An impostor worker (any peer that answers the client) gets a proof it cannot use and
    no token; it cannot make a WELCOME the client accepts, so the client sends no job."""

    async def scenario():
        client_end, impostor_end, close = await rtc.connect_pair_in_process()
        impostor = WorkerPeer(impostor_end)
        client = RTCClient(token=TOKEN, detect_shared_storage=False, results_dir=tmp_path / "results")
        attaching = asyncio.create_task(client.attach(client_end))
        hello = await impostor.next_text()
        await impostor.send(f"AUTH_CHALLENGE::{auth.new_nonce()}")
        proof = await impostor.next_text()
        await impostor.send(f"WELCOME::2::rtc-chunked::{'ab' * 32}")
        with pytest.raises(AuthenticationError, match="could not prove it knows the token"):
            await attaching
        await client.close()
        with contextlib.suppress(asyncio.TimeoutError, ConnectionClosedError):
            while True:
                impostor.received.append(await asyncio.wait_for(impostor_end.recv(), 0.5))
        await close()
        return hello, proof, impostor.received[2:]

    hello, proof, afterwards = run_async(scenario())
    assert hello.startswith("HELLO::2::") and TOKEN not in hello
    assert proof.startswith("AUTH_PROOF::") and TOKEN not in proof
    assert afterwards == []  # no JOB_SUBMIT, no path, no file


@pytest.mark.parametrize(
    ("token", "weak"),
    [
        ("s3cret", True),
        ("correct-horse-batte", True),  # 19 characters
        ("ab" * 20, True),  # long, but two different characters
        ("correct-horse-battery", False),
        (secrets.token_urlsafe(16), False),  # what `rtcxfer demo` makes
    ],
)
def test_a_worker_warns_about_a_token_that_can_be_guessed_offline(tmp_path, logs, token, weak):
    RTCWorkerClient(token=token, work_dir=tmp_path / "w")
    warnings = [message for level, message in logs if level == "WARNING" and message.startswith("weak token")]
    assert bool(warnings) is weak, warnings
    if weak:
        assert "offline" in warnings[0] and "token_urlsafe(32)" in warnings[0] and token not in warnings[0]


# --- a worker without a token ---------------------------------------------------------------------


def test_worker_without_token_needs_an_explicit_insecure_choice_and_clients_with_one_refuse_it(tmp_path):
    with pytest.raises(ValueError, match="needs a token"):
        RTCWorkerClient(work_dir=tmp_path / "w0")
    insecure = RTCWorkerClient(insecure_no_token=True, work_dir=tmp_path / "w1")

    async def attach(token: str | None):
        client = RTCClient(token=token, detect_shared_storage=False, results_dir=tmp_path / "results")
        async with attached_client(insecure, client):
            return client.session_transports

    with pytest.raises(AuthenticationError, match="without a token"):
        run_async(attach(TOKEN))
    assert "rtc-chunked" in run_async(attach(None))  # served: the session negotiated its transports


# --- what a peer without the token can send first -------------------------------------------------


def test_an_old_client_hears_which_protocol_version_the_worker_speaks(tmp_path):
    worker = make_worker(None, tmp_path / "work")

    async def scenario():
        async with worker_session(worker, authenticate=False) as peer:
            await peer.send(f"HELLO::1::{TOKEN}::rtc-chunked")
            return await peer.next_text()

    assert run_async(scenario()) == "AUTH_FAILED::unsupported protocol version 1 (this worker speaks 2)"


HEX64 = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
PRE_AUTH_MESSAGES = st.one_of(
    st.builds(lambda v, n, t: f"HELLO::{v}::{n}::{t}", st.integers(0, 3), HEX64 | st.text(max_size=70),
              st.sampled_from(["rtc-chunked", "shared-fs,rtc-chunked", "x"])),
    st.builds(lambda p: f"AUTH_PROOF::{p}", HEX64 | st.text(max_size=70)),
    st.sampled_from(["JOB_SUBMIT::j::rtc-chunked", "SHARED_INPUT_PATH::jobs/x.zip", "WELCOME::2::x::none",
                     f"FILE_META::{'ab' * 16}::f::1::{'0' * 64}::1"]),
    st.text(max_size=100),
    st.binary(max_size=64),
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(PRE_AUTH_MESSAGES, min_size=1, max_size=6))
def test_no_sequence_of_messages_without_the_token_authenticates(tmp_path_factory, messages):
    """Whatever a peer without the token sends before authenticating, it never gets WELCOME,
    gets only authentication replies or protocol errors, and nothing is made on disk."""
    work = tmp_path_factory.mktemp("preauth")
    worker = make_worker(None, work)

    async def scenario():
        async with worker_session(worker, authenticate=False) as peer:
            for message in messages:
                if peer.channel.closed:
                    break
                with contextlib.suppress(Exception):
                    await peer.send(message)
            with contextlib.suppress(Exception):
                while True:
                    peer.received.append(await asyncio.wait_for(peer.channel.recv(), 0.3))
            return peer.received

    replies = run_async(scenario())
    kinds = {r.split("::")[0] for r in replies if isinstance(r, str)}
    # A chunk is refused like a frame (AUTH_FAILED and a close), never answered as a transfer.
    assert kinds <= {"AUTH_CHALLENGE", "AUTH_FAILED", "PROTOCOL_ERROR"}, replies
    # Nothing but the worker's own (empty) directory of kept partial uploads.
    assert [path.name for path in work.rglob("*")] == [kept_partials.DIRECTORY_NAME]


# docs/protocol.md 3.1, as the second hardening round found it broken on three points.


def test_a_chunk_before_welcome_is_refused_like_a_frame(tmp_path):
    from rtcxfer.protocol.frames import pack_chunk_header

    worker = make_worker(None, tmp_path / "work")

    async def scenario():
        async with worker_session(worker, authenticate=False) as peer:
            await peer.send(pack_chunk_header("ab" * 16, 0) + b"bytes before any HELLO")
            reply = await peer.next_text()
            with pytest.raises(ConnectionClosedError):
                while True:
                    await asyncio.wait_for(peer.channel.recv(), 10)
            return reply

    assert run_async(scenario()) == "AUTH_FAILED::authenticate with HELLO first"


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("WELCOME::2::rtc-chunked::none", "without a challenge"),
        ("WORKER_BUSY::full", "without a challenge"),
    ],
)
def test_the_client_refuses_at_once_a_worker_that_skips_the_challenge(tmp_path, answer, why):
    async def scenario():
        client_end, impostor_end, close = await rtc.connect_pair_in_process()
        impostor = WorkerPeer(impostor_end)
        client = RTCClient(token=TOKEN, detect_shared_storage=False, results_dir=tmp_path / "results")
        attaching = asyncio.create_task(client.attach(client_end))
        await impostor.next_text()  # HELLO
        await impostor.send(answer)
        try:
            # At once: not after the 60 s the client gives a worker to answer.
            with pytest.raises(AuthenticationError, match=why):
                await asyncio.wait_for(attaching, 10)
        finally:
            await client.close()
            await close()

    run_async(scenario())


def test_the_client_refuses_a_welcome_of_another_version(tmp_path):
    async def scenario():
        client_end, impostor_end, close = await rtc.connect_pair_in_process()
        impostor = WorkerPeer(impostor_end)
        client = RTCClient(token=TOKEN, detect_shared_storage=False, results_dir=tmp_path / "results")
        attaching = asyncio.create_task(client.attach(client_end))
        await impostor.next_text()  # HELLO
        await impostor.send(f"AUTH_CHALLENGE::{auth.new_nonce()}")
        await impostor.next_text()  # AUTH_PROOF
        await impostor.send(f"WELCOME::3::rtc-chunked::{'ab' * 32}")
        try:
            with pytest.raises(AuthenticationError, match="version 3"):
                await asyncio.wait_for(attaching, 10)
            # ... and closes the channel: the impostor hears nothing more and sees it close.
            with pytest.raises(ConnectionClosedError):
                while True:
                    await asyncio.wait_for(impostor_end.recv(), 10)
        finally:
            await client.close()
            await close()

    run_async(scenario())
