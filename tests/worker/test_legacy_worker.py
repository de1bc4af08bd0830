"""A real RTCWorkerClient(legacy=True) served over two real aiortc peers on loopback, driven by
the legacy test client: whole jobs, and everything hostile a legacy client can send."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
import zipfile
from pathlib import Path

import pytest
from loguru import logger

from rtcxfer.net import peer as rtc
from rtcxfer.testing import run_async
from tests.support.legacy_client import (
    KEEP_ALIVE,
    TRAIN_SCRIPT,
    LegacyClient,
    expected_results,
    files_under,
    legacy_package,
    sample_data,
    unzip,
)
from tests.support.small_disk import small_tmpfs
from tests.support.worker_harness import make_worker, worker_session

WAIT = 60.0
NAME = "labels.v001.slp.training_job.zip"
STEM = NAME[:-4]


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    root = tmp_path / "shared"
    (root / "jobs").mkdir(parents=True)
    return root


@pytest.fixture
def worker(shared: Path, tmp_path: Path):
    return make_worker(shared, tmp_path / "work", legacy=True)


@pytest.fixture
def info_lines():
    """The library's log messages at INFO and above while the test runs."""
    records: list[str] = []
    handler = logger.add(lambda message: records.append(message.record["message"]), level="INFO")
    yield records
    logger.remove(handler)


@contextlib.asynccontextmanager
async def legacy_session(worker):
    client_end, worker_end, close = await rtc.connect_pair_in_process()
    serving = asyncio.create_task(worker.serve_channel(worker_end, name="legacy-session"))
    try:
        yield LegacyClient(client_end)
    finally:
        await close()
        await asyncio.wait_for(serving, WAIT)


async def assert_job_works(client: LegacyClient, tag: str = "after") -> None:
    """The session still serves a whole, valid job."""
    data = sample_data(tag, 50)
    _, name, result = await client.run_rtc_job(legacy_package(NAME, data), NAME)
    assert name == f"trained_{NAME}"
    assert unzip(result) == expected_results(data)


def test_rtc_training_job(worker):
    data = sample_data("rtc")

    async def scenario():
        async with legacy_session(worker) as client:
            return await client.run_rtc_job(legacy_package(NAME, data), NAME)

    texts, name, result = run_async(scenario())
    assert texts == [
        f"TRAIN_JOB_START::{STEM}",
        "training on 3000 lines\n",
        "training done\n",
        f"TRAIN_JOB_END::{STEM}",
        "TRAINING_JOBS_DONE",
        f"FILE_META::trained_{NAME}:{len(result)}:models",
        "END_OF_FILE",
    ]
    assert unzip(result) == expected_results(data)
    assert worker.stats["completed"] == 1


def test_track_job_failing_script_and_other_output_dir(worker):
    script = 'echo "tracking"\nmkdir -p out\necho -n predicted > out/p.txt\nexit 3\n'
    package = legacy_package(NAME, b"x", script=script, script_name="track-script.sh")

    async def scenario():
        async with legacy_session(worker) as client:
            found = await client.run_rtc_job(package, NAME, package_type="track", output_dir="out")
            # No track script: the legacy worker's own text, and no job runs.
            empty = legacy_package(NAME, b"x", script="", script_name="other.sh")
            await client.upload(empty, NAME, package_type="track")
            return found, await client.wait_for("INFERENCE_ERROR::"), await client.next_text()

    (texts, name, result), missing, done = run_async(scenario())
    assert texts[:5] == [
        "INFERENCE_START",
        "INFERENCE_JOB_START::inference",
        "TRACK_LOG:tracking",
        "INFERENCE_JOB_ERROR::inference::3",
        "INFERENCE_JOBS_DONE",
    ]
    # Results go back after a failing job too, as the legacy worker sent them.
    assert texts[5] == f"FILE_META::trained_{NAME}:{len(result)}:out"
    assert unzip(result) == {"p.txt": b"predicted"}
    assert (missing, done) == ("INFERENCE_ERROR::No track script found", "INFERENCE_JOBS_DONE")


def test_manifest_wins_and_flat_packages_run(worker):
    manifest = {
        "name": "from-manifest",
        "command": [
            "python",
            "-c",
            "import os; open(os.environ['RTCXFER_OUTPUT_DIR'] + '/m.txt', 'w').write('manifest')",
        ],
    }

    def with_manifest(flat: bool) -> bytes:
        prefix = "" if flat else f"{STEM}/"
        source = zipfile.ZipFile(__import__("io").BytesIO(legacy_package(NAME, b"d", flat=flat)))
        buffer = __import__("io").BytesIO()
        with zipfile.ZipFile(buffer, "w") as bundle:
            for info in source.infolist():
                bundle.writestr(info, source.read(info))
            bundle.writestr(f"{prefix}rtcxfer.json", json.dumps(manifest))
        return buffer.getvalue()

    async def scenario():
        async with legacy_session(worker) as client:
            nested = await client.run_rtc_job(with_manifest(False), NAME)
            flat = await client.run_rtc_job(legacy_package(NAME, b"flat\n", flat=True), NAME)
            # OUTPUT_DIR::. sends the whole package folder back.
            whole = await client.run_rtc_job(legacy_package(NAME, b"w\n"), NAME, output_dir=".")
            return nested, flat, whole

    (texts, _, result), (_, _, flat_result), (_, _, whole) = run_async(scenario())
    assert texts[0] == "TRAIN_JOB_START::from-manifest" and unzip(result) == {"m.txt": b"manifest"}
    assert unzip(flat_result) == expected_results(b"flat\n")
    everything = unzip(whole)
    assert everything["data.txt"] == b"w\n" and everything["models/copy.txt"] == b"w\n"


def test_upload_streams_to_disk_and_a_short_upload_is_dropped(worker, tmp_path, info_lines):
    half = bytes(range(256)) * 4096 * 4  # 4 MiB

    def parts() -> list[Path]:
        return [p for p in (tmp_path / "work").rglob("*.part")]

    async def scenario():
        async with legacy_session(worker) as client:
            await client.send(f"FILE_META::{NAME}:{2 * len(half)}:False")
            for start in range(0, len(half), 65536):
                await client.send(half[start : start + 65536])
            # The bytes are on disk, in a partial file, before the upload is complete.
            deadline = time.monotonic() + WAIT
            while not (parts() and parts()[0].stat().st_size == len(half)):
                assert time.monotonic() < deadline, "the upload never reached the disk"
                await asyncio.sleep(0.05)
            await client.send("END_OF_FILE")
            refusal = await client.next_text()
            assert not parts() and not list((tmp_path / "work").rglob(NAME))
            await assert_job_works(client)
            return refusal

    refusal = run_async(scenario())
    assert refusal == (
        f"[rtcxfer] refused: upload of '{NAME}' dropped: {len(half)} bytes arrived, {2 * len(half)} announced\n"
    )


def test_a_size_that_lies_and_bytes_before_file_meta_are_refused(worker, tmp_path):
    async def scenario():
        async with legacy_session(worker) as client:
            for _ in range(5):  # bytes first: refused once, not once per chunk
                await client.send(b"stray bytes")
            first = await client.next_text()
            await client.send(f"FILE_META::{NAME}:100:False")
            await client.send(b"x" * 60)
            await client.send(KEEP_ALIVE)  # not counted
            await client.send(b"x" * 60)
            second = await client.next_text()
            await client.send(b"y" * 10)
            await client.send("END_OF_FILE")
            third = await client.next_text()
            await assert_job_works(client)
            return first, second, third

    first, second, third = run_async(scenario())
    assert first == "[rtcxfer] refused: file bytes before FILE_META are refused\n"
    assert second == f"[rtcxfer] refused: upload of '{NAME}' dropped: more bytes than the announced 100\n"
    assert third == "[rtcxfer] refused: END_OF_FILE without an upload is refused\n"
    assert not list((tmp_path / "work").rglob("*.part"))


def test_a_second_upload_while_one_runs_is_refused(worker):
    data = sample_data("first", 100)
    package = legacy_package(NAME, data)
    slow = legacy_package(NAME, b"", script="sleep 2\nmkdir -p models\n")

    async def scenario():
        async with legacy_session(worker) as client:
            await client.send(f"FILE_META::{NAME}:{len(package)}:False")
            await client.send(package[:1000])
            await client.send("FILE_META::other.zip:10:False")
            during_upload = await client.next_text()
            await client.send(package[1000:])
            await client.send("END_OF_FILE")
            name, result = await client.wait_for_file()
            await client.upload(slow, NAME)
            await client.wait_for(f"TRAIN_JOB_START::{STEM}")
            await client.send("FILE_META::other.zip:10:False")
            during_job = await client.next_text()
            await client.wait_for_file()
            return during_upload, unzip(result), during_job

    during_upload, result, during_job = run_async(scenario())
    assert during_upload == f"[rtcxfer] refused: upload of 'other.zip' refused: '{NAME}' is still being received\n"
    assert result == expected_results(data)
    assert during_job == "[rtcxfer] refused: upload of 'other.zip' refused: a job is running in this session\n"


HOSTILE_NAMES = ["../evil.zip", "/tmp/evil.zip", "sub/evil.zip", ".evil.zip", "ev\x00il.zip", "..", "a/../../b.zip"]
HOSTILE_DIRS = ["../evil", "/tmp/evil", "a/../../evil", "..", "ev\x00il", "models:x", "s3://bucket/evil"]


@pytest.mark.parametrize(("name", "output_dir"), list(zip(HOSTILE_NAMES, HOSTILE_DIRS)))
def test_traversal_in_names_and_output_dirs_is_refused(worker, tmp_path, name, output_dir):
    async def scenario():
        async with legacy_session(worker) as client:
            await client.send(f"FILE_META::{name}:3:False")
            name_refusal = await client.next_text()
            await client.send(b"abc")  # nothing announced: refused, not written
            await client.next_text()
            await client.send(f"OUTPUT_DIR::{output_dir}")
            output_refusal = await client.next_text()
            await assert_job_works(client)
            return name_refusal, output_refusal

    name_refusal, output_refusal = run_async(scenario())
    assert name_refusal.startswith("[rtcxfer] refused: upload of ")
    assert output_refusal.startswith("[rtcxfer] refused: OUTPUT_DIR ") and output_refusal.endswith("keeping models\n")
    assert not (tmp_path / "evil.zip").exists() and not Path("/tmp/evil.zip").exists()
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil").exists()


def test_unknown_messages_are_logged_and_ignored(worker, info_lines):
    rng = random.Random(13)
    prefixes = ["PACKAGE_TYPE::", "FILE_META::", "JOB_ID::", "SHARED_STORAGE_JOB::", "TRAIN_", "", "OUTPUT"]
    garbage = [
        rng.choice(prefixes) + "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(30)))
        for _ in range(200)
    ]

    async def scenario():
        async with legacy_session(worker) as client:
            await client.send("NOT_A_MESSAGE::x")
            for text in garbage:
                if not text.startswith(("OUTPUT", "FILE_META::", "JOB_ID::")):
                    await client.send(text)
            await client.send('ZMQ_CTRL::{"command": "stop"}')
            await assert_job_works(client)
            return list(client.texts)

    texts = run_async(scenario())
    # Nothing was answered before the job's own texts.
    assert texts[0] == f"TRAIN_JOB_START::{STEM}"
    assert any("unrecognized message (unknown message type): 'NOT_A_MESSAGE::x'" in line for line in info_lines)
    assert any("ZMQ_CTRL" in line and "not supported" in line for line in info_lines)


def test_corrupted_package_is_refused_and_the_session_goes_on(worker):
    async def scenario():
        async with legacy_session(worker) as client:
            await client.upload(b"PK\x03\x04 not a zip", NAME)
            refusal = await client.next_text()
            error = await client.next_text()
            done = await client.next_text()
            await assert_job_works(client)
            return refusal, error, done

    refusal, error, done = run_async(scenario())
    assert refusal.startswith(f"[rtcxfer] package '{NAME}' refused: ")
    assert (error, done) == (f"TRAIN_JOB_ERROR::{STEM}::1", "TRAINING_JOBS_DONE")


def test_shared_storage_job(worker, shared):
    data = sample_data("shared", 200)
    job_dir = shared / "jobs" / "job_0a1b2c3d"
    job_dir.mkdir()
    (job_dir / NAME).write_bytes(legacy_package(NAME, data))

    async def scenario():
        async with legacy_session(worker) as client:
            await client.start_shared_job(NAME, 1, "job_0a1b2c3d", f"jobs/job_0a1b2c3d/{NAME}", "jobs/job_0a1b2c3d")
            verdicts = [await client.next_text(), await client.next_text()]
            complete = await client.wait_for("JOB_COMPLETE::", "JOB_FAILED::")
            return verdicts, complete, list(client.texts)

    verdicts, complete, texts = run_async(scenario())
    assert verdicts == ["PATH_VALIDATED::input", "PATH_VALIDATED::output"]
    assert complete == "JOB_COMPLETE::job_0a1b2c3d::jobs/job_0a1b2c3d"
    assert f"TRAIN_JOB_END::{STEM}" in texts and "TRAINING_JOBS_DONE" in texts
    results = files_under(job_dir)
    results.pop(NAME)
    assert results == expected_results(data)


def test_shared_storage_paths_are_validated_as_the_specification_says(worker, shared, tmp_path):
    (tmp_path / "outside.zip").write_bytes(legacy_package(NAME, b"secret"))
    (shared / "jobs" / "link.zip").symlink_to(tmp_path / "outside.zip")

    async def scenario():
        async with legacy_session(worker) as client:
            replies = []
            await client.send("SHARED_STORAGE_JOB::start")
            replies.append(await client.next_text())
            for path in ["../../etc/passwd", "jobs/link.zip", "jobs/missing.zip", "/etc/passwd"]:
                await client.send(f"SHARED_INPUT_PATH::{path}")
                replies.append(await client.next_text())
            await client.send("SHARED_OUTPUT_PATH::../outside")
            replies.append(await client.next_text())
            await client.send("SHARED_STORAGE_JOB::start")
            replies.append(await client.next_text())
            await assert_job_works(client)
            return replies

    assert run_async(scenario()) == [
        "PATH_ERROR::Missing input or output path for shared storage job",
        "PATH_ERROR::Path outside shared storage: ../../etc/passwd",
        "PATH_ERROR::Path outside shared storage: jobs/link.zip",
        "PATH_ERROR::Input path does not exist: jobs/missing.zip",
        "PATH_ERROR::Path outside shared storage: /etc/passwd",
        "PATH_ERROR::Path outside shared storage: ../outside",
        "PATH_ERROR::Missing input or output path for shared storage job",
    ]
    assert not (tmp_path / "outside").exists()


def test_shared_storage_attempt_falling_back_to_rtc_transfer(worker, shared):
    """sleap-rtc's client when the worker does not see its file: the shared attempt is
    refused, and the same channel then carries the bytes (section 4, step 4)."""
    data = sample_data("fallback", 100)
    package = legacy_package(NAME, data)

    async def scenario():
        async with legacy_session(worker) as client:
            await client.start_shared_job(
                NAME, len(package), "job_5e5e5e5e", f"jobs/job_5e5e5e5e/{NAME}", "jobs/job_5e5e5e5e"
            )
            replies = [await client.next_text() for _ in range(3)]
            texts, name, result = await client.run_rtc_job(package, NAME)
            return replies, texts, unzip(result)

    replies, texts, result = run_async(scenario())
    assert replies == [
        f"PATH_ERROR::Input path does not exist: jobs/job_5e5e5e5e/{NAME}",
        "PATH_VALIDATED::output",
        "PATH_ERROR::Missing input or output path for shared storage job",
    ]
    assert texts[0] == f"TRAIN_JOB_START::{STEM}" and result == expected_results(data)


def test_shared_storage_job_on_a_worker_without_shared_storage(tmp_path, monkeypatch):
    monkeypatch.delenv("SHARED_STORAGE_ROOT", raising=False)
    monkeypatch.setattr("rtcxfer.files.shared_storage.KNOWN_MOUNT_POINTS", ())
    worker = make_worker(None, tmp_path / "work", legacy=True)

    async def scenario():
        async with legacy_session(worker) as client:
            await client.start_shared_job(NAME, 10, "job_1", f"jobs/job_1/{NAME}", "jobs/job_1")
            return [await client.next_text() for _ in range(3)]

    assert run_async(scenario()) == [
        f"PATH_ERROR::Shared storage is not available on this worker: jobs/job_1/{NAME}",
        "PATH_ERROR::Shared storage is not available on this worker: jobs/job_1",
        "PATH_ERROR::Missing input or output path for shared storage job",
    ]


def test_a_legacy_session_holds_one_of_the_workers_job_slots(shared, tmp_path):
    worker = make_worker(shared, tmp_path / "work", legacy=True, slots=1)
    data = sample_data("slot", 50)  # random lines: made once
    # The first job holds its slot until the test has heard both refusals (at most 60 s).
    release = tmp_path / "release"
    hold = f"i=0; while [ ! -e '{release}' ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n"
    package = legacy_package(NAME, data, script=hold + TRAIN_SCRIPT)

    async def scenario():
        async with legacy_session(worker) as first:
            await first.upload(package, NAME)
            await first.wait_for("TRAIN_JOB_START::")
            held = (worker.job_slots.running, worker.description()["state"])
            # The only slot is taken: a second legacy client's upload is refused before a byte
            # is sent, and a native client hears WORKER_BUSY.
            async with legacy_session(worker) as second:
                await second.send(f"FILE_META::{NAME}:{len(package)}:False")
                refusal = await second.next_text()
            async with worker_session(worker, authenticate=False) as native:
                busy = await native.hello()
            release.touch()
            _, result = await first.wait_for_file()
            # The job is over: its slot is free while its session stays open.
            await asyncio.sleep(0)
            after = worker.job_slots.running
        return held, refusal, busy, result, after

    held, refusal, busy, result, after = run_async(scenario())
    assert held == (1, "busy")
    assert refusal.startswith(f"[rtcxfer] refused: upload of '{NAME}' refused: this worker is busy"), refusal
    assert busy.startswith("WORKER_BUSY::"), busy
    assert unzip(result) == expected_results(data)
    assert (after, worker.job_slots.peak) == (0, 1)
    assert worker.stats == {"completed": 1, "failed": 0}


# --- the worker's limits hold for legacy jobs too (hardening round two, finding 5) ----------------


def test_an_upload_larger_than_the_free_space_is_refused_at_its_announcement(shared, tmp_path):
    with small_tmpfs(tmp_path / "work", "4m", busy_ok=True) as work:
        worker = make_worker(shared, work, legacy=True)
        free = os.statvfs(work).f_bavail * os.statvfs(work).f_frsize

        async def scenario():
            async with legacy_session(worker) as client:
                await client.send(f"FILE_META::{NAME}:{free + 1}:False")
                refusal = await client.next_text()  # before a single byte was sent
                await client.send(b"x" * 1000)  # the client streams on regardless: dropped
                await client.send("END_OF_FILE")
                await assert_job_works(client)  # a package that fits, in the same session
                return refusal, list(client.texts)

        refusal, texts = run_async(scenario())
        assert refusal == f"[rtcxfer] refused: upload of '{NAME}' refused: not enough free space for the file\n"
        assert sum(text.startswith("[rtcxfer]") for text in texts) == 2, texts  # + END_OF_FILE's
        assert [p.name for p in work.iterdir() if p.name != "partial-uploads"] == [], "nothing left behind"


def test_an_announcement_holds_its_space_against_a_second_session(shared, tmp_path):
    with small_tmpfs(tmp_path / "work", "4m", busy_ok=True) as work:
        worker = make_worker(shared, work, legacy=True, slots=2)
        free = os.statvfs(work).f_bavail * os.statvfs(work).f_frsize

        async def reply(client: LegacyClient) -> str | None:
            try:
                return await client.next_text(timeout=5)
            except (TimeoutError, asyncio.TimeoutError):
                return None

        async def scenario():
            async with legacy_session(worker) as first, legacy_session(worker) as second:
                for client in (first, second):
                    await client.send(f"FILE_META::{NAME}:{free * 2 // 3}:False")
                return await asyncio.gather(reply(first), reply(second))

        replies = run_async(scenario())
        # Whichever announcement the worker took first holds the space; the other is refused.
        refusals = [text for text in replies if text is not None]
        assert len(refusals) == 1 and refusals[0].endswith("not enough free space for the file\n"), replies


def test_a_draining_worker_starts_no_legacy_job(worker, shared):
    (shared / "jobs" / "job_d").mkdir()
    (shared / "jobs" / "job_d" / NAME).write_bytes(legacy_package(NAME, sample_data("drain", 20)))
    worker.drain()

    async def scenario():
        async with legacy_session(worker) as client:
            await client.send(f"FILE_META::{NAME}:100:False")
            upload_refusal = await client.next_text()
        async with legacy_session(worker) as client:
            await client.send("JOB_ID::job_d")
            await client.send(f"SHARED_INPUT_PATH::jobs/job_d/{NAME}")
            await client.send("SHARED_OUTPUT_PATH::jobs/job_d")
            await client.send("SHARED_STORAGE_JOB::start")
            shared_job = await client.wait_for("JOB_FAILED::", "JOB_COMPLETE::")
        return upload_refusal, shared_job

    upload_refusal, shared_job = run_async(scenario())
    assert "refused: the worker is draining" in upload_refusal, upload_refusal
    assert shared_job.startswith("JOB_FAILED::job_d::the worker is draining"), shared_job
    assert worker.stats == {"completed": 0, "failed": 0}


def test_a_shared_storage_job_announcing_more_than_the_work_directory_holds_still_runs(shared, tmp_path):
    """sleap-rtc's client sends FILE_META before a shared-storage job too, with the package's
    size; no bytes follow, so the space it would need is not the worker's to find."""
    data = sample_data("big-shared", 100)
    (shared / "jobs" / "job_big").mkdir()
    (shared / "jobs" / "job_big" / NAME).write_bytes(legacy_package(NAME, data))
    with small_tmpfs(tmp_path / "work", "4m", busy_ok=True) as work:
        worker = make_worker(shared, work, legacy=True)

        async def scenario():
            async with legacy_session(worker) as client:
                await client.start_shared_job(NAME, 327 * 10**9, "job_big", f"jobs/job_big/{NAME}", "jobs/job_big")
                return await client.wait_for("JOB_COMPLETE::", "JOB_FAILED::"), list(client.texts)

        complete, texts = run_async(scenario())
    assert complete == "JOB_COMPLETE::job_big::jobs/job_big", texts
    assert "PATH_VALIDATED::input" in texts and "PATH_VALIDATED::output" in texts
