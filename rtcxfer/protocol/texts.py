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

#: How a job stopped by the worker's own shutdown is reported (``JOB_FAILED::Job X stopped:
#: ...``).
WORKER_SHUTTING_DOWN = "the worker is shutting down"

#: How a job whose command ran and exited non-zero is reported (``JOB_FAILED::Job X failed: job
#: exited with code 4; last output: ...``); a client reads the job's exit status from it.
JOB_EXITED = "job exited with code {code}"
