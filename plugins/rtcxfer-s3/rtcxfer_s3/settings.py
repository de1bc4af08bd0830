"""Where the s3 transport stores objects and how it talks to the store.

Settings come from ``context.options["s3"]`` (a dict) and, for what it leaves out, from the
environment: ``RTCXFER_S3_URL`` (``s3://bucket/prefix``) and ``RTCXFER_S3_ENDPOINT_URL`` (an
S3-compatible store such as MinIO). Credentials are *not* settings of rtcxfer: botocore finds
them as it always does (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``,
``~/.aws/config``, instance roles), unless ``storage_options`` passes them to s3fs explicitly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs

from rtcxfer.files.paths import check_relative_text
from rtcxfer.protocol.errors import PathError, RtcxferError
from rtcxfer_s3.errors import (
    S3AccessDeniedError,
    S3BucketNotFoundError,
    S3ConfigError,
    S3IntegrityError,
    S3ObjectNotFoundError,
    S3StorageError,
    S3UnreachableError,
    S3UnsafeKeyError,
)

URL_ENV = "RTCXFER_S3_URL"
ENDPOINT_ENV = "RTCXFER_S3_ENDPOINT_URL"

#: S3 refuses parts under 5 MiB (except the last one).
MIN_PART_SIZE = 5 * 1024 * 1024
DEFAULT_PART_SIZE = 8 * 1024 * 1024

# AWS's rules for bucket names (3-63 characters, lowercase, digits, dots, hyphens).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")

Progress = Callable[[str, int, int], None]


@attrs.frozen
class S3Location:
    """A bucket and a key prefix ('' for the whole bucket), both in canonical form."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """Parse ``s3://bucket[/prefix]``; raise :class:`S3ConfigError` for anything else."""
        if not isinstance(url, str) or not url.startswith("s3://"):
            raise S3ConfigError(f"an s3 location looks like s3://bucket/prefix, not {url!r}")
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not _BUCKET.fullmatch(bucket) or ".." in bucket:
            raise S3ConfigError(f"{bucket!r} is not a valid S3 bucket name")
        prefix = prefix.strip("/")
        if prefix:
            try:
                prefix = str(check_relative_text(prefix))
            except PathError as error:
                raise S3ConfigError(f"the prefix of {url!r} is not a plain relative path: {error}") from None
        return cls(bucket, prefix)

    @property
    def url(self) -> str:
        """The canonical ``s3://bucket/prefix`` form both peers compare."""
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key_for(self, transfer_id: str, name: str) -> str:
        """The object key for file ``name`` of transfer ``transfer_id``."""
        canonical = str(check_relative_text(name))
        if "?" in canonical:
            raise S3UnsafeKeyError("Unsafe key: '?' (s3fs reads '?versionId=' as a version)", peer_path=name)
        relative = f"{transfer_id}/{canonical}"
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def path_of(self, key: str) -> str:
        """The s3fs path (``bucket/key``) of ``key``."""
        return f"{self.bucket}/{key}"

    def name_from_key(self, key: str, transfer_id: str) -> str:
        """The file name a peer's ``key`` carries, after checking it the way a peer path is.

        The key must be exactly ``<prefix>/<transfer_id>/<name>`` in canonical form, with a
        ``name`` that passes :func:`rtcxfer.files.paths.check_relative_text`. S3 itself gives
        ``..`` no meaning, but some S3-compatible stores and proxies normalise keys, so a key
        that is not already canonical is refused rather than rewritten.
        """
        head = f"{self.prefix}/" if self.prefix else ""
        if not key.startswith(head):
            raise S3UnsafeKeyError("Unsafe key: outside the agreed prefix", peer_path=key)
        rest = key[len(head) :]
        try:
            relative = check_relative_text(rest)
        except PathError as error:
            raise S3UnsafeKeyError(f"Unsafe key: {error}", peer_path=key) from None
        if str(relative) != rest:
            raise S3UnsafeKeyError("Unsafe key: not in canonical form", peer_path=key)
        if "?" in rest:
            # s3fs cuts a path at "?versionId=", so the key read would not be the key checked.
            raise S3UnsafeKeyError("Unsafe key: '?' is not allowed", peer_path=key)
        parts = relative.parts
        if len(parts) < 2 or parts[0] != transfer_id:
            raise S3UnsafeKeyError("Unsafe key: not <prefix>/<transfer id>/<name>", peer_path=key)
        return "/".join(parts[1:])


def redact_url(url: str | None) -> str | None:
    """``url`` without any ``user:password@`` part, for logs and messages."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=host))


def _positive(name: str, value: Any, kind: type) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise S3ConfigError(f"s3 option {name!r} must be a positive number, not {value!r}")
    return kind(value)


@attrs.frozen
class S3Settings:
    """One side's s3 settings. ``storage_options`` may hold secrets: it is never shown."""

    location: S3Location | None = None
    endpoint_url: str | None = None
    #: Delete the uploaded object once the receiver verified it (or the transfer failed).
    cleanup: bool = True
    part_size: int = DEFAULT_PART_SIZE
    #: Called as ``progress(name, bytes_uploaded, total_bytes)`` on the event loop, the same
    #: signature rtc-chunked uses, so a client can hand one callback to every transport.
    progress: Progress | None = attrs.field(default=None, repr=False)
    #: Extra keyword arguments for ``s3fs.S3FileSystem`` (profile, key/secret, client_kwargs).
    storage_options: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    #: botocore attempts per request (None: botocore's default) and s3fs's retry loop.
    max_attempts: int | None = None
    retries: int | None = None
    connect_timeout: float | None = None
    read_timeout: float | None = None
    negotiate_timeout: float = 30.0
    #: How long a sender waits for the receiver's S3_ACK after announcing an object.
    ack_timeout: float | None = 3600.0

    @classmethod
    def from_context(cls, context: Any, environ: Mapping[str, str] | None = None) -> S3Settings:
        """Build settings from ``context.options["s3"]`` and the environment."""
        environ = os.environ if environ is None else environ
        options = dict((getattr(context, "options", None) or {}).get("s3") or {})
        known = {field.name for field in attrs.fields(cls)} | {"url"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise S3ConfigError(f"unknown s3 option(s): {', '.join(unknown)}")
        url = options.pop("url", None) or environ.get(URL_ENV) or None
        location = options.pop("location", None)
        if location is None and url:
            location = S3Location.parse(url)
        endpoint = options.pop("endpoint_url", None) or environ.get(ENDPOINT_ENV) or None
        part_size = _positive("part_size", options.pop("part_size", DEFAULT_PART_SIZE), int)
        if part_size < MIN_PART_SIZE:
            raise S3ConfigError(f"s3 option 'part_size' must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        progress = options.pop("progress", None)
        if progress is not None and not callable(progress):
            raise S3ConfigError("s3 option 'progress' must be callable as progress(name, done, total)")
        return cls(
            location=location,
            endpoint_url=endpoint,
            cleanup=bool(options.pop("cleanup", True)),
            part_size=part_size,
            progress=progress,
            storage_options=dict(options.pop("storage_options", None) or {}),
            max_attempts=_positive("max_attempts", options.pop("max_attempts", None), int),
            retries=_positive("retries", options.pop("retries", None), int),
            connect_timeout=_positive("connect_timeout", options.pop("connect_timeout", None), float),
            read_timeout=_positive("read_timeout", options.pop("read_timeout", None), float),
            negotiate_timeout=_positive("negotiate_timeout", options.pop("negotiate_timeout", 30.0), float),
            ack_timeout=_positive("ack_timeout", options.pop("ack_timeout", 3600.0), float),
        )

    def filesystem(self) -> Any:
        """A new ``s3fs.S3FileSystem`` for these settings (imported here: s3fs is slow to import)."""
        import s3fs

        options: dict[str, Any] = dict(self.storage_options)
        if self.endpoint_url:
            options.setdefault("endpoint_url", self.endpoint_url)
        config = dict(options.pop("config_kwargs", None) or {})
        if self.max_attempts is not None:
            config["retries"] = {"max_attempts": self.max_attempts, "mode": "standard"}
        if self.connect_timeout is not None:
            config["connect_timeout"] = self.connect_timeout
        if self.read_timeout is not None:
            config["read_timeout"] = self.read_timeout
        if config:
            options["config_kwargs"] = config
        # Each session gets its own client: fsspec's instance cache would share one across
        # sessions and keep it pointing at an endpoint that may have gone away.
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
        if self.retries is not None:
            # s3fs's own retry loop, on top of botocore's; a class attribute, not an argument.
            fs.retries = self.retries
        return fs


# --- turning the store's failures into typed errors ---------------------------------------

_DENIED_CODES = frozenset(
    {
        "403",
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "AccountProblem",
    }
)


def _error_code(error: BaseException) -> str | None:
    response = getattr(error, "response", None)
    if isinstance(response, Mapping):
        code = (response.get("Error") or {}).get("Code")
        return str(code) if code is not None else None
    return None


def _chain(error: BaseException):
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def classify(error: BaseException, what: str, *, bucket_level: bool = False) -> RtcxferError:
    """The typed error for a failure of the store while doing ``what``.

    ``bucket_level``: a "not found" means the bucket (not an object) is missing. The result
    names the store's error code at most: botocore messages are not copied, so nothing the
    store echoes back (request headers, signing details) reaches a log line or the peer.
    """
    if isinstance(error, RtcxferError):
        return error
    from botocore.exceptions import (  # botocore comes with s3fs; imported late like s3fs
        BotoCoreError,
        HTTPClientError,
        NoCredentialsError,
        PartialCredentialsError,
    )
    from botocore.exceptions import (
        ConnectionError as BotoConnectionError,
    )

    for link in _chain(error):
        code = _error_code(link)
        if code is not None:
            if code in _DENIED_CODES:
                return S3AccessDeniedError(f"{what}: access denied by the store ({code})")
            if code == "NoSuchBucket" or (code == "404" and bucket_level):
                return S3BucketNotFoundError(f"{what}: the bucket does not exist ({code})")
            if code == "PreconditionFailed":
                return S3IntegrityError(f"{what}: the object changed while being read ({code})")
            if code in ("NoSuchKey", "404"):
                return S3ObjectNotFoundError(f"{what}: no such object ({code})")
            return S3StorageError(f"{what}: the store answered {code}")
        if isinstance(link, (NoCredentialsError, PartialCredentialsError)):
            return S3AccessDeniedError(f"{what}: no usable AWS credentials on this side")
        if isinstance(link, (BotoConnectionError, HTTPClientError, ConnectionError, TimeoutError)):
            return S3UnreachableError(f"{what}: the store is unreachable ({type(link).__name__})")
        if isinstance(link, BotoCoreError):
            return S3StorageError(f"{what}: {type(link).__name__}")
    if isinstance(error, PermissionError):
        return S3AccessDeniedError(f"{what}: access denied by the store")
    if isinstance(error, FileNotFoundError):
        if bucket_level:
            return S3BucketNotFoundError(f"{what}: the bucket does not exist")
        return S3ObjectNotFoundError(f"{what}: no such object")
    return S3StorageError(f"{what}: {type(error).__name__}")
