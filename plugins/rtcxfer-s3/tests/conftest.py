"""Fixtures: a real S3-compatible server (see ``moto_server``) and a hermetic AWS environment.

The environment is made hermetic for the whole session: credentials are the test user's,
``~/.aws`` is never read, the EC2 metadata service is never asked, proxies are bypassed, and
the default endpoint is the local server, so no request can leave the loopback interface.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from moto_server import REGION, MotoServer, start_moto

from rtcxfer.transport.host import PluginHost

_HERMETIC_ENV = {
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_CONFIG_FILE": os.devnull,
    "NO_PROXY": "*",
    "no_proxy": "*",
}
_REMOVED_ENV = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CA_BUNDLE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "RTCXFER_S3_URL",
    "RTCXFER_S3_ENDPOINT_URL",
)


@pytest.fixture(scope="session", autouse=True)
def hermetic_aws_env() -> Iterator[None]:
    saved = dict(os.environ)
    for name in _REMOVED_ENV:
        os.environ.pop(name, None)
    os.environ.update(_HERMETIC_ENV)
    # Until a server fixture sets real ones: anything that slips through fails to sign.
    os.environ["AWS_ACCESS_KEY_ID"] = "no-such-key"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "no-such-secret"
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def moto(hermetic_aws_env) -> Iterator[MotoServer]:
    """The session's server, in IAM mode; its user's key is in the environment."""
    server = start_moto(auth=True)
    os.environ["AWS_ACCESS_KEY_ID"] = server.key
    os.environ["AWS_SECRET_ACCESS_KEY"] = server.secret
    # Anything built without an explicit endpoint still lands here, never on AWS.
    os.environ["AWS_ENDPOINT_URL"] = server.url
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def own_moto(hermetic_aws_env) -> Iterator[MotoServer]:
    """A server for one test (which may kill it), without IAM checks."""
    server = start_moto(auth=False)
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def host() -> PluginHost:
    """Built-ins plus the installed entry points, whatever the caller's environment says."""
    host = PluginHost(autoload=True, environ={})
    assert "s3" in host.plugin_names(), "rtcxfer-s3 is not installed: pip install -e plugins/rtcxfer-s3"
    return host
