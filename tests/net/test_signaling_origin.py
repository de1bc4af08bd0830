"""A page of another site cannot open a signaling socket (finding 8 of the second hardening round:
the server took WebSocket handshakes from any ``Origin``, so a page elsewhere registered as the
worker of a token-less server, and eight idle cross-origin sockets kept the user's own worker
out). Programs send no ``Origin`` and are not affected."""

from __future__ import annotations

import pytest
from websockets.exceptions import InvalidStatus

from rtcxfer.net.signaling import SignalingServer
from rtcxfer.testing.processes import start_signaling
from tests.support.cli import environment
from tests.support.signaling import LOOPBACK, async_test, raw, register


async def refused_status(server_url: str, origin: str) -> int:
    from rtcxfer.net.signaling import connect_directly

    with pytest.raises(InvalidStatus) as refused:
        await connect_directly(server_url, origin=origin, open_timeout=5)
    return refused.value.response.status_code


@async_test()
async def test_a_page_of_another_site_is_refused_and_holds_no_place() -> None:
    async with SignalingServer(LOOPBACK, 0, max_unregistered_per_address=2) as server:
        for _ in range(8):
            assert await refused_status(server.url, "https://evil.example") == 403
        # None of them took a place: the worker registers as if they had never been.
        worker = await raw(server)
        assert (await register(worker, "lab", "worker", "worker"))["type"] == "registered"


@async_test()
async def test_the_servers_own_page_programs_and_allowed_origins_are_accepted() -> None:
    async with SignalingServer(LOOPBACK, 0, web=True, allowed_origins=["https://lab.example"]) as server:
        own = "http://" + server.url.removeprefix("ws://")
        for origin in (own, "https://lab.example", "HTTPS://LAB.EXAMPLE:443"):
            ws = await raw(server, origin=origin)
            assert (await register(ws, "lab", "client", f"c{hash(origin) & 0xffff}"))["type"] == "registered"
        program = await raw(server)  # no Origin at all
        assert (await register(program, "lab", "worker", "w"))["type"] == "registered"
        for stranger in ("https://lab.example:8443", "http://127.0.0.1:1", "null"):
            assert await refused_status(server.url, stranger) == 403


@pytest.mark.slow
@async_test(timeout=60.0)
async def test_rtcxfer_signal_refuses_other_sites_and_takes_allow_origin(tmp_path) -> None:
    process, url = start_signaling(
        tmp_path, token=None, env=environment(), options=["--allow-origin", "https://lab.example"]
    )
    try:
        assert await refused_status(url, "https://evil.example") == 403
        ws = await raw_url(url, origin="https://lab.example")
        assert (await register(ws, "lab", "worker", "w"))["type"] == "registered"
        await ws.close()
    finally:
        process.stop()
    assert "page of another site" in process.text()


async def raw_url(url: str, **options):
    from rtcxfer.net.signaling import connect_directly

    return await connect_directly(url, open_timeout=5, **options)
