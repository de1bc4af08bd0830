"""A real S3-compatible server for the tests: moto's standalone server on 127.0.0.1.

The server runs as a subprocess on an ephemeral loopback port and is reached over HTTP by
s3fs/botocore exactly as a real store would be; nothing about S3 is mocked in the test process.
With ``auth=True`` it runs in IAM mode (``INITIAL_NO_AUTH_ACTION_COUNT``): the first few
requests create a user and its access key, and from then on every request must be signed with
that key, so wrong credentials are refused as a real store refuses them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import attrs
import boto3

from rtcxfer.transport.base import TransportContext

BUCKET = "rtcxfer-test"
PREFIX = "transfers"
LOOPBACK = "127.0.0.1"
REGION = "us-east-1"
# IAM calls made without credentials before the server starts checking signatures.
_SETUP_ACTIONS = 3


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


@attrs.define
class MotoServer:
    """One moto server subprocess, stopped by its own pid."""

    process: subprocess.Popen
    url: str
    key: str = ""
    secret: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def client(self, key: str | None = None, secret: str | None = None, service: str = "s3"):
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=key or self.key,
            aws_secret_access_key=secret or self.secret,
        )


def start_moto(*, auth: bool, timeout: float = 30.0) -> MotoServer:
    """Start ``python -m moto.server`` on 127.0.0.1 and wait until it answers."""
    port = free_port()
    env = dict(os.environ)
    if auth:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(_SETUP_ACTIONS)
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = MotoServer(process, f"http://{LOOPBACK}:{port}", "testing", "testing")
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{server.url}/moto-api/", timeout=1):
                break
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                server.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.05)
    if auth:
        iam = boto3.client(
            "iam", endpoint_url=server.url, region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x"
        )
        iam.create_user(UserName="rtcxfer")
        iam.put_user_policy(
            UserName="rtcxfer",
            PolicyName="everything",
            PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
            ),
        )
        access = iam.create_access_key(UserName="rtcxfer")["AccessKey"]
        server.key, server.secret = access["AccessKeyId"], access["SecretAccessKey"]
    server.client().create_bucket(Bucket=BUCKET)
    return server


def keys_under(server: MotoServer, prefix: str = PREFIX) -> list[str]:
    """The keys of the test bucket under ``prefix``."""
    # No trailing "/" in Prefix: moto 5.2's IAM mode miscomputes signatures with "/" in the query.
    listing = server.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [entry["Key"] for entry in listing.get("Contents", [])]


def s3_options(server: MotoServer, url: str = f"s3://{BUCKET}/{PREFIX}", **extra) -> dict:
    options = {
        "url": url,
        "endpoint_url": server.url,
        "max_attempts": 2,
        "retries": 1,
        "connect_timeout": 5,
        "read_timeout": 30,
        "negotiate_timeout": 20,
        "ack_timeout": 60,
    }
    options.update(extra)
    return options


def make_contexts(
    tmp_path: Path, server: MotoServer, *, client: dict | None = None, worker: dict | None = None
) -> tuple[TransportContext, TransportContext]:
    """Client and worker contexts that both reach ``server`` (per-side overrides allowed)."""
    return (
        TransportContext("client", tmp_path / "client-incoming", options={"s3": s3_options(server, **(client or {}))}),
        TransportContext("worker", tmp_path / "worker-incoming", options={"s3": s3_options(server, **(worker or {}))}),
    )
