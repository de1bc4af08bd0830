"""A job's package is extracted while it arrives, whichever transport moves it, and the client
sees the same job and the same refusals as when the worker extracted it afterwards."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import zipfile
from pathlib import Path

import pytest

from rtcxfer.client.rtc_client import JobResult, RTCClient
from rtcxfer.protocol import texts
from rtcxfer.testing import run_async
from rtcxfer.worker.rtc_worker_client import RTCWorkerClient
from tests.support.legacy_client import expected_results, legacy_package, sample_data, unzip
from tests.support.worker_harness import TOKEN, attached_client, make_worker
from tests.support.zips import piped_archive
from tests.worker.test_legacy_worker import NAME, legacy_session

MiB = 1024 * 1024
JOB = (
    "import hashlib, os, pathlib\n"
    "data = pathlib.Path('blob.bin').read_bytes()\n"
    "pathlib.Path(os.environ['RTCXFER_OUTPUT_DIR'], 'sha.txt').write_text(hashlib.sha256(data).hexdigest())\n"
)
STREAMED = "files while it arrived"
EXTRACTED_AFTER = "files in "


def stored_package(path: Path, blob: bytes, method: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", method) as archive:
        archive.writestr("rtcxfer.json", json.dumps({"command": ["python", "job.py"]}))
        archive.writestr("job.py", JOB)
        archive.writestr("blob.bin", blob)
    return path


def submit(tmp_path: Path, package: Path, transport: str, *, streaming: bool = True) -> JobResult:
    worker = RTCWorkerClient(token=TOKEN, work_dir=tmp_path / "work")
    worker.extract_while_receiving = streaming

    async def scenario():
        client = RTCClient(token=TOKEN, detect_shared_storage=False, results_dir=tmp_path / "results")
        async with attached_client(worker, client):
            return await client.submit(package, transport=transport)

    return run_async(scenario())


def messages(logs) -> str:
    return "\n".join(message for _, message in logs)


@pytest.mark.parametrize("transport", ["rtc-chunked", "direct"])
@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["stored", "deflated"])
def test_the_package_is_extracted_while_it_arrives_and_the_job_runs_on_it(tmp_path, logs, transport, method):
    blob = os.urandom(6 * MiB)
    result = submit(tmp_path, stored_package(tmp_path / "pkg.zip", blob, method), transport)
    assert result.ok, result.failure
    assert result.input_transport == transport
    assert (result.results_dir / "sha.txt").read_text() == hashlib.sha256(blob).hexdigest()
    assert STREAMED in messages(logs) and EXTRACTED_AFTER not in messages(logs)


def test_a_package_written_through_a_pipe_runs_as_before(tmp_path, logs):
    """Data descriptors (``zip -``, zipfile on a pipe): extracted from the received ZIP."""
    blob = os.urandom(MiB)
    files = {"rtcxfer.json": json.dumps({"command": ["python", "job.py"]}).encode(), "job.py": JOB.encode()}
    package = tmp_path / "piped.zip"
    package.write_bytes(piped_archive({**files, "blob.bin": blob}))
    result = submit(tmp_path, package, "rtc-chunked")
    assert result.ok, result.failure
    assert (result.results_dir / "sha.txt").read_text() == hashlib.sha256(blob).hexdigest()
    assert "not extracted while received" in messages(logs) and EXTRACTED_AFTER in messages(logs)


def _corrupted_blob(path: Path) -> Path:
    """A package whose blob's bytes no longer match its CRC (the client checks only the manifest)."""
    data = bytearray(stored_package(path, os.urandom(2 * MiB)).read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(data)
    return path


def _traversal(path: Path) -> Path:
    stored_package(path, b"x")
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("../../escaped.txt", b"evil")
    return path


@pytest.mark.parametrize("make", [_corrupted_blob, _traversal], ids=["bad CRC", "traversal"])
def test_a_hostile_package_is_refused_in_the_same_words_and_leaves_nothing(tmp_path, logs, make):
    package = make(tmp_path / "bad.zip")
    streamed = submit(tmp_path / "streamed", package, "rtc-chunked")
    after = submit(tmp_path / "after", package, "rtc-chunked", streaming=False)
    assert not streamed.ok and not after.ok

    def words(result: JobResult) -> str:
        assert result.failure is not None
        return re.sub(r"Job \S+", "Job <id>", result.failure)

    assert f"Job <id> {texts.PACKAGE_REFUSED}: " in words(streamed)
    assert words(streamed) == words(after)
    for side in ("streamed", "after"):
        work = tmp_path / side / "work"
        left = [path for path in work.rglob("*") if path.is_file()]
        assert left == [], left
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path.parent / "escaped.txt").exists()


def test_a_legacy_upload_is_extracted_while_it_arrives(tmp_path, logs):
    worker = make_worker(None, tmp_path / "work", legacy=True)
    data = sample_data("streamed", 2000)

    async def scenario():
        async with legacy_session(worker) as client:
            return await client.run_rtc_job(legacy_package(NAME, data), NAME)

    _, name, result = run_async(scenario())
    assert name == f"trained_{NAME}" and unzip(result) == expected_results(data)
    assert re.search(r"via legacy-upload\) and extracted \d+ files while it arrived", messages(logs))


@pytest.mark.parametrize("transport", ["rtc-chunked", "direct"])
def test_an_upload_stopped_while_extracted_is_kept_whole_and_the_rerun_resumes(tmp_path, logs, transport):
    """The client stops mid-upload (its Ctrl-C: the job cancelled, the session closed): the
    worker writes what it extracted back into the partial and keeps it; the re-run resumes from
    there and the job reads its data byte for byte."""
    blob = os.urandom(48 * MiB)
    package = stored_package(tmp_path / "pkg.zip", blob)
    worker = RTCWorkerClient(token=TOKEN, work_dir=tmp_path / "work")
    kept = tmp_path / "work" / "partial-uploads"

    def staged_bytes() -> int:
        return sum(path.stat().st_size for path in (tmp_path / "work").glob("session-*/job-*/pkg-*/blob.bin"))

    async def scenario():
        client = RTCClient(token=TOKEN, detect_shared_storage=False, results_dir=tmp_path / "results")
        async with attached_client(worker, client):
            submitting = asyncio.ensure_future(client.submit(package, transport=transport))
            while staged_bytes() < 4 * MiB:
                assert not submitting.done(), submitting
                await asyncio.sleep(0.002)
            submitting.cancel()
            await asyncio.gather(submitting, return_exceptions=True)
        while not (kept.is_dir() and any(kept.iterdir())):
            await asyncio.sleep(0.02)
        (partial,) = kept.iterdir()
        prefix = partial.read_bytes()
        second = RTCClient(token=TOKEN, detect_shared_storage=False, results_dir=tmp_path / "results")
        async with attached_client(worker, second):
            return prefix, await second.submit(package, transport=transport)

    prefix, result = run_async(scenario())
    whole = package.read_bytes()
    assert 4 * MiB < len(prefix) < len(whole) and prefix == whole[: len(prefix)]
    assert result.ok, result.failure
    assert f"received pkg.zip ({len(whole)} bytes), resumed from {len(prefix)}, verified" in messages(logs)
    assert (result.results_dir / "sha.txt").read_text() == hashlib.sha256(blob).hexdigest()
    assert not any(kept.iterdir())
