"""End to end through S3: ``rtcxfer signal``, ``rtcxfer worker`` and ``rtcxfer submit`` as real
subprocesses, moto's real S3 server on 127.0.0.1, results compared byte for byte.

Every process gets its s3 settings from the environment only (``RTCXFER_S3_URL``,
``RTCXFER_S3_ENDPOINT_URL``, the moto user's key), exactly as a user would set them. The worker
and the client have different shared storage roots, so shared-fs never verifies between them
and s3 is the best transport they share. The bucket has versioning on: the sender deletes each
object once the receiver verified it, but the versions stay, so a test can read back the very
bytes that went through the store.

Everything listens on 127.0.0.1. Each process is stopped by its own pid; timeouts are hang
guards, not assertions about speed.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
import rtcxfer_s3
from moto_server import REGION, MotoServer

from rtcxfer.client.sample import build_sample_package, sample_text
from rtcxfer.testing.cluster import Cluster, start_cluster
from rtcxfer.testing.job_files import expected_sample_results, files_under, results_dir_of
from rtcxfer.testing.processes import START_GUARD, CliProcess, describe, run_cli

TOKEN = f"s3-e2e-{secrets.token_hex(8)}"
ROOM = "s3-e2e"
BUCKET = "rtcxfer-e2e"
PREFIX = "jobs"
S3_URL = f"s3://{BUCKET}/{PREFIX}"
#: Where botocore would go if the plugin ignored RTCXFER_S3_ENDPOINT_URL: a closed loopback
#: port, so such a bug fails fast and no request can ever leave this machine.
TRAP_ENDPOINT = "http://127.0.0.1:9"
WRONG_SECRET = "wrong-secret-never-shown"

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE = 0, 1, 2

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes and venv layout")]


# --- environments -----------------------------------------------------------------------------


def s3_environment(
    moto: MotoServer,
    *,
    url: str = S3_URL,
    key: str | None = None,
    secret: str | None = None,
    log_level: str = "WARNING",
    direct: bool = False,
) -> dict[str, str]:
    """The caller's environment minus anything rtcxfer, AWS or proxy related, plus the s3 settings.

    The built-in ``direct`` transport is blocked unless ``direct``: between two processes on
    one machine it always works, and these tests are about s3 and the data-channel fallback.
    """
    proxies = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RTCXFER_", "AWS_")) and k.lower() not in proxies and k != "SHARED_STORAGE_ROOT"
    }
    env.update(
        RTCXFER_S3_URL=url,
        RTCXFER_S3_ENDPOINT_URL=moto.url,
        AWS_ACCESS_KEY_ID=key or moto.key,
        AWS_SECRET_ACCESS_KEY=secret or moto.secret,
        AWS_DEFAULT_REGION=REGION,
        AWS_REGION=REGION,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_CONFIG_FILE=os.devnull,
        AWS_ENDPOINT_URL=TRAP_ENDPOINT,
        NO_PROXY="*",
        no_proxy="*",
        RTCXFER_LOG_LEVEL=log_level,
        PYTHONUNBUFFERED="1",
    )
    if not direct:
        env["RTCXFER_BLOCK_PLUGINS"] = "direct"
    return env


def site_directories() -> list[Path]:
    """This interpreter's site-packages directories (a venv's own, then any it inherits), in
    sys.path order; pytest's cwd is not one, so a source checkout's egg-info is never used."""
    found: list[Path] = []
    for entry in sys.path:
        path = Path(entry).resolve() if entry else None
        if path and path.name in ("site-packages", "dist-packages") and path.is_dir() and path not in found:
            found.append(path)
    return found


def venv_without_the_plugin(where: Path) -> Path:
    """A virtual environment with everything this interpreter has except rtcxfer-s3, which is
    installed and then really removed with ``pip uninstall``; returns its python.

    A fresh ``pip install`` of rtcxfer would need aiortc and friends from an index, which this
    machine may not reach. So the new environment (without system site packages) links every
    entry of this interpreter's site-packages, except the plugin's own files: those are
    copied, so that ``pip uninstall`` removes the copies and never touches the real install.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=START_GUARD)
    python = where / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=START_GUARD,
    ).stdout.strip()
    target = Path(purelib)
    plugin_files: list[Path] = []
    for source in site_directories():
        owned: set[str] = set()
        for dist in metadata.distributions(name="rtcxfer-s3", path=[str(source)]):
            assert dist.files is not None, f"rtcxfer-s3 in {source} has no RECORD: install it with pip"
            owned |= {Path(str(file)).parts[0] for file in dist.files}
            plugin_files += [target / str(file) for file in dist.files]
        for entry in source.iterdir():
            destination = target / entry.name
            if entry.name == "__pycache__":
                # Shared by many distributions; a link would let the uninstall reach the original.
                destination.mkdir(exist_ok=True)
            elif destination.exists() or destination.is_symlink():
                continue  # an earlier site directory has it, and wins on sys.path too
            elif entry.name in owned:
                if entry.is_dir():
                    shutil.copytree(entry, destination, symlinks=True)
                else:
                    shutil.copy2(entry, destination)
            else:
                destination.symlink_to(entry)
    assert plugin_files, f"rtcxfer-s3 is not pip-installed in {site_directories()}"
    for installed in plugin_files:
        assert installed.resolve().is_relative_to(where.resolve()), f"{installed} would reach the real install"
    uninstall = subprocess.run(
        [python, "-m", "pip", "uninstall", "--yes", "rtcxfer-s3"],
        capture_output=True,
        text=True,
        timeout=START_GUARD,
        env={**os.environ, "PIP_NO_INPUT": "1"},
        cwd=where,
    )
    assert uninstall.returncode == 0 and "Successfully uninstalled rtcxfer-s3" in uninstall.stdout, uninstall
    return python


# --- processes --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(moto: MotoServer):
    """An S3 client on the test bucket, which keeps every version of every object."""
    client = moto.client()
    client.create_bucket(Bucket=BUCKET)
    client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return client


@pytest.fixture(scope="module")
def cluster(moto: MotoServer, store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A signaling server and the module's worker (in ROOM, with the store's own user); workers
    and clients get different shared roots."""
    root = tmp_path_factory.mktemp("s3-e2e")
    for shared in ("worker-shared", "client-shared"):
        (root / shared).mkdir()
    with start_cluster(
        root,
        token=TOKEN,
        env=s3_environment(moto),
        service_env=s3_environment(moto, log_level="INFO"),
        worker_options=["--shared-root", str(root / "worker-shared")],
    ) as cluster:
        cluster.worker = start_worker(cluster, ROOM)
        yield cluster


def start_worker(
    cluster: Cluster, room: str, *, python: str | Path | None = None, env: dict[str, str] | None = None
) -> CliProcess:
    return cluster.start_worker(room, work_dir=cluster.root / f"work-{room}", python=python, env=env)


# --- submitting -------------------------------------------------------------------------------


def submit(
    cluster: Cluster,
    package: Path,
    results: Path,
    *,
    env: dict[str, str] | None = None,
    python: str | Path | None = None,
    room: str = ROOM,
    transport: str | None = None,
    quiet: bool = False,
) -> subprocess.CompletedProcess[str]:
    options = ["--results", str(results), "--timeout", "30", "--shared-root", str(cluster.root / "client-shared")]
    if transport is not None:
        options += ["--transport", transport]
    if quiet:
        options.append("--quiet")
    return cluster.submit(package, *options, room=room, env=env, python=python)


def sample_job(cluster: Cluster, tag: str, lines: int = 500) -> tuple[bytes, Path, Path]:
    """(data.txt, package, results directory) for a sample job unique to ``tag``."""
    data = f"# {tag} {secrets.token_hex(8)}\n".encode() + sample_text(lines)
    package = build_sample_package(cluster.root / "packages" / f"{tag}.zip", data=data)
    return data, package, cluster.root / "results" / tag


def assert_sample_ok(run: subprocess.CompletedProcess[str], data: bytes, results: Path, via: str) -> None:
    assert run.returncode == EXIT_OK, describe(run)
    assert f"input via {via}, results via {via}" in run.stdout, describe(run)
    final = results_dir_of(run)
    assert final.parent.resolve() == results.resolve(), describe(run)
    assert files_under(final) == expected_sample_results(data)
    assert not [p.name for p in results.iterdir() if p.name.endswith(".partial")]


# --- what went through the store --------------------------------------------------------------


def versions(store) -> set[tuple[str, str]]:
    """Every (key, version id) ever stored under the prefix, deleted or not."""
    found: set[tuple[str, str]] = set()
    # The bare prefix: moto's signature check rejects a "/" in this query string.
    for page in store.get_paginator("list_object_versions").paginate(Bucket=BUCKET, Prefix=PREFIX):
        found.update((v["Key"], v["VersionId"]) for v in page.get("Versions", []))
    return found


def moved_through_s3(store, before: set[tuple[str, str]]) -> dict[str, bytes]:
    """The files stored since ``before``: name (the key without prefix and transfer id) -> bytes."""
    moved: dict[str, bytes] = {}
    for key, version in sorted(versions(store) - before):
        match = re.fullmatch(rf"{PREFIX}/[0-9a-f]{{32}}/(.+)", key)
        assert match, f"unexpected key {key!r}"
        assert match.group(1) not in moved, f"{match.group(1)} was stored twice"
        moved[match.group(1)] = store.get_object(Bucket=BUCKET, Key=key, VersionId=version)["Body"].read()
    return moved


def live_objects(store) -> list[str]:
    listing = store.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX)
    return [item["Key"] for item in listing.get("Contents", [])]


# --- the round trip ---------------------------------------------------------------------------


def test_forced_s3_round_trip_moves_input_and_results_through_the_store(cluster: Cluster, store) -> None:
    # Over 8 MiB, the default part size, so copy/data.txt goes up as a multipart upload.
    data, package, results = sample_job(cluster, "s3-forced", lines=170_000)
    before = versions(store)
    log_start = len(cluster.worker.text())
    run = submit(cluster, package, results, transport="s3", quiet=True)
    assert_sample_ok(run, data, results, "s3")
    # The very bytes each side uploaded, read back from the versions the deletes left behind.
    assert moved_through_s3(store, before) == {package.name: package.read_bytes(), **expected_sample_results(data)}
    assert live_objects(store) == [], "the sender did not clean up after the receiver verified"
    worker_log = cluster.worker.text()[log_start:]
    assert f"s3: received {package.name} ({package.stat().st_size} bytes)" in worker_log, worker_log
    assert "via s3) and extracted" in worker_log, worker_log
    assert "s3: delivered summary.txt" in worker_log and "s3: delivered copy/data.txt" in worker_log, worker_log


def test_automatic_choice_prefers_s3_over_rtc_chunked(cluster: Cluster, store) -> None:
    data, package, results = sample_job(cluster, "s3-automatic")
    before = versions(store)
    run = submit(cluster, package, results)
    assert_sample_ok(run, data, results, "s3")
    assert "shared-fs is not usable between these peers" in run.stderr, describe(run)
    assert "transports for this session: s3, rtc-chunked" in run.stderr, describe(run)
    assert set(moved_through_s3(store, before)) == {package.name, "summary.txt", "copy/data.txt"}


def plugin_rows(python: str | Path, env: dict[str, str], cwd: Path) -> dict[str, list[str]]:
    run = run_cli("plugins", env=env, cwd=cwd, python=python, timeout=START_GUARD)
    assert run.returncode == 0, describe(run)
    return {line.split()[0]: line.split() for line in run.stdout.splitlines()[1:]}


def test_plugins_lists_s3_with_its_distribution_and_version(cluster: Cluster, moto: MotoServer) -> None:
    rows = plugin_rows(sys.executable, s3_environment(moto, direct=True), cluster.root)
    assert rows["s3"][:5] == ["s3", "50", "s3", "rtcxfer-s3", "0.1.0"]
    assert rtcxfer_s3.__version__ == metadata.version("rtcxfer-s3") == "0.1.0"
    order = list(rows)
    # A store the user configured comes before a direct connection, both before the data channel.
    assert order.index("shared-fs") < order.index("s3") < order.index("direct") < order.index("rtc-chunked")


@pytest.mark.parametrize("uninstalled_on", ["client", "worker"])
def test_uninstalled_plugin_means_the_same_submit_falls_back_to_rtc_chunked(
    cluster: Cluster, moto: MotoServer, store, tmp_path: Path, uninstalled_on: str
) -> None:
    python = venv_without_the_plugin(tmp_path / "venv")
    env = s3_environment(moto)
    rows = plugin_rows(python, env, tmp_path)
    assert "s3" not in rows and "rtc-chunked" in rows, rows
    data, package, results = sample_job(cluster, f"s3-uninstalled-{uninstalled_on}")
    before = versions(store)
    if uninstalled_on == "client":
        run = submit(cluster, package, results, python=python)
    else:
        room = f"{ROOM}-no-plugin"
        start_worker(cluster, room, python=python)
        run = submit(cluster, package, results, room=room)
    assert_sample_ok(run, data, results, "rtc-chunked")
    assert "transports for this session: rtc-chunked" in run.stderr, describe(run)
    assert versions(store) == before


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("problem", "client_env", "message"),
    [
        pytest.param(
            "missing-bucket",
            {"url": "s3://no-such-bucket-here/jobs"},
            "checking s3://no-such-bucket-here/jobs at .*: the bucket does not exist",
            id="missing-bucket",
        ),
        pytest.param(
            "wrong-credentials",
            {"key": "AKIAWRONGWRONGWRONG0", "secret": WRONG_SECRET},
            f"checking {S3_URL} at .*: access denied by the store",
            id="wrong-credentials",
        ),
    ],
)
def test_an_unusable_bucket_on_the_client_falls_back_with_a_notice(
    cluster: Cluster, moto: MotoServer, store, problem: str, client_env: dict[str, str], message: str
) -> None:
    data, package, results = sample_job(cluster, f"s3-{problem}")
    env = s3_environment(moto, **client_env)
    before = versions(store)
    run = submit(cluster, package, results, env=env)
    assert_sample_ok(run, data, results, "rtc-chunked")
    assert re.search(message, run.stderr), describe(run)
    assert "s3 is not usable between these peers" in run.stderr, describe(run)
    assert WRONG_SECRET not in run.stderr + run.stdout
    assert versions(store) == before
    # Forcing s3 is refused up front with what is usable, like any other unusable transport.
    forced = submit(cluster, package, cluster.root / "results" / f"{problem}-forced", env=env, transport="s3")
    assert forced.returncode == EXIT_USAGE, describe(forced)
    assert re.search(
        f"transport 's3' is not usable in this session: {message}.*\\(usable: rtc-chunked\\)", forced.stderr
    ), describe(forced)
    assert "Traceback" not in forced.stderr, describe(forced)


def user_who_cannot_write(moto: MotoServer) -> dict[str, str]:
    """``s3_environment`` arguments for a new user whose key may check the bucket and read
    objects, but not write any."""
    iam = moto.client(service="iam")
    user = f"read-only-{secrets.token_hex(4)}"
    iam.create_user(UserName=user)
    iam.put_user_policy(
        UserName=user,
        PolicyName="no-writes",
        PolicyDocument=(
            '{"Version": "2012-10-17", "Statement": ['
            '{"Effect": "Allow", "Action": "s3:*", "Resource": "*"},'
            '{"Effect": "Deny", "Action": "s3:PutObject", "Resource": "*"}]}'
        ),
    )
    access = iam.create_access_key(UserName=user)["AccessKey"]
    return {"key": access["AccessKeyId"], "secret": access["SecretAccessKey"]}


def test_an_input_upload_refused_after_agreement_falls_back_to_rtc_chunked(
    cluster: Cluster, moto: MotoServer, store
) -> None:
    """s3 is agreed, the client's upload is refused, and the client says so and resends the
    package over rtc-chunked in the same session."""
    env = s3_environment(moto, **user_who_cannot_write(moto))
    data, package, results = sample_job(cluster, "s3-upload-denied")
    before = versions(store)
    run = submit(cluster, package, results, env=env)
    assert_sample_ok(run, data, results, "rtc-chunked")
    assert "transports for this session: s3, rtc-chunked" in run.stderr, describe(run)
    notice = (
        r"s3 failed \(S3AccessDeniedError: uploading .*: access denied by the store .*\); retrying over rtc-chunked"
    )
    assert re.search(notice, run.stderr), describe(run)
    assert versions(store) == before


def test_a_results_upload_refused_on_the_worker_fails_the_job_clearly(
    cluster: Cluster, moto: MotoServer, store
) -> None:
    """The worker may read the input from the bucket but not write its results there: the job
    ends with an error naming the cause, instead of the client waiting for ever."""
    room = f"{ROOM}-read-only"
    start_worker(cluster, room, env=s3_environment(moto, log_level="INFO", **user_who_cannot_write(moto)))
    data, package, results = sample_job(cluster, "s3-results-denied")
    run = submit(cluster, package, results, room=room)
    assert run.returncode == EXIT_JOB_FAILED, describe(run)
    assert "sending input via s3" in run.stderr, describe(run)
    message = r"cannot send results via s3: S3AccessDeniedError: uploading .*summary\.txt: access denied by the store"
    assert re.search(message, run.stderr), describe(run)
    assert "Traceback" not in run.stderr, describe(run)
    assert not results.exists() or not any(results.iterdir())
