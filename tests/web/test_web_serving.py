"""``rtcxfer signal`` serving the browser client: the files, their headers, and nothing else.

Plain HTTP against a real server on 127.0.0.1; the page itself runs in Chromium in
tests/web/test_web_client.py.
"""

from __future__ import annotations

import asyncio
import re
import socket
import sys
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtcxfer.net.signaling import SignalingClient, SignalingServer
from rtcxfer.testing import run_async
from rtcxfer.testing.processes import SIGNALING_READY, CliProcess
from rtcxfer.web import CONTENT_SECURITY_POLICY, WebAssets

STATIC = resources.files("rtcxfer.web").joinpath("static")
ASSETS = WebAssets()


def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """One raw GET (the path exactly as given: no client-side normalisation)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := connection.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


async def get(server: SignalingServer, path: str) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(http_get, server.port, path)


def test_the_page_and_each_file_come_with_their_type_and_a_strict_policy() -> None:
    async def scenario() -> None:
        async with SignalingServer(web=True) as server:
            assert server.web_url == f"http://127.0.0.1:{server.port}/"
            status, headers, body = await get(server, "/")
            assert status == 200
            assert headers["content-type"] == "text/html; charset=utf-8"
            assert body == STATIC.joinpath("index.html").read_bytes()
            for entry in STATIC.iterdir():
                status, headers, body = await get(server, f"/{entry.name}?v=1")
                assert status == 200, entry.name
                assert body == entry.read_bytes()
                suffix = entry.name.rpartition(".")[2]
                expected = {
                    "js": "text/javascript; charset=utf-8",
                    "json": "application/json",
                    "css": "text/css; charset=utf-8",
                    "html": "text/html; charset=utf-8",
                    "png": "image/png",
                }[suffix]
                assert headers["content-type"] == expected
                assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
                assert headers["x-content-type-options"] == "nosniff"
                assert headers["x-frame-options"] == "DENY"
                assert headers["cache-control"] == "no-store"
                assert headers["referrer-policy"] == "no-referrer"
            # The signaling endpoint still answers WebSocket upgrades on the same port.
            async with SignalingClient(server.url, "room", "worker", "worker"):
                assert server.rooms == {"room": ["worker"]}

    run_async(scenario())


def test_the_policy_allows_only_this_origin_and_no_inline_script() -> None:
    directives = dict(part.strip().split(" ", 1) for part in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY


TRAVERSALS = [
    "/../setup.cfg",
    "/..%2fsetup.cfg",
    "/%2e%2e/rtcxfer/web/__init__.py",
    "/static/app.js",
    "/__init__.py",
    "/./app.js",
    "//app.js",
    "/app.js/",
    "/APP.JS",
    "/index.html%00.js",
    "/..\\..\\setup.cfg",
    "/etc/passwd",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_nothing_but_the_listed_files_is_served(path: str) -> None:
    async def scenario() -> None:
        async with SignalingServer(web=True) as server:
            status, headers, body = await get(server, path)
            assert status == 404
            assert body == b"not found\n"
            assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY

    run_async(scenario())


@given(st.text(max_size=80))
def test_any_request_path_is_a_listed_file_or_404(path: str) -> None:
    response = ASSETS.response(path)
    listed = path.partition("?")[0] in ASSETS.files
    assert response.status_code == (200 if listed else 404)


def test_without_web_the_port_speaks_only_websocket() -> None:
    async def scenario() -> None:
        async with SignalingServer() as server:
            assert server.web_url is None
            status, _, body = await get(server, "/")
            assert status == 426  # websockets: Upgrade Required
            assert b"<html" not in body

    run_async(scenario())


@pytest.mark.slow
def test_rtcxfer_signal_serves_the_page_unless_told_not_to(tmp_path: Path) -> None:
    for flags, served in (([], True), (["--no-web"], False)):
        process = CliProcess(
            "signal", ["signal", "--port", "0", "--token", "t", *flags], tmp_path, python=sys.executable
        )
        try:
            url = process.wait_for(SIGNALING_READY).group(1)
            port = int(url.rpartition(":")[2])
            if served:
                process.wait_for(re.escape(f"web client at http://127.0.0.1:{port}/"))
            status, _, body = http_get(port, "/")
            assert (status, body == STATIC.joinpath("index.html").read_bytes()) == (
                (200, True) if served else (426, False)
            )
        finally:
            process.stop()
        assert ("web client at" in process.text()) is served


class _PageAudit(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "script":
            self._in_script = True
            if "src" not in names:
                self.problems.append("inline <script>")
        if tag == "style":
            self.problems.append("inline <style>")
        self.problems += [f"{tag} {name}=" for name in names if name.startswith("on") or name == "style"]
        self.problems += [
            f"{tag} {name}={value}" for name, value in attrs if value and re.match(r"(https?:)?//", value)
        ]

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False if tag == "script" else self._in_script

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append("script with content")


def test_the_files_load_nothing_from_elsewhere_and_never_turn_text_into_html() -> None:
    audit = _PageAudit()
    audit.feed(STATIC.joinpath("index.html").read_text())
    assert audit.problems == []
    for entry in STATIC.iterdir():
        if not entry.name.endswith(".js"):
            continue
        source = entry.read_text()
        for forbidden in (
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "localStorage",
            "sessionStorage",
            "document.cookie",
            "importScripts",
        ):
            assert forbidden not in source, f"{entry.name} uses {forbidden}"
        assert not re.search(r"""["'`](https?:|wss?:)?//""", source), f"{entry.name} names another origin"
        for imported in re.findall(r'from "([^"]+)"', source):
            assert imported.startswith("./") and STATIC.joinpath(imported[2:]).is_file(), imported
