"""The browser page behind a NAT: headless Chromium in the NAT bed's client namespace (behind a
symmetric NAT) runs a job on an ``rtcxfer worker`` behind another symmetric NAT, through the TURN
relay, with the ICE servers and TURN credentials the page got from ``rtcxfer signal``.

Only a relay gets through two symmetric NATs, so a completed job is the proof; the worker says
which way its data channel went, and coturn's log shows the page's own allocation. Chromium runs
through a wrapper that enters the client's namespace (``Host.wrapper``); playwright talks to it
over a pipe. The page's origin is granted camera and microphone so that Chromium offers its
host address, not an mDNS name.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from rtcxfer.client.sample import build_sample_package, sample_text
from rtcxfer.testing.job_files import expected_sample_results
from rtcxfer.testing.nat_bed import NatKind
from tests.support.browser import CHROMIUM_FLAGS, browser_problem, chromium
from tests.support.nat_cluster import nat_cluster

TOKEN = f"webnat-{secrets.token_hex(8)}"
ROOM = "web-behind-nat"
PAGE_GUARD_MS = 120_000
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(browser_problem() is not None, reason=f"no browser: {browser_problem()}"),
]


def test_the_page_behind_a_symmetric_nat_runs_a_job_through_the_turn_relay(nat_bed, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    bed = nat_bed(client_nat=NatKind.SYMMETRIC, worker_nat=NatKind.SYMMETRIC)
    turn = bed.start_turn()
    data = f"# the page behind NAT {secrets.token_hex(8)}\n".encode() + sample_text(3000)
    package = build_sample_package(tmp_path / "package.zip", data=data)
    signal = ["--stun", turn.stun_url, "--turn", turn.turn_udp_url, "--turn", turn.turn_tcp_url,
              "--turn-secret-file", str(turn.secret_file)]
    with nat_cluster(bed, tmp_path, token=TOKEN, room=ROOM, signal_options=signal) as cluster:
        browser_binary = bed.client.wrapper(tmp_path / "bin", "chromium", chromium())
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(browser_binary), args=CHROMIUM_FLAGS,
                                                 headless=True)
            try:
                context = browser.new_context(permissions=["camera", "microphone"], accept_downloads=True)
                page = context.new_page()
                problems: list[str] = []
                page.on("pageerror", lambda error: problems.append(str(error)))
                page.set_default_timeout(PAGE_GUARD_MS)
                page.goto("http" + cluster.url[2:] + "/")
                page.fill("#room", ROOM)
                page.fill("#token", TOKEN)
                page.click("#connect")
                page.wait_for_selector("#worker option[value='worker']", state="attached")
                page.set_input_files("#package", str(package))
                page.click("#run")
                page.wait_for_selector('body[data-state="done"], body[data-state="failed"]', state="attached")
                state = page.get_attribute("body", "data-state")
                assert state == "done", (page.text_content("#error"), cluster.worker.text()[-3000:])
                downloaded = {}
                for link in page.query_selector_all("#results a"):
                    with page.expect_download() as info:
                        link.click()
                    target = tmp_path / "browser" / link.get_attribute("data-name")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    info.value.save_as(target)
                    downloaded[link.get_attribute("data-name")] = target.read_bytes()
                context.close()
            finally:
                browser.close()
        assert downloaded == expected_sample_results(data)
        assert problems == []
        said = cluster.worker.wait_for(r"client (client-\w+): data channel (via TURN relay [^\n]+)")
        page_peer = said.group(1)
    # The page allocated a relay of its own with the credential the signaling server made for it.
    log = turn.log_text()
    assert f":{page_peer}>: incoming packet ALLOCATE processed, success" in log, log[-3000:]
