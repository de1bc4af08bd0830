"""Headless Chromium for the browser tests: where it is, whether it can run, and its flags."""

from __future__ import annotations

import os
import shutil

#: The flags of every browser the tests start (playwright adds --headless and a fresh profile).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str | None:
    return os.environ.get("RTCXFER_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def browser_problem() -> str | None:
    """Why no browser test can run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (pip install -e '.[test]')"
    if chromium() is None:
        return "no Chromium on this machine (apt-get install chromium; .ci/run installs it)"
    return None
