"""The client side: :class:`RTCClient`, choosing a worker, packing a job and the pack cache."""

from rtcxfer.client.rtc_client import ClientEvent, JobResult, RTCClient

__all__ = ["ClientEvent", "JobResult", "RTCClient"]
