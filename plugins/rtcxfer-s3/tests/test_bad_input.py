"""Bad input and failing stores: each gets a clear typed error and the session goes on.

Every scenario runs between two real aiortc peers and a real S3-compatible server on
127.0.0.1; after each failure the same session still carries a file, by s3 when the store
still works, otherwise by the rtc-chunked fallback.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from moto_server import BUCKET, PREFIX, make_contexts
from rtcxfer_s3 import (
    S3AccessDeniedError,
    S3BucketNotFoundError,
    S3IntegrityError,
    S3NotAgreedError,
    S3ObjectNotFoundError,
    S3Transport,
    S3UnreachableError,
)
from rtcxfer_s3.frames import S3Error, S3Object

from rtcxfer.protocol.errors import TransferError
from rtcxfer.testing.contract import contract_pair, make_file, run_async

MiB = 1024 * 1024


def files_in(directory) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


async def fallback_works(pair, source, name: str) -> None:
    """The session goes on: the same file still reaches the worker by rtc-chunked."""
    await pair.attached["client"]["rtc-chunked"].send_file(source, name)


# --- missing bucket ---------------------------------------------------------------------------


def test_a_missing_bucket_is_named_and_s3_is_not_offered(host, moto, tmp_path):
    url = "s3://no-such-bucket/jobs"
    client, worker = make_contexts(tmp_path, moto, client={"url": url}, worker={"url": url})
    source = make_file(tmp_path / "in.bin", 100)

    async def scenario():
        async with contract_pair(host, "s3", client, worker, also=["rtc-chunked"]) as pair:
            with pytest.raises(S3BucketNotFoundError, match="no-such-bucket.*bucket does not exist"):
                await asyncio.to_thread(pair.client.check_bucket)
            assert not await pair.client.negotiate()
            with pytest.raises(S3NotAgreedError):
                await pair.client.send_file(source, "in.bin")
            await fallback_works(pair, source, "in.bin")

    run_async(scenario())
    assert files_in(tmp_path / "worker-incoming") == ["in.bin"]


def test_a_bucket_deleted_after_agreement_fails_the_upload_clearly(host, moto, tmp_path):
    doomed = "rtcxfer-doomed"
    store = moto.client()
    store.create_bucket(Bucket=doomed)
    url = f"s3://{doomed}/p"
    client, worker = make_contexts(tmp_path, moto, client={"url": url}, worker={"url": url})
    source = make_file(tmp_path / "in.bin", 100)

    async def scenario():
        async with contract_pair(host, "s3", client, worker, also=["rtc-chunked"]) as pair:
            assert await pair.client.negotiate()
            store.delete_bucket(Bucket=doomed)
            with pytest.raises(S3BucketNotFoundError, match="bucket does not exist"):
                await pair.client.send_file(source, "in.bin")
            # The store works again: the same session uses s3 again.
            store.create_bucket(Bucket=doomed)
            await pair.client.send_file(source, "in.bin")

    try:
        run_async(scenario())
    finally:
        for entry in store.list_objects_v2(Bucket=doomed).get("Contents", []):
            store.delete_object(Bucket=doomed, Key=entry["Key"])
        store.delete_bucket(Bucket=doomed)
    assert files_in(tmp_path / "worker-incoming") == ["in.bin"]


# --- wrong credentials ------------------------------------------------------------------------

WRONG = {"storage_options": {"key": "AKIAWRONGWRONGWRONG0", "secret": "wrong-secret-never-shown"}}


@pytest.mark.parametrize("wrong_side", ["client", "worker"])
def test_wrong_credentials_are_refused_and_never_shown(host, moto, tmp_path, wrong_side):
    client, worker = make_contexts(tmp_path, moto, **{wrong_side: WRONG})
    source = make_file(tmp_path / "in.bin", 100)

    async def scenario():
        async with contract_pair(host, "s3", client, worker, also=["rtc-chunked"]) as pair:
            wrong = pair.transport(wrong_side)
            with pytest.raises(S3AccessDeniedError, match="access denied by the store") as caught:
                await asyncio.to_thread(wrong.check_bucket)
            assert "wrong-secret-never-shown" not in str(caught.value)
            assert not await pair.client.negotiate()
            with pytest.raises(S3NotAgreedError):
                await pair.client.send_file(source, "in.bin")
            await fallback_works(pair, source, "in.bin")

    run_async(scenario())


def test_credentials_revoked_mid_session_fail_the_download_clearly(host, moto, tmp_path):
    iam = moto.client(service="iam")
    user = f"revoked-{time.monotonic_ns()}"
    iam.create_user(UserName=user)
    iam.put_user_policy(
        UserName=user,
        PolicyName="s3",
        PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}',
    )
    access = iam.create_access_key(UserName=user)["AccessKey"]
    client, worker = make_contexts(
        tmp_path,
        moto,
        worker={"storage_options": {"key": access["AccessKeyId"], "secret": access["SecretAccessKey"]}},
    )
    source = make_file(tmp_path / "in.bin", 100)

    async def scenario():
        async with contract_pair(host, "s3", client, worker, also=["rtc-chunked"]) as pair:
            assert await pair.client.negotiate()
            iam.delete_access_key(UserName=user, AccessKeyId=access["AccessKeyId"])
            with pytest.raises(S3AccessDeniedError, match="peer could not take.*access-denied"):
                await pair.client.send_file(source, "in.bin")
            await fallback_works(pair, source, "in.bin")

    run_async(scenario())
    assert files_in(tmp_path / "worker-incoming") == ["in.bin"]


# --- the object changed or vanished before download -------------------------------------------


def tamper_after_upload(monkeypatch, moto, action):
    """Make the sender's upload be followed by ``action(store, bucket, key)``, as if someone
    changed the object between the upload and the receiver's download."""
    original = S3Transport._upload

    def upload(self, path, s3_path, *rest):
        result = original(self, path, s3_path, *rest)
        bucket, _, key = s3_path.partition("/")
        action(moto.client(), bucket, key)
        return result

    monkeypatch.setattr(S3Transport, "_upload", upload)


@pytest.mark.parametrize(
    ("action", "error", "message"),
    [
        (
            lambda store, bucket, key: store.put_object(Bucket=bucket, Key=key, Body=b"X" * 4096),
            S3IntegrityError,
            "integrity: SHA-256 of object .* does not match",
        ),
        (
            lambda store, bucket, key: store.put_object(Bucket=bucket, Key=key, Body=b"short"),
            S3IntegrityError,
            "integrity: object .* has 5 bytes, 4096 were announced",
        ),
        (
            lambda store, bucket, key: store.delete_object(Bucket=bucket, Key=key),
            S3ObjectNotFoundError,
            "not-found: downloading .*: no such object",
        ),
    ],
    ids=["changed", "truncated", "vanished"],
)
def test_an_object_changed_before_download_is_refused(host, moto, tmp_path, monkeypatch, action, error, message):
    client, worker = make_contexts(tmp_path, moto)
    source = make_file(tmp_path / "in.bin", 4096)

    async def scenario():
        async with contract_pair(host, "s3", client, worker) as pair:
            assert await pair.client.negotiate()
            tamper_after_upload(monkeypatch, moto, action)
            with pytest.raises(error, match=message):
                await pair.client.send_file(source, "in.bin")
            assert files_in(tmp_path / "worker-incoming") == []
            monkeypatch.undo()
            # The session goes on by s3 itself.
            await pair.client.send_file(source, "in.bin")

    run_async(scenario())
    assert (tmp_path / "worker-incoming" / "in.bin").read_bytes() == source.read_bytes()
    # The tampered object was cleaned up too.
    listing = moto.client().list_objects_v2(Bucket=BUCKET, Prefix=PREFIX)
    assert listing.get("KeyCount", 0) == 0


# --- keys from the peer -------------------------------------------------------------------


def test_keys_escaping_the_prefix_are_refused_even_when_the_object_exists(host, moto, tmp_path):
    client, worker = make_contexts(tmp_path, moto)
    store = moto.client()
    tid = "5" * 32
    planted = [f"secrets/{tid}/id_rsa", f"{PREFIX}-other/{tid}/id_rsa"]
    for key in planted:
        store.put_object(Bucket=BUCKET, Key=key, Body=b"private")
    hostile = [
        *planted,
        f"{PREFIX}/{tid}/../../secrets/{tid}/id_rsa",
        f"{PREFIX}/../secrets/{tid}/id_rsa",
        f"{PREFIX}/{tid}/%2e%2e/x",
    ]
    source = make_file(tmp_path / "in.bin", 100)

    async def scenario():
        async with contract_pair(host, "s3", client, worker) as pair:
            link = pair.peers.client.link
            # Before agreement, nothing is even looked at.
            await link.send(S3Object(transfer_id=tid, size=7, sha256="0" * 64, key=f"{PREFIX}/{tid}/x"))
            reply = await link.wait_for(lambda f: isinstance(f, S3Error), timeout=20)
            assert reply.reason.startswith("not-agreed:")
            assert await pair.client.negotiate()
            for key in hostile:
                await link.send(S3Object(transfer_id=tid, size=7, sha256="0" * 64, key=key))
                reply = await link.wait_for(lambda f: isinstance(f, S3Error), timeout=20)
                assert reply.transfer_id == tid
                assert reply.reason.startswith("unsafe-key: Unsafe key"), reply.reason
            await link.send(S3Object(transfer_id=tid, size=1 << 50, sha256="0" * 64, key=f"{PREFIX}/{tid}/big"))
            reply = await link.wait_for(lambda f: isinstance(f, S3Error), timeout=20)
            assert "over the limit" in reply.reason
            await pair.client.send_file(source, "in.bin")

    try:
        run_async(scenario())
    finally:
        for key in planted:
            store.delete_object(Bucket=BUCKET, Key=key)
    assert files_in(tmp_path / "worker-incoming") == ["in.bin"]


# --- the server goes away ---------------------------------------------------------------------


# Slow: a server process of its own, killed mid-upload.
@pytest.mark.slow
def test_the_server_killed_mid_upload_is_a_clear_error_and_the_client_falls_back(host, own_moto, tmp_path):
    killed_at: list[int] = []

    def kill_after_first_part(name: str, done: int, total: int) -> None:
        if done > 5 * MiB and not killed_at:
            own_moto.kill()
            killed_at.append(done)

    client, worker = make_contexts(tmp_path, own_moto, client={"part_size": 5 * MiB, "progress": kill_after_first_part})
    source = make_file(tmp_path / "big.bin", 16 * MiB, seed=3)

    async def scenario():
        async with contract_pair(host, "s3", client, worker, also=["rtc-chunked"]) as pair:
            assert await pair.client.negotiate()
            started = time.monotonic()
            with pytest.raises(S3UnreachableError, match="uploading .*: the store is unreachable") as caught:
                await pair.client.send_file(source, "big.bin")
            assert isinstance(caught.value, TransferError)
            assert time.monotonic() - started < 60
            await fallback_works(pair, source, "big.bin")

    run_async(scenario(), timeout=180)
    assert killed_at and killed_at[0] < 16 * MiB
    assert files_in(tmp_path / "worker-incoming") == ["big.bin"]
    assert (tmp_path / "worker-incoming" / "big.bin").read_bytes() == source.read_bytes()
