"""The browser client's files, served by ``rtcxfer signal`` next to its WebSocket endpoint.

A plain HTTP ``GET`` (one without ``Upgrade: websocket``) of ``/`` or of one of the files in
``static/`` gets that file (among them ``protocol.json``, the protocol table the page's codec
loads; see :mod:`rtcxfer.web.protocol_table`); every other path gets 404. Only the names listed
at import time are served, so no request path is ever joined to a directory: ``..``, encoded
slashes and the like cannot reach another file. Every response carries a strict Content-Security-Policy (scripts and
styles from this origin only, no inline script, no eval, connections to this origin only) and
headers that keep the page out of frames and caches.
"""

from __future__ import annotations

import email.utils
from importlib import resources
from pathlib import PurePosixPath
from typing import Any

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from rtcxfer.log import logger

__all__ = ["CONTENT_SECURITY_POLICY", "WebAssets", "web_request_handler"]

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    # JSON is UTF-8 by definition (RFC 8259): the type takes no charset.
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".png": "image/png",
}

#: 'self' covers ws:// and wss:// of the same host and port (CSP level 3), the signaling socket.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    # The page holds a token in memory; nothing of it should outlive the tab.
    "Cache-Control": "no-store",
}


class WebAssets:
    """The static files of the web client, read once: ``{url path: (content type, bytes)}``."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[str, bytes]] = {}
        static = resources.files(__package__).joinpath("static")
        for entry in static.iterdir():
            content_type = CONTENT_TYPES.get(PurePosixPath(entry.name).suffix)
            if content_type is not None and entry.is_file():
                self.files["/" + entry.name] = (content_type, entry.read_bytes())
        self.files["/"] = self.files["/index.html"]

    def response(self, path: str) -> Response:
        """The response to ``GET path`` (a query string is ignored)."""
        found = self.files.get(path.partition("?")[0])
        if found is None:
            return _response(404, "Not Found", "text/plain; charset=utf-8", b"not found\n")
        content_type, body = found
        return _response(200, "OK", content_type, body)


def _response(status: int, reason: str, content_type: str, body: bytes) -> Response:
    headers = Headers(SECURITY_HEADERS)
    headers["Date"] = email.utils.formatdate(usegmt=True)
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body))
    headers["Connection"] = "close"
    return Response(status, reason, headers, body)


def web_request_handler(assets: WebAssets | None = None) -> Any:
    """A ``process_request`` hook for websockets' ``serve``: WebSocket upgrades go on to the
    signaling handler, any other ``GET`` is answered from ``assets``."""
    assets = assets or WebAssets()

    def process_request(connection: Any, request: Request) -> Response | None:
        if "websocket" in request.headers.get("Upgrade", "").lower():
            return None
        response = assets.response(request.path)
        logger.debug("web: GET {!r:.200} -> {}", request.path, response.status_code)
        return response

    return process_request
