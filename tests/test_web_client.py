"""The browser client, tested in real headless Chromium against a real ``rtcxfer signal`` and a
real ``rtcxfer worker``.

Chromium gathers ICE candidates on every interface it can see, so the browser, the signaling
server, the workers and every Python peer of these tests run inside one network namespace whose
only interface is ``lo`` (:class:`~rtcxfer.testing.loopback_namespace.LoopbackNamespace`): no
packet can leave it. playwright drives the system's Chromium (the Debian package ``chromium``)
through a wrapper that enters the namespace; it talks to the browser over a pipe, which crosses
namespaces. The tests skip, saying why, only where no browser can be had.

Chromium hides host addresses behind mDNS names unless the page's origin holds a media
permission; the tests grant camera and microphone to their browser context so that its one
candidate is 127.0.0.1, which the loopback-only worker accepts.

Hang guards below are generous for a loaded 2-core machine; nothing asserts a speed.
"""

from __future__ import annotations

import hashlib
import os
import random
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from rtcxfer.sample import build_sample_package
from rtcxfer.testing.loopback_namespace import LoopbackNamespace, namespace_support_problem
from rtcxfer.testing.processes import WORKER_READY, CliProcess, start_signaling

REPO = Path(__file__).resolve().parent.parent
TOKEN = f"web-{secrets.token_hex(8)}"
ROOM = "web"
SCREENSHOT = REPO / "docs" / "web-client.png"

#: Hang guards (milliseconds for playwright, seconds for processes).
PAGE_GUARD_MS = 90_000
PROCESS_GUARD = 120.0

#: The flags of every browser these tests start (playwright adds --headless and a fresh profile).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-loopback-in-peer-connection",
]


def _chromium() -> str | None:
    return os.environ.get("RTCXFER_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _browser_problem() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (pip install -e '.[test]')"
    if _chromium() is None:
        return "no Chromium on this machine (apt-get install chromium; .ci/run installs it)"
    return namespace_support_problem()


pytestmark = pytest.mark.skipif(_browser_problem() is not None, reason=f"no browser: {_browser_problem()}")


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTCXFER_") and k != "SHARED_STORAGE_ROOT"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["RTCXFER_LOG_LEVEL"] = "INFO"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@attrs.define
class Site:
    """The namespace, its signaling server and worker, and the browser that visits them."""

    root: Path
    namespace: LoopbackNamespace
    python: Path
    signal_url: str
    page_url: str
    worker: CliProcess
    services: list[CliProcess]
    browser: object

    def start_worker(self, name: str, token: str) -> CliProcess:
        args = ["worker", "--signal", self.signal_url, "--room", ROOM, "--token", token, "--peer-id", name]
        args += ["--work-dir", str(self.root / f"work-{name}")]
        service = CliProcess(name, args, self.root, env=_environment(), python=self.python)
        self.services.append(service)
        service.wait_for(WORKER_READY)
        return service

    def new_page(self):
        # The media permission lets Chromium enumerate its interfaces (only lo here) instead of
        # offering mDNS names the loopback-only worker would drop.
        context = self.browser.new_context(permissions=["camera", "microphone"], accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(PAGE_GUARD_MS)
        page.goto(self.page_url)
        return page

    def python_submit(self, package: Path, results: Path) -> subprocess.CompletedProcess[str]:
        args = [str(self.python), "-m", "rtcxfer.cli", "submit", str(package), "--signal", self.signal_url]
        args += ["--room", ROOM, "--token", TOKEN, "--results", str(results), "--timeout", "30", "--quiet"]
        return subprocess.run(args, capture_output=True, text=True, env=_environment(), cwd=self.root,
                              timeout=PROCESS_GUARD, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    from playwright.sync_api import sync_playwright

    root = tmp_path_factory.mktemp("web")
    services: list[CliProcess] = []
    with LoopbackNamespace(root / "bin") as namespace:
        try:
            python = namespace.wrapper("python", sys.executable)
            chromium = namespace.wrapper("chromium", _chromium())
            signaling, signal_url = start_signaling(root, token=TOKEN, env=_environment(), python=python)
            services.append(signaling)
            page_url = "http" + signal_url[2:] + "/"
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_FLAGS, headless=True)
                try:
                    site = Site(root, namespace, python, signal_url, page_url, None, services, browser)  # type: ignore[arg-type]
                    site.worker = site.start_worker("worker", TOKEN)
                    yield site
                finally:
                    browser.close()
        finally:
            for service in reversed(services):
                service.stop()


def connect(page, token: str = TOKEN, room: str = ROOM) -> None:
    page.fill("#room", room)
    page.fill("#token", token)
    page.click("#connect")


def wait_for_state(page, *states: str) -> str:
    selector = ", ".join(f'body[data-state="{state}"]' for state in states)
    page.wait_for_selector(selector, state="attached")
    return page.get_attribute("body", "data-state")


def random_package(path: Path, size: int, seed: int) -> Path:
    """A sample job package of at least ``size`` bytes (random data does not compress)."""
    return build_sample_package(path, data=random.Random(seed).randbytes(size))


# --- the whole job, as a user does it ----------------------------------------------------


def test_page_runs_a_job_and_downloads_what_the_python_client_gets(site: Site, tmp_path: Path) -> None:
    package = random_package(tmp_path / "big-package.zip", 16 * 1024 * 1024, seed=16)
    assert package.stat().st_size >= 16 * 1024 * 1024

    page = site.new_page()
    connect(page)
    page.wait_for_selector("#worker option[value='worker']", state="attached")
    page.set_input_files("#package", str(package))
    page.click("#run")
    assert wait_for_state(page, "done", "failed") == "done", page.text_content("#error")

    assert page.get_attribute("#upload-bar", "value") == "100"
    assert page.text_content("#upload-text") == "100 %"
    log = page.text_content("#log")
    assert "sample job: done" in log
    assert "sample job:" in log.splitlines()[0]

    downloaded = tmp_path / "browser"
    links = page.query_selector_all("#results a")
    names = sorted(link.get_attribute("data-name") for link in links)
    for link in links:
        with page.expect_download() as info:
            link.click()
        target = downloaded / link.get_attribute("data-name")
        target.parent.mkdir(parents=True, exist_ok=True)
        info.value.save_as(target)

    python_results = tmp_path / "python"
    completed = site.python_submit(package, python_results)
    assert completed.returncode == 0, completed.stderr
    [job_dir] = list(python_results.iterdir())
    expected = sorted(p.relative_to(job_dir).as_posix() for p in job_dir.rglob("*") if p.is_file())
    assert names == expected == ["copy/data.txt", "summary.txt"]
    for name in expected:
        assert (downloaded / name).read_bytes() == (job_dir / name).read_bytes(), name
    assert (downloaded / "copy/data.txt").stat().st_size == 16 * 1024 * 1024

    shot = page.screenshot(full_page=True)
    assert shot.startswith(b"\x89PNG")
    if os.environ.get("RTCXFER_WRITE_SCREENSHOT"):
        SCREENSHOT.write_bytes(shot)
    page.context.close()
