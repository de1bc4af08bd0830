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
import json
import os
import random
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from rtcxfer.client.sample import build_sample_package
from rtcxfer.protocol.frames import CHUNK_HEADER_SIZE, pack_chunk_header
from rtcxfer.testing.cluster import Cluster, start_cluster
from rtcxfer.testing.loopback_namespace import LoopbackNamespace, namespace_support_problem
from rtcxfer.testing.processes import CliProcess
from rtcxfer.web.protocol_table import PROTOCOL_TABLE_PATH
from tests.support.browser import CHROMIUM_FLAGS as BASE_FLAGS
from tests.support.browser import browser_problem, chromium
from tests.support.cli import REPO, environment

TOKEN = f"web-{secrets.token_hex(8)}"
ROOM = "web"
SCREENSHOT = REPO / "docs" / "web-client.png"

#: Hang guards (milliseconds for playwright, seconds for processes).
PAGE_GUARD_MS = 90_000
PROCESS_GUARD = 120.0
#: The signaling server closes clients idle this long; the page must reconnect by itself.
IDLE_TIMEOUT = 3.0

#: What the page gets beyond the usual flags: its peers are on 127.0.0.1.
CHROMIUM_FLAGS = [*BASE_FLAGS, "--allow-loopback-in-peer-connection"]


def _browser_problem() -> str | None:
    return browser_problem() or namespace_support_problem()


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_browser_problem() is not None, reason=f"no browser: {_browser_problem()}"),
]


@attrs.define
class Site:
    """The namespace, its signaling server and worker (a cluster whose processes run in the
    namespace), and the browser that visits them."""

    cluster: Cluster
    namespace: LoopbackNamespace
    page_url: str
    browser: object

    @property
    def root(self) -> Path:
        return self.cluster.root

    @property
    def python(self) -> Path:
        """The namespace's python (a wrapper that enters the namespace)."""
        return Path(self.cluster.python)

    @property
    def signal_url(self) -> str:
        return self.cluster.url

    @property
    def worker(self) -> CliProcess:
        return self.cluster.worker

    def start_worker(self, name: str, token: str, *extra: str) -> CliProcess:
        return self.cluster.start_worker(
            ROOM, "--peer-id", name, *extra, name=name, token=token, work_dir=self.root / f"work-{name}"
        )

    def new_page(self, page_url: str | None = None):
        # The media permission lets Chromium enumerate its interfaces (only lo here) instead of
        # offering mDNS names the loopback-only worker would drop.
        context = self.browser.new_context(permissions=["camera", "microphone"], accept_downloads=True)
        page = context.new_page()
        # What the page's own console reports: a CSP violation or an uncaught error shows here.
        page.problems = []
        page.on("console", lambda message: message.type == "error" and page.problems.append(message.text))
        page.on("pageerror", lambda error: page.problems.append(str(error)))
        page.set_default_timeout(PAGE_GUARD_MS)
        page.goto(page_url or self.page_url)
        return page

    def python_submit(self, package: Path, results: Path) -> subprocess.CompletedProcess[str]:
        options = ["--results", str(results), "--timeout", "30", "--quiet"]
        return self.cluster.submit(package, *options, room=ROOM, timeout=PROCESS_GUARD)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    from playwright.sync_api import sync_playwright

    root = tmp_path_factory.mktemp("web")
    with LoopbackNamespace(root / "bin") as namespace:
        python = namespace.wrapper("python", sys.executable)
        browser_binary = namespace.wrapper("chromium", chromium())
        signal_options = ["--idle-timeout", str(IDLE_TIMEOUT)]
        with start_cluster(
            root, token=TOKEN, env=environment("INFO"), signal_options=signal_options, python=python
        ) as cluster:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=str(browser_binary), args=CHROMIUM_FLAGS, headless=True
                )
                try:
                    site = Site(cluster, namespace, page_url_of(cluster.url), browser)
                    cluster.worker = site.start_worker("worker", TOKEN)
                    yield site
                finally:
                    browser.close()


def page_url_of(signal_url: str) -> str:
    return "http" + signal_url[2:] + "/"


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
    # The worker's description (state and job slots) reaches the page.
    assert page.text_content("#worker option[value='worker']") == "worker (idle, 0/1 slots)"
    page.set_input_files("#package", str(package))
    # The server drops the idle page from the room; running a job reconnects on its own.
    page.wait_for_selector("#room-status:has-text('signaling connection is closed')")
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

    assert page.problems == []
    shot = page.screenshot(full_page=True)
    assert shot.startswith(b"\x89PNG")
    if os.environ.get("RTCXFER_WRITE_SCREENSHOT"):
        SCREENSHOT.write_bytes(shot)
    page.context.close()


# --- errors in plain words -------------------------------------------------------------------


def test_a_wrong_room_token_is_a_clear_error(site: Site) -> None:
    page = site.new_page()
    connect(page, token="not-the-token")
    assert wait_for_state(page, "failed") == "failed"
    assert page.text_content("#error") == (
        f"The signaling server refused the token for room “{ROOM}”. Check the token and connect again."
    )
    assert page.input_value("#token") == ""  # the token left the form at once
    page.context.close()


def test_a_worker_that_refuses_the_token_is_a_clear_error(site: Site, tmp_path: Path) -> None:
    # A worker in the same room (the room token is TOKEN) whose own token is another one.
    site.start_worker("picky", "the-pickys-own-token", "--signal-token", TOKEN)
    package = build_sample_package(tmp_path / "small.zip")
    page = site.new_page()
    connect(page, token=TOKEN)
    page.wait_for_selector("#worker option[value='picky']", state="attached")
    page.select_option("#worker", "picky")
    page.set_input_files("#package", str(package))
    page.click("#run")
    assert wait_for_state(page, "done", "failed") == "failed"
    assert page.text_content("#error") == "The worker “picky” refused the token: invalid token."

    # Its own token, with the room's given apart (rtcxfer submit --signal-token), is accepted.
    page.fill("#room", ROOM)
    page.fill("#token", "the-pickys-own-token")
    page.fill("#signal-token", TOKEN)
    page.click("#connect")
    page.wait_for_selector("#room-status:has-text('2 workers')")
    page.select_option("#worker", "picky")
    page.click("#run")
    assert wait_for_state(page, "done", "failed") == "done", page.text_content("#error")
    page.context.close()


# --- leaving the page ------------------------------------------------------------------------

SLEEPER = """\
import os, time
print(f"job pid {os.getpid()}", flush=True)
time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has ended; only its parent has not collected it yet.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ", 1)[-1][:1] != "Z"


def test_closing_the_page_cancels_the_job_and_the_worker_serves_the_next(site: Site, tmp_path: Path) -> None:
    page = site.new_page()
    connect(page)
    page.wait_for_selector("#worker option[value='worker']", state="attached")
    page.set_input_files("#package", str(build_sample_package(tmp_path / "sleeper.zip", program=SLEEPER)))
    page.click("#run")
    page.wait_for_selector("#log:has-text('job pid')")
    pid = int(page.text_content("#log").split("job pid ")[1].split()[0])
    assert _alive(pid)

    page.context.close()
    deadline = time.monotonic() + PROCESS_GUARD
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid), "the cancelled job's process outlived the page"
    assert site.worker.process.poll() is None

    page = site.new_page()
    connect(page)
    page.wait_for_selector("#worker option[value='worker']", state="attached")
    page.set_input_files("#package", str(build_sample_package(tmp_path / "next.zip")))
    page.click("#run")
    assert wait_for_state(page, "done", "failed") == "done", page.text_content("#error")
    assert "sample job: done" in page.text_content("#log")
    page.context.close()


def drop_file(page, path: Path) -> None:
    """Drop ``path`` on the page's drop zone, as a user dragging it from a file manager."""
    page.evaluate(
        """([name, bytes]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], name, { type: "application/zip" }));
            const drop = new DragEvent("drop", { dataTransfer: transfer, bubbles: true });
            document.getElementById("drop").dispatchEvent(drop);
        }""",
        [path.name, list(path.read_bytes())],
    )


def test_the_cancel_button_stops_the_job_of_a_dropped_package(site: Site, tmp_path: Path) -> None:
    page = site.new_page()
    connect(page)
    page.wait_for_selector("#worker option[value='worker']", state="attached")
    drop_file(page, build_sample_package(tmp_path / "dropped-sleeper.zip", program=SLEEPER))
    assert page.text_content("#package-name").startswith("dropped-sleeper.zip (")
    page.click("#run")
    page.wait_for_selector("#log:has-text('job pid')")
    pid = int(page.text_content("#log").split("job pid ")[1].split()[0])
    page.click("#cancel")
    assert wait_for_state(page, "done", "failed") == "failed"
    assert page.text_content("#error").startswith("The job failed: Job job-")
    assert page.text_content("#error").endswith(" was cancelled")
    deadline = time.monotonic() + PROCESS_GUARD
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid)
    page.context.close()


# --- the JavaScript against Python, piece by piece ---------------------------------------------

HASH_LENGTHS = [0, 1, 55, 56, 63, 64, 65, 127, 128, 1000, 65536 + 17]


def test_the_pages_sha256_and_hmac_agree_with_python(site: Site) -> None:
    import hmac

    from rtcxfer.protocol import auth

    page = site.new_page()
    results = page.evaluate(
        """async (lengths) => {
            const { Sha256 } = await import("/sha256.js");
            const { clientProof, workerProof } = await import("/auth.js");
            const hashes = lengths.map((length) => {
                const bytes = Uint8Array.from({ length }, (_, i) => (i * 131 + 7) & 255);
                const hash = new Sha256();
                // Uneven pieces cross every block boundary.
                for (let at = 0, step = 1; at < length; at += step, step = step * 3 % 97 + 1) {
                    hash.update(bytes.subarray(at, at + step));
                }
                return hash.hexDigest();
            });
            const transcript = { clientNonce: "a".repeat(64), workerNonce: "b".repeat(64),
                clientFingerprint: "AB:CD", workerFingerprint: "EF:01", clientTransports: "rtc-chunked" };
            const proofs = ["", "s3cret", "ключ", "x".repeat(100)].map((token) => [
                clientProof(token, transcript), workerProof(token, transcript, "shared-fs,rtc-chunked")]);
            return { hashes, proofs };
        }""",
        HASH_LENGTHS,
    )
    expected = [hashlib.sha256(bytes((i * 131 + 7) & 255 for i in range(n))).hexdigest() for n in HASH_LENGTHS]
    assert results["hashes"] == expected
    transcript = auth.Transcript("a" * 64, "b" * 64, "AB:CD", "EF:01", "rtc-chunked")
    for token, (client, worker) in zip(["", "s3cret", "ключ", "x" * 100], results["proofs"]):
        assert hmac.compare_digest(client, auth.client_proof(token, transcript))
        assert hmac.compare_digest(worker, auth.worker_proof(token, transcript, "shared-fs,rtc-chunked"))
    page.context.close()


def test_chromium_and_aiortc_move_files_both_ways_with_rtc_chunked(site: Site, tmp_path: Path) -> None:
    """The aiortc side offers (as rtcxfer's client does, SCTP tuning offer included), the
    browser answers; a file goes to the browser with Python's rtc-chunked and comes back with
    the browser's."""
    from rtcxfer.net.aiortc_internals import tuning_supported

    outbound = tmp_path / "outbound.bin"
    outbound.write_bytes(random.Random(7).randbytes(8 * 1024 * 1024 + 12345))
    received = tmp_path / "received"
    received.mkdir()
    room = f"interop-{secrets.token_hex(3)}"
    peer_script = Path(__file__).with_name("chromium_interop_peer.py")
    python_peer = subprocess.Popen(
        [str(site.python), str(peer_script), site.signal_url, room, TOKEN, "chromium", str(outbound), str(received)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment("INFO"),
        cwd=tmp_path,
    )
    try:
        page = site.new_page()
        browser_side = page.evaluate(
            """async ({ room, token }) => {
                const { Signaling, signalingUrlOfPage } = await import("/signaling.js");
                const { signalingToken } = await import("/auth.js");
                const { answerChannel } = await import("/peer.js");
                const { RtcChunked } = await import("/transfer.js");
                const signaling = await Signaling.connect(
                    signalingUrlOfPage(), { room, token: signalingToken(token), role: "worker", peerId: "chromium" });
                const offer = await new Promise((resolve) => {
                    signaling.onRelay = (from, payload) => {
                        if (payload.kind === "offer") resolve({ from, sdp: payload.sdp });
                    };
                });
                const channel = await answerChannel(signaling, offer.from, offer.sdp);
                let transfer;
                const file = new Promise((resolve) => { transfer = new RtcChunked(channel, { onFile: resolve }); });
                channel.onFrame = (frame) => transfer.handleFrame(frame);
                channel.onChunk = (chunk) => transfer.handleChunk(chunk);
                const got = await file;
                const sent = await transfer.send(got.blob, "echo/" + got.name);
                return { name: got.name, size: got.size, sha256: got.sha256, sentSha256: sent.sha256,
                         offer: offer.sdp, maxMessageSize: channel.maxMessageSize };
            }""",
            {"room": room, "token": TOKEN},
        )
        out, err = python_peer.communicate(timeout=PROCESS_GUARD)
    finally:
        if python_peer.poll() is None:
            python_peer.kill()
            python_peer.wait()
    assert python_peer.returncode == 0, err
    digest = hashlib.sha256(outbound.read_bytes()).hexdigest()
    assert browser_side["name"] == "outbound.bin"
    assert browser_side["size"] == outbound.stat().st_size
    assert browser_side["sha256"] == browser_side["sentSha256"] == digest
    # The tuned side's offer (where this aiortc can be tuned), which Chromium must ignore.
    assert ("a=x-rtcxfer-sctp-packet" in browser_side["offer"]) is tuning_supported()
    assert f"received echo/outbound.bin {outbound.stat().st_size} {digest}" in out
    assert (received / "echo" / "outbound.bin").read_bytes() == outbound.read_bytes()
    page.context.close()


#: The protocol table the page loads (generated from the frame definitions; a test in
#: tests/protocol/test_protocol_table.py keeps it current).
PROTOCOL_TABLE = json.loads(PROTOCOL_TABLE_PATH.read_text(encoding="utf-8"))


def test_the_page_speaks_the_protocol_table_it_is_served(site: Site) -> None:
    page = site.new_page()
    loaded = page.evaluate(
        """async () => {
            const frames = await import("/frames.js");
            const { PROTOCOL_VERSION } = await import("/session.js");
            const { DEFAULT_CHUNK_SIZE } = await import("/transfer.js");
            const header = frames.chunkHeader(frames.hexToBytes("ab".repeat(16)), 65536);
            const parsed = frames.parseChunk(new Uint8Array([...header, 7]));
            return { table: frames.PROTOCOL, version: PROTOCOL_VERSION, errorReports: [...frames.ERROR_REPORTS],
                     header: frames.bytesToHex(header), parsed: { ...parsed, payload: Array.from(parsed.payload) },
                     defaultChunkSize: DEFAULT_CHUNK_SIZE };
        }"""
    )
    assert loaded["table"] == PROTOCOL_TABLE
    # The page's own code speaks the table's version (a new version needs new page code).
    assert loaded["version"] == PROTOCOL_TABLE["protocol_version"]
    assert sorted(loaded["errorReports"]) == PROTOCOL_TABLE["error_reports"]
    assert bytes.fromhex(loaded["header"]) == pack_chunk_header("ab" * 16, 65536)
    assert loaded["parsed"] == {"transferId": "ab" * 16, "offset": 65536, "payload": [7]}
    assert loaded["defaultChunkSize"] == 262144 - CHUNK_HEADER_SIZE
    assert page.problems == []
    page.context.close()


# A strategy for each field's raw text, by the field's kind in the table: mostly valid values,
# sometimes near misses, so that both acceptance and refusal are compared.
def _raw_field(field: dict):
    from hypothesis import strategies as st

    kind, length = field["kind"], field["length"]
    valid = {
        "token": lambda: st.from_regex(r"[A-Za-z0-9._,+=@-]{1,12}", fullmatch=True),
        "text": lambda: st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20),
        "int": lambda: st.integers(0, 2**53 - 1).map(str),
        "float": lambda: st.floats(0, 1e20, allow_nan=False).map(repr),
        "hex": lambda: st.binary(min_size=length // 2, max_size=length // 2).map(bytes.hex),
    }[kind]()
    near_miss = {
        "token": lambda: st.sampled_from(["", "a b", "x" * 129, "a:b", "é"]),
        "text": lambda: st.sampled_from(["", ":", "a:", ":a", "a::b"]),
        "int": lambda: st.sampled_from(["01", "-1", "1.0", "", "1e3", str(2**64), str(2**53 + 1)]),
        "float": lambda: st.one_of(
            st.floats(0, 1e6).map(lambda x: f"{x:.3f}"), st.sampled_from(["1e5", "3", "inf", "-0.0"])
        ),
        "hex": lambda: st.one_of(
            st.binary(min_size=length // 2, max_size=length // 2).map(lambda b: b.hex().upper()),
            st.binary(min_size=length // 2 - 1, max_size=length // 2 - 1).map(bytes.hex),
        ),
    }[kind]()
    return st.one_of(valid, valid, valid, near_miss)


ID32 = "bf1a8fe1e92ca866f4f55cfddd83a44c"
SHA = "bcf7160eff048f099aa8ce0a0d75c22528ccb83a3c68b649d2f614205948f90a"
#: Known edges: optional fields, greedy fields holding "::", numbers in every non-canonical form.
CODEC_EDGES = [
    "JOB_COMPLETE::job-1::job-1::2::0.11",
    "JOB_COMPLETE::job-1::rtcxfer-results/job-1",
    *(
        f"JOB_COMPLETE::j::p::2::{number}"
        for number in ("3", "3.0", "1.50", "1e-05", "0.00001", "1e+16", "1e16", "inf")
    ),
    "JOB_COMPLETE::j::a::b::2::0.5",
    "JOB_COMPLETE::j::p::9007199254740993::1.0",
    "JOB_PROGRESS::j::9007199254740993::1",
    "JOB_PROGRESS::j::01::1",
    f"FILE_META::{ID32}::a::b.zip::5937::{SHA}::65509",
    f"FILE_META::{ID32}::::5937::{SHA}::65509",
    f"FILE_ACK::{ID32.upper()}::{SHA}",
    f"HELLO::2::{SHA}::shared-fs,rtc-chunked",
    "WELCOME::2::rtc-chunked::none",
    "WELCOME::2::rtc-chunked",
    "PATH_ERROR::Input path does not exist: a::b.zip",
    "JOB_LOG::job-1::",
    "JOB_LOG::job 1::x",
    "AUTH_FAILED",
    "NOT_A_FRAME::x",
    "DIRECT_RESULT::client-connects::-",
    "DIRECT_RESULT::unreachable::gave up: a::b",
    f"DIRECT_OFFER::42693::{SHA}::{SHA}::{SHA}::127.0.0.1,::1",
    f"SHARED_PROBE::{SHA}::.rtcxfer/probes/x.probe",
    "SHARED_PROBE_RESULT::verified",
    "WORKER_BUSY::all 2 job slots are taken",
]


def _frame_texts():
    from hypothesis import strategies as st

    @st.composite
    def frame_text(draw) -> str:
        type_name = draw(st.sampled_from(sorted(PROTOCOL_TABLE["frame_types"])))
        fields = list(PROTOCOL_TABLE["frame_types"][type_name]["fields"])
        count = draw(st.sampled_from([len(fields), len(fields), max(0, len(fields) - 2), len(fields) + 1]))
        fields = (fields + [{"kind": "text", "length": None}])[:count]
        return "::".join([type_name, *(draw(_raw_field(field)) for field in fields)])

    # Long lists: one browser round trip checks many frames.
    return st.lists(frame_text(), min_size=100, max_size=150)


def test_the_pages_frame_codec_accepts_exactly_what_python_accepts(site: Site) -> None:
    from hypothesis import HealthCheck, Phase, example, given, settings

    from rtcxfer.protocol.errors import RemoteProtocolError
    from rtcxfer.transport.host import PluginHost

    # What the table was made from: the core frames and the built-in transports' frames.
    catalogue = PluginHost(autoload=False).catalogue
    page = site.new_page()
    page.evaluate("async () => { window.frames_ = await import('/frames.js'); }")

    # No shrinking (each step would be a browser round trip): the failing frame is named in
    # the assertion message anyway.
    @settings(
        max_examples=30,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(_frame_texts())
    @example(CODEC_EDGES)
    def check(texts: list[str]) -> None:
        decoded = page.evaluate(
            """(texts) => texts.map((text) => {
                try { return window.frames_.decodeFrame(text); } catch (error) {
                    if (!(error instanceof window.frames_.FrameError)) throw error;
                    return null;
                }
            })""",
            texts,
        )
        for text, by_page in zip(texts, decoded):
            try:
                frame = catalogue.decode(text)
            except RemoteProtocolError:
                assert by_page is None, text
                continue
            expected = {spec.name: getattr(frame, spec.name) for spec in frame.FIELDS}
            expected = {name: value for name, value in expected.items() if value is not None}
            if any(type(value) is int and value > 2**53 - 1 for value in expected.values()):
                # Beyond JavaScript's exact integers: the page refuses rather than round.
                assert by_page is None, text
                continue
            assert by_page is not None, text
            # JSON has one number type: compare numbers as floats.
            normalise = {
                name: float(value) if type(value) in (int, float) else value for name, value in by_page.items()
            }
            assert normalise == {
                "type": frame.TYPE,
                **{name: float(value) if type(value) in (int, float) else value for name, value in expected.items()},
            }, text

    check()
    page.context.close()


def test_the_pages_receiver_refuses_what_a_hostile_worker_sends(site: Site) -> None:
    """The page's rtc-chunked receiver against frames no honest worker sends; the channel is a
    recording stand-in (a unit test of the receiver's rules, inside the real browser)."""
    sha_of_abc = hashlib.sha256(b"abc").hexdigest()
    page = site.new_page()
    outcome = page.evaluate(
        """async (shaOfAbc) => {
            const { RtcChunked } = await import("/transfer.js");
            const { chunkHeader, hexToBytes } = await import("/frames.js");
            const replies = [];
            const files = [];
            const channel = { reply: (type, values) => replies.push([type, values]), maxMessageSize: 65536 };
            const transfer = new RtcChunked(channel, { maxFileBytes: 1000, onFile: (file) => files.push(file.name) });
            const id = (n) => n.toString(16).padStart(32, "0");
            const meta = (n, name, size = 3, sha256 = shaOfAbc) => transfer.handleFrame(
                { type: "FILE_META", transfer_id: id(n), name, size, sha256, chunk_size: 65509 });
            const end = (n) => transfer.handleFrame({ type: "FILE_END", transfer_id: id(n) });
            const chunk = (n, offset, text) => {
                const payload = new TextEncoder().encode(text);
                transfer.handleChunk({ transferId: id(n), offset, payload });
            };
            for (const [n, name] of [[1, "../up"], [2, "/abs"], [3, "a//b"], [4, "C:x"], [5, "a\\\\b"],
                                     [6, ".x." + "0".repeat(32) + ".part"], [7, "ok\\u0007"]]) meta(n, name);
            meta(8, "big", 1001);
            meta(9, "wrong-hash", 3, "0".repeat(64)); chunk(9, 0, "abc"); end(9);
            meta(10, "short"); chunk(10, 0, "ab"); end(10);
            meta(11, "gap"); chunk(11, 1, "bc");
            meta(12, "long", 2); chunk(12, 0, "abc");
            chunk(99, 0, "abc");
            meta(13, "dir/good.txt"); chunk(13, 0, "a"); chunk(13, 1, "bc"); end(13);
            return { replies, files };
        }""",
        sha_of_abc,
    )
    replies = outcome["replies"]
    errors = {values["transfer_id"][-2:]: values["reason"] for kind, values in replies if kind == "FILE_ERROR"}
    for n in ("01", "02", "03", "04", "05", "06", "07"):
        assert errors[n].startswith("refused name:"), (n, errors.get(n))
    assert errors["08"] == "file larger than 1000 bytes"
    assert errors["09"].startswith("SHA-256 mismatch: the received bytes hash to ")
    assert errors["0a"] == "incomplete: 2 of 3 bytes"
    assert errors["0b"] == "chunk at offset 1, expected 0"
    assert errors["0c"] == "more bytes than the announced size"
    assert errors["63"] == "unknown transfer"
    assert "0d" not in errors
    assert ["FILE_ACK", {"transfer_id": "0" * 30 + "0d", "sha256": sha_of_abc}] in outcome["replies"]
    # Only the verified file is ever offered.
    assert outcome["files"] == ["dir/good.txt"]
    page.context.close()


def test_the_page_gathers_a_relay_candidate_with_the_credentials_the_signaling_server_gave_it(
    site: Site, tmp_path: Path
) -> None:
    """A signaling server started with --stun/--turn hands the page its ICE servers, and with the
    page's own TURN credential coturn (in the namespace, on 127.0.0.1) allocates it a relay."""
    import base64
    import hmac

    from rtcxfer.testing.processes import SIGNALING_READY
    from tests.support.turn_server import coturn, turnserver_problem

    if turnserver_problem() is not None:
        pytest.skip(turnserver_problem())
    secret = f"web-turn-{secrets.token_hex(8)}"
    (tmp_path / "turn-secret").write_text(secret + "\n")
    with coturn(tmp_path / "turn", secret, prefix=site.namespace.command()) as turn:
        stun_url, udp, tcp = turn.stun_url, turn.turn_url("udp"), turn.turn_url("tcp")
        signal = site.cluster.start(
            "signal-ice", "signal", "--host", "127.0.0.1", "--port", "0", "--token", TOKEN, "--stun", stun_url,
            "--turn", udp, "--turn", tcp, "--turn-secret-file", str(tmp_path / "turn-secret"),
        )
        try:
            page = site.new_page(page_url_of(signal.wait_for(SIGNALING_READY).group(1)))
            outcome = page.evaluate(
                """async ({ room, token }) => {
                    const { Signaling, signalingUrlOfPage } = await import("/signaling.js");
                    const { signalingToken } = await import("/auth.js");
                    const signaling = await Signaling.connect(
                        signalingUrlOfPage(), { room, token: signalingToken(token), peerId: "client-web" });
                    // As offerChannel builds its peer connection.
                    const pc = new RTCPeerConnection({ iceServers: signaling.iceServers });
                    pc.createDataChannel("rtcxfer", { ordered: true });
                    await pc.setLocalDescription(await pc.createOffer());
                    await new Promise((resolve) => {
                        const done = () => pc.iceGatheringState === "complete" && resolve();
                        pc.addEventListener("icegatheringstatechange", done);
                        done();
                    });
                    const result = { iceServers: signaling.iceServers, sdp: pc.localDescription.sdp };
                    pc.close();
                    signaling.close();
                    return result;
                }""",
                {"room": "ice", "token": TOKEN},
            )
            page.context.close()
        finally:
            signal.stop()
    stun, turn_entry = outcome["iceServers"]
    assert stun == {"urls": [f"stun:127.0.0.1:{turn.port}"]}
    assert turn_entry["urls"] == [udp, tcp] and turn_entry["username"].endswith(":client-web")
    expected = base64.b64encode(hmac.new(secret.encode(), turn_entry["username"].encode(), "sha1").digest()).decode()
    assert turn_entry["credential"] == expected
    relays = [line for line in outcome["sdp"].splitlines() if line.startswith("a=candidate:") and "typ relay" in line]
    assert relays and all(" 127.0.0.1 " in line for line in relays), outcome["sdp"]
