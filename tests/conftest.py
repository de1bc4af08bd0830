"""Shared pytest configuration: hypothesis profiles and small fixtures.

Profiles (select with ``HYPOTHESIS_PROFILE=name``):

* ``default``: quick, for every test run.
* ``fuzz``: at least 20,000 examples per property, for the dedicated fuzzing run.
"""

import os

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
