"""The worker side: :class:`RTCWorkerClient` (the specification's name for the worker), its
sessions, the one job pipeline that native and legacy sessions drive, and the job runner."""

from rtcxfer.worker.rtc_worker_client import RTCWorkerClient

__all__ = ["RTCWorkerClient"]
