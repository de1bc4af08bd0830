"""Shared pytest configuration: hypothesis profiles and small fixtures (``logs``, ``two_host_bed``,
``nat_bed``).

Profiles (select with ``HYPOTHESIS_PROFILE=name``):

* ``default``: quick, for every test run.
* ``fuzz``: at least 20,000 examples per property, for the dedicated fuzzing run.
"""

import contextlib
import os

import pytest
from hypothesis import HealthCheck, settings

import rtcxfer.log

# The library is quiet by default; tests want its records (captured, shown on failure).
rtcxfer.log.logger.enable("rtcxfer")

settings.register_profile("default", max_examples=200, deadline=None)
settings.register_profile(
    "fuzz",
    max_examples=20_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def logs():
    """The library's log records while the test runs, as (level name, message), every level."""
    records: list[tuple[str, str]] = []
    handler = rtcxfer.log.logger.add(
        lambda message: records.append((message.record["level"].name, message.record["message"]))
    )
    yield records
    rtcxfer.log.logger.remove(handler)


@pytest.fixture
def two_host_bed():
    """Make two-host beds (``rtcxfer.testing.two_hosts``): ``bed = two_host_bed(drop_fragments=True)``.

    Skips, saying why, only where the bed cannot be made (not root, no ``ip`` or ``nft``);
    every bed made is removed at teardown, also when the test fails.
    """
    from rtcxfer.testing.two_hosts import missing_requirements, two_hosts

    reason = missing_requirements()
    if reason is not None:
        pytest.skip(f"two-host bed unavailable: {reason}")
    with contextlib.ExitStack() as stack:
        yield lambda **options: stack.enter_context(two_hosts(**options))


@pytest.fixture
def nat_bed(tmp_path):
    """Make NAT beds (``rtcxfer.testing.nat_bed``): ``bed = nat_bed(client_nat=NatKind.SYMMETRIC)``,
    then ``bed.start_turn()`` for coturn. Each bed's files (coturn's log) stay under ``tmp_path``.

    Skips, saying why, only where the bed cannot be made (not root, no ``ip``, ``nft`` or
    ``turnserver``); every bed made is removed at teardown, also when the test fails.
    """
    import itertools

    from rtcxfer.testing.nat_bed import missing_requirements, nat_bed

    reason = missing_requirements()
    if reason is not None:
        pytest.skip(f"NAT bed unavailable: {reason}")
    numbers = itertools.count()
    with contextlib.ExitStack() as stack:
        yield lambda **options: stack.enter_context(
            nat_bed(**{"work_dir": tmp_path / f"nat-bed-{next(numbers)}", **options})
        )
