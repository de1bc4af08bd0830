"""rtcxfer-s3: an rtcxfer transport that moves files through an S3-compatible bucket."""

from rtcxfer.log import quiet_library
from rtcxfer_s3.errors import (
    S3AccessDeniedError,
    S3BucketNotFoundError,
    S3ConfigError,
    S3IntegrityError,
    S3NoSpaceError,
    S3NotAgreedError,
    S3ObjectNotFoundError,
    S3PeerRefusedError,
    S3StorageError,
    S3TransportError,
    S3UnreachableError,
    S3UnsafeKeyError,
)
from rtcxfer_s3.settings import S3Location, S3Settings
from rtcxfer_s3.transport import S3Transport

__version__ = "0.1.0"

# A library stays quiet until the application asks (loguru's advice, as rtcxfer.log does);
# the rtcxfer command asks before it loads plugins, so this must not undo that.
quiet_library("rtcxfer_s3")

__all__ = [
    "S3AccessDeniedError",
    "S3BucketNotFoundError",
    "S3ConfigError",
    "S3IntegrityError",
    "S3Location",
    "S3NoSpaceError",
    "S3NotAgreedError",
    "S3ObjectNotFoundError",
    "S3PeerRefusedError",
    "S3Settings",
    "S3StorageError",
    "S3Transport",
    "S3TransportError",
    "S3UnreachableError",
    "S3UnsafeKeyError",
    "__version__",
]
