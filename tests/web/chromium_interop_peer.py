"""One aiortc peer for the Chromium interoperability test (tests/web/test_web_client.py).

Run inside the test's loopback namespace: it registers as a client, offers to the browser
(registered as a worker), sends ``SEND_FILE`` to it with rtcxfer's own rtc-chunked transport,
then waits for the browser to send a file back and prints ``received NAME SIZE SHA256``. So
aiortc (offering, with its SDP extras and loopback SCTP tuning offer) and the browser's
JavaScript transport meet with nothing of ours in between but the wire protocol.

Usage: chromium_interop_peer.py SIGNAL_URL ROOM TOKEN BROWSER_PEER_ID SEND_FILE RECEIVE_DIR
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from pathlib import Path

from rtcxfer.net.link import Link
from rtcxfer.net.peer import connect_via, signaling_adapter
from rtcxfer.net.signaling import SignalingClient
from rtcxfer.protocol.auth import signaling_token
from rtcxfer.protocol.engine import Engine
from rtcxfer.transport.base import ReceivedFile, TransportContext
from rtcxfer.transport.host import PluginHost

GUARD = 90.0


async def main(url: str, room: str, token: str, browser_id: str, send_file: Path, receive_dir: Path) -> None:
    async with SignalingClient(url, room, "client", "python-peer", signaling_token(token)) as signaling:
        await signaling.wait_for_peer("worker", timeout=GUARD)
        send, receive = signaling_adapter(signaling, browser_id)
        peer, channel = await connect_via(send, receive, "offerer", timeout=GUARD)
    try:
        host = PluginHost(autoload=False)
        received: asyncio.Future[ReceivedFile] = asyncio.get_running_loop().create_future()
        context = TransportContext(role="client", incoming_dir=receive_dir, on_file=received.set_result)
        link = Link(channel, Engine(host.claim, catalogue=host.catalogue), name="python-peer")
        [info] = [info for info in host.transports() if info.name == "rtc-chunked"]
        transport = info.transport(link, context)
        link.add_handler("rtc-chunked", transport)
        runner = asyncio.create_task(link.run())
        await transport.send_file(send_file, send_file.name)
        print("sent", send_file.name, flush=True)
        got = await asyncio.wait_for(received, GUARD)
        digest = hashlib.sha256(got.path.read_bytes()).hexdigest()
        print("received", got.name, got.size, digest, flush=True)
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    finally:
        await peer.close()


if __name__ == "__main__":
    url, room, token, browser_id, send_file, receive_dir = sys.argv[1:7]
    asyncio.run(asyncio.wait_for(main(url, room, token, browser_id, Path(send_file), Path(receive_dir)), GUARD * 2))
