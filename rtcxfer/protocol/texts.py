"""The fixed texts that cross the wire, in one place.

The worker specification writes some replies out in full, and they go over the wire exactly
as it writes them: ``PATH_ERROR::<prefix>: <the peer's path>`` with the prefixes below, and
``JOB_FAILED::Disk space exhausted on shared storage``. The rest are rtcxfer's own, documented
in ``docs/protocol.md``.

This module imports nothing.
"""

# PATH_ERROR prefixes, the specification's words.
OUTSIDE_ROOT = "Path outside shared storage"
INPUT_MISSING = "Input path does not exist"
NOT_FOUND = "File not found"
PERMISSION_DENIED = "Permission denied"
CORRUPTED = "File corrupted or invalid format"
#: rtcxfer's own: a worker without shared storage was sent a path.
NOT_SHARED = "Shared storage is not available on this worker"

#: ``JOB_FAILED::`` when results do not fit on the shared storage (the specification's words).
DISK_FULL = "Disk space exhausted on shared storage"

# JOB_FAILED reasons of rtcxfer's own, each after ``Job <id>: `` (docs/protocol.md 6.4).
#: The package was refused: not a usable ZIP, or its manifest (``rtcxfer.json``) is missing or
#: invalid; the detail follows after ``: ``.
PACKAGE_REFUSED = "package is corrupted or invalid"
#: The worker could not read the package it received (an I/O error); the detail follows.
PACKAGE_UNREADABLE = "cannot read the package"

#: How a job stopped by the worker's own shutdown is reported (``JOB_FAILED::Job X stopped:
#: ...``).
WORKER_SHUTTING_DOWN = "the worker is shutting down"

#: How a job whose command ran and exited non-zero is reported (``JOB_FAILED::Job X failed: job
#: exited with code 4; last output: ...``); a client reads the job's exit status from it.
JOB_EXITED = "job exited with code {code}"

#: A loopback-only worker's ``{"kind": "error"}`` answer to an offer with no ICE candidate on
#: 127.0.0.1, which it could never connect to (docs/protocol.md 1.4).
NO_LOOPBACK_CANDIDATE = (
    "this worker is loopback-only: it uses only ICE candidates on 127.0.0.1, and the offer has none; "
    "gather a host candidate on 127.0.0.1 (stock aioice skips loopback addresses: see docs/protocol.md 1.4), "
    "or start the worker with --any-interface"
)
