"""End to end: the legacy test client (its own aiortc peer, sleap-rtc's data-channel protocol)
against ``rtcxfer worker --legacy`` and ``rtcxfer signal`` started as real processes on
127.0.0.1; results compared byte for byte. Without ``--legacy`` the same client is refused."""

from __future__ import annotations

import asyncio
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from rtcxfer.protocol.auth import signaling_token
from rtcxfer.testing import run_async
from rtcxfer.testing.cluster import start_cluster
from rtcxfer.testing.processes import CliProcess
from tests.support.cli import environment
from tests.support.legacy_client import (
    LegacyClient,
    LegacyConnection,
    expected_results,
    files_under,
    legacy_package,
    sample_data,
    unzip,
)

TOKEN = f"legacy-{secrets.token_hex(8)}"
#: What `rtcxfer signal --token TOKEN` admits to a room: an HMAC of the secret, never the secret.
ROOM_ADMISSION = signaling_token(TOKEN)
LEGACY_ROOM, PLAIN_ROOM = "legacy-room", "plain-room"
NAME = "labels.v001.slp.training_job.zip"
GUARD = 120.0

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes")]


@attrs.define
class Services:
    url: str
    shared: Path
    legacy_worker: CliProcess
    plain_worker: CliProcess


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    root = tmp_path_factory.mktemp("legacy-e2e")
    shared = root / "shared"
    (shared / "jobs").mkdir(parents=True)
    options = ["--shared-root", str(shared)]
    with start_cluster(root, token=TOKEN, env=environment("INFO"), worker_options=options) as cluster:
        legacy, plain = (
            cluster.start_worker(room, *extra, work_dir=root / room)
            for room, extra in ((LEGACY_ROOM, ["--legacy"]), (PLAIN_ROOM, []))
        )
        yield Services(cluster.url, shared, legacy, plain)


async def rtc_job(client: LegacyClient, tag: str) -> None:
    data = sample_data(tag)
    texts, name, result = await client.run_rtc_job(legacy_package(NAME, data), NAME)
    assert texts[0] == f"TRAIN_JOB_START::{NAME[:-4]}" and "TRAINING_JOBS_DONE" in texts
    assert name == f"trained_{NAME}"
    assert unzip(result) == expected_results(data)


async def shared_job(client: LegacyClient, shared: Path) -> None:
    job_id = f"job_{secrets.token_hex(4)}"
    job_dir = shared / "jobs" / job_id
    job_dir.mkdir()
    data = sample_data(job_id)
    package = legacy_package(NAME, data)
    (job_dir / NAME).write_bytes(package)
    await client.start_shared_job(NAME, len(package), job_id, f"jobs/{job_id}/{NAME}", f"jobs/{job_id}")
    assert await client.next_text() == "PATH_VALIDATED::input"
    assert await client.next_text() == "PATH_VALIDATED::output"
    # The client's own job id comes back, with the output path it gave.
    assert await client.wait_for("JOB_COMPLETE::", "JOB_FAILED::") == f"JOB_COMPLETE::{job_id}::jobs/{job_id}"
    results = files_under(job_dir)
    assert results.pop(NAME) == package
    assert results == expected_results(data)


def test_legacy_worker_says_how_legacy_sessions_are_authenticated(services: Services) -> None:
    # Both the command's own line and the worker's log record say it.
    text = services.legacy_worker.text()
    assert "legacy sessions are authenticated only by the signaling server's token" in text
    assert "is authenticated only by the signaling server's token" in text
    assert "signaling server's token" not in services.plain_worker.text()


def test_rtc_transfer_job(services: Services) -> None:
    async def scenario():
        async with LegacyConnection(services.url, LEGACY_ROOM, ROOM_ADMISSION) as connection:
            await rtc_job(await connection.client(), "rtc")

    run_async(scenario(), GUARD)


def test_shared_storage_job(services: Services) -> None:
    async def scenario():
        async with LegacyConnection(services.url, LEGACY_ROOM, ROOM_ADMISSION) as connection:
            await shared_job(await connection.client(), services.shared)

    run_async(scenario(), GUARD)


def test_mixed_session_on_one_channel(services: Services) -> None:
    async def scenario():
        async with LegacyConnection(services.url, LEGACY_ROOM, ROOM_ADMISSION) as connection:
            client = await connection.client()
            await rtc_job(client, "first")
            await shared_job(client, services.shared)
            await rtc_job(client, "third")

    run_async(scenario(), GUARD)


def test_without_legacy_the_client_is_refused_as_before(services: Services) -> None:
    async def scenario():
        async with LegacyConnection(services.url, PLAIN_ROOM, ROOM_ADMISSION) as connection:
            # The worker closes a channel with another label at once.
            await connection.wait_open()
            await asyncio.wait_for(connection.channel.closed.wait(), GUARD)
        # Even on a channel with rtcxfer's label, its messages are refused.
        async with LegacyConnection(services.url, PLAIN_ROOM, ROOM_ADMISSION, label="rtcxfer") as connection:
            client = await connection.client()
            await client.send("PACKAGE_TYPE::train")
            unknown = await client.next_text()
            await client.send("SHARED_INPUT_PATH::jobs/job_1/a.zip")
            return unknown, await client.next_text()

    unknown, unauthenticated = run_async(scenario(), GUARD)
    assert unknown == "PROTOCOL_ERROR::unknown frame type: PACKAGE_TYPE"
    assert unauthenticated == "AUTH_FAILED::authenticate with HELLO first"
    services.plain_worker.wait_for("refusing unexpected data channel 'my-data-channel'")
