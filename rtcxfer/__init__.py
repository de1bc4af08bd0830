"""rtcxfer: send a job to a remote worker over a WebRTC data channel and get its results back.

The control channel is a WebRTC data channel; the bytes of each file travel by whichever
transport plugin fits (shared storage, chunks over the channel, an object store, ...).
"""

__version__ = "0.1.0"
