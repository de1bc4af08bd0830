"""Unit tests of locations, key checks, settings and error classification (no server)."""

from __future__ import annotations

import pytest
from rtcxfer_s3.errors import (
    S3AccessDeniedError,
    S3BucketNotFoundError,
    S3ConfigError,
    S3IntegrityError,
    S3ObjectNotFoundError,
    S3PeerRefusedError,
    S3UnreachableError,
    S3UnsafeKeyError,
    error_from_reason,
)
from rtcxfer_s3.settings import MIN_PART_SIZE, S3Location, S3Settings, classify, redact_url
from rtcxfer_s3.transport import S3Transport

from rtcxfer.protocol.errors import PathError, TransferError, UnsafePathError
from rtcxfer.transport.base import TransportContext

TID = "ab" * 16


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://bucket", "bucket", ""),
        ("s3://bucket/", "bucket", ""),
        ("s3://bucket/a/b/", "bucket", "a/b"),
        ("s3://my.bucket-1/jobs//x", "my.bucket-1", "jobs/x"),
    ],
)
def test_locations_parse_to_a_canonical_form(url, bucket, prefix):
    location = S3Location.parse(url)
    assert (location.bucket, location.prefix) == (bucket, prefix)
    assert S3Location.parse(location.url) == location


@pytest.mark.parametrize(
    "url",
    ["bucket/x", "http://bucket/x", "s3://", "s3://B", "s3://UPPER/x", "s3://a..b/x", "s3://bucket/../x", "s3://b\x00"],
)
def test_malformed_locations_are_refused(url):
    with pytest.raises(S3ConfigError):
        S3Location.parse(url)


def test_keys_round_trip_through_the_check():
    location = S3Location("bucket", "jobs/in")
    key = location.key_for(TID, "dir/file.bin")
    assert key == f"jobs/in/{TID}/dir/file.bin"
    assert location.name_from_key(key, TID) == "dir/file.bin"
    assert S3Location("bucket").name_from_key(f"{TID}/f", TID) == "f"


@pytest.mark.parametrize(
    "key",
    [
        f"jobs/in/{TID}/../../x",
        f"jobs/in/../{TID}/x",
        f"jobs/{TID}/x",
        f"jobs/in-sibling/{TID}/x",
        f"jobs/in/{TID}//x",
        f"jobs/in/{TID}/./x",
        f"jobs/in/{TID}/a\\b",
        f"jobs/in/{TID}/a\x00b",
        f"jobs/in/{TID}",
        f"jobs/in/{'cd' * 16}/x",
        f"/jobs/in/{TID}/x",
        f"s3://bucket/jobs/in/{TID}/x",
        f"jobs/in/{TID}/%2e%2e/x",
        f"jobs/in/{TID}/x?versionId=1",
    ],
)
def test_keys_escaping_the_prefix_are_refused(key):
    with pytest.raises(S3UnsafeKeyError) as caught:
        S3Location("bucket", "jobs/in").name_from_key(key, TID)
    assert isinstance(caught.value, UnsafePathError) and caught.value.peer_path == key


def test_hostile_names_cannot_make_a_key():
    with pytest.raises(PathError):
        S3Location("bucket", "p").key_for(TID, "../x")
    with pytest.raises(PathError):
        S3Location("bucket", "p").key_for(TID, "x?versionId=1")


def context(**options) -> TransportContext:
    return TransportContext("client", "/nonexistent", options={"s3": options} if options else {})


def test_settings_come_from_options_then_environment():
    environ = {"RTCXFER_S3_URL": "s3://env-bucket/p", "RTCXFER_S3_ENDPOINT_URL": "http://127.0.0.1:9"}
    from_env = S3Settings.from_context(context(), environ)
    assert from_env.location == S3Location("env-bucket", "p")
    assert from_env.endpoint_url == "http://127.0.0.1:9"
    assert from_env.cleanup is True
    from_options = S3Settings.from_context(context(url="s3://opt-bucket", cleanup=False), environ)
    assert from_options.location == S3Location("opt-bucket")
    assert from_options.cleanup is False
    assert S3Settings.from_context(context(), {}).location is None


def test_usable_only_with_a_location(monkeypatch):
    monkeypatch.delenv("RTCXFER_S3_URL", raising=False)
    assert not S3Transport.usable(context())
    assert S3Transport.usable(context(url="s3://bucket/p"))
    assert not S3Transport.usable(context(url="not-a-url"))
    monkeypatch.setenv("RTCXFER_S3_URL", "s3://bucket/p")
    assert S3Transport.usable(context())


@pytest.mark.parametrize(
    "options",
    [{"nonsense": 1}, {"part_size": MIN_PART_SIZE - 1}, {"part_size": "big"}, {"progress": 3}, {"max_attempts": 0}],
)
def test_bad_options_are_config_errors(options):
    with pytest.raises(S3ConfigError):
        S3Settings.from_context(context(url="s3://bucket", **options), {})


def test_secrets_never_show_in_repr():
    settings = S3Settings.from_context(
        context(url="s3://bucket", storage_options={"key": "AKIDSECRETKEY", "secret": "s3cr3t"}), {}
    )
    assert "s3cr3t" not in repr(settings) and "AKIDSECRETKEY" not in repr(settings)
    assert redact_url("http://user:pw@127.0.0.1:9000/x") == "http://127.0.0.1:9000/x"
    assert redact_url("http://127.0.0.1:9000") == "http://127.0.0.1:9000"


def test_store_failures_are_classified_without_copying_messages():
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    def client_error(code: str) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": "echo AKIDSECRETKEY"}}, "Op")

    assert isinstance(classify(client_error("InvalidAccessKeyId"), "x"), S3AccessDeniedError)
    assert isinstance(classify(client_error("SignatureDoesNotMatch"), "x"), S3AccessDeniedError)
    assert isinstance(classify(client_error("NoSuchBucket"), "x"), S3BucketNotFoundError)
    assert isinstance(classify(client_error("404"), "x", bucket_level=True), S3BucketNotFoundError)
    assert isinstance(classify(client_error("NoSuchKey"), "x"), S3ObjectNotFoundError)
    wrapped = FileNotFoundError("b/k")
    wrapped.__cause__ = client_error("NoSuchKey")
    assert isinstance(classify(wrapped, "x"), S3ObjectNotFoundError)
    assert isinstance(classify(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), "x"), S3UnreachableError)
    assert isinstance(classify(NoCredentialsError(), "x"), S3AccessDeniedError)
    for code in ("InvalidAccessKeyId", "NoSuchKey", "Weird"):
        error = classify(client_error(code), "x")
        assert isinstance(error, TransferError)
        assert "AKIDSECRETKEY" not in str(error)


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("integrity: SHA-256 differs", S3IntegrityError),
        ("not-found: gone", S3ObjectNotFoundError),
        ("access-denied: no", S3AccessDeniedError),
        ("unsafe-key: outside", S3UnsafeKeyError),
        ("something else", S3PeerRefusedError),
    ],
)
def test_peer_reasons_map_back_to_typed_errors(reason, expected):
    error = error_from_reason(reason, "p/k")
    assert isinstance(error, expected)
    assert reason in str(error)
