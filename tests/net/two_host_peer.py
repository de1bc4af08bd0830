"""One peer of a two-host test (``tests/net/test_two_hosts.py``), run inside a bed's namespace.

    python tests/net/two_host_peer.py send --megabytes 4 [--pause-at 2]
    python tests/net/two_host_peer.py receive [--stock]

The SDP goes through the test process, one JSON line each way on stdout / stdin (no signaling
server, no network but the bed's veth). The sender (an rtcxfer ``PeerConnection`` with
``loopback_only=False``) sends ``--megabytes`` of random bytes in 64 KiB messages, then an empty
message; with ``--pause-at N`` it stops after N MiB, waits until its queue is empty, prints
``{"paused": true}`` and waits for a line on stdin before going on (the test changes the path
meanwhile). The receiver answers with the SHA-256 of what it got. ``--stock`` makes the
receiver a plain aiortc ``RTCPeerConnection`` with no rtcxfer code at all. Each side prints a
last JSON line with its figures, including every SCTP packet size change with its time.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import time

MESSAGE = 65536


def emit(item: dict) -> None:
    print(json.dumps(item), flush=True)


async def read_json_line() -> dict:
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    return json.loads(line)


async def send(args: argparse.Namespace) -> dict:
    from rtcxfer.net.peer import PeerConnection, PeerOptions

    peer = PeerConnection(PeerOptions(loopback_only=False))
    changes: list[dict] = []
    peer.on_packet_size.append(
        lambda size: changes.append(
            {"at": time.time(), "size": size.size, "datagram": size.datagram, "reason": size.reason}
        )
    )
    emit({"offer": await peer.create_offer()})
    await peer.accept_answer((await read_json_line())["answer"])
    channel = await peer.wait_channel_open(60)
    settled = await peer.packet_size_settled(10)
    payload = os.urandom(args.megabytes * 1024 * 1024)
    digest = hashlib.sha256(payload).hexdigest()
    pause_at = args.pause_at * 1024 * 1024 if args.pause_at else None
    started = time.perf_counter()
    for offset in range(0, len(payload), MESSAGE):
        if offset == pause_at:
            await channel.drain(60)
            await asyncio.sleep(0.5)  # the acknowledgements of what is in flight come back
            emit({"paused": True, "datagram": peer.packet_size.datagram})
            await read_json_line()
            resumed = time.time()
        await channel.send_bytes(payload[offset : offset + MESSAGE])
    await channel.send_bytes(b"")
    answer = await asyncio.wait_for(channel.recv(), 120)
    seconds = time.perf_counter() - started
    await peer.close()
    result = {"sha256": digest, "echoed": answer, "seconds": seconds, "changes": changes}
    result["timeouts"] = peer._sizer.retransmission_timeouts
    result["settled"] = {"size": settled.size, "datagram": settled.datagram}
    if pause_at is not None:
        result["resumed"] = resumed
    return result


async def receive_rtcxfer() -> dict:
    from rtcxfer.net.peer import PeerConnection, PeerOptions

    peer = PeerConnection(PeerOptions(loopback_only=False))
    emit({"answer": await peer.accept_offer((await read_json_line())["offer"])})
    channel = await peer.wait_channel_open(60)
    digest, count = hashlib.sha256(), 0
    while message := await asyncio.wait_for(channel.recv(), 120):
        digest.update(message)
        count += len(message)
    await channel.send_text(digest.hexdigest())
    await channel.drain(30)
    await asyncio.sleep(0.5)  # the answer leaves before the connection closes
    await peer.close()
    return {"bytes": count, "size": peer.packet_size.size}


async def receive_stock() -> dict:
    """No rtcxfer import at all: what any aiortc application would do."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    done = asyncio.get_running_loop().create_future()
    digest, count = hashlib.sha256(), 0

    @pc.on("datachannel")
    def on_datachannel(channel) -> None:
        @channel.on("message")
        def on_message(message) -> None:
            nonlocal count
            if message:
                digest.update(message)
                count += len(message)
            else:
                channel.send(digest.hexdigest())
                done.set_result(None)

    offer = (await read_json_line())["offer"]
    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    emit({"answer": pc.localDescription.sdp})
    await asyncio.wait_for(done, 300)
    await asyncio.sleep(1.0)  # the answer leaves before the connection closes
    await pc.close()
    return {"bytes": count}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["send", "receive"])
    parser.add_argument("--megabytes", type=int, default=4)
    parser.add_argument("--pause-at", type=int)
    parser.add_argument("--stock", action="store_true")
    args = parser.parse_args()
    if args.role == "send":
        result = asyncio.run(send(args))
    else:
        result = asyncio.run(receive_stock() if args.stock else receive_rtcxfer())
    emit(result)


if __name__ == "__main__":
    main()
