"""Fuzzing profiles: `make test` runs a few hundred examples per target (seconds); `make fuzz`
runs the `fuzz` profile, long (HYPOTHESIS_PROFILE=fuzz; FUZZ_EXAMPLES inputs per target,
200 000 unless set), and prints the failing input of
anything it finds, which then becomes an `@example` in the target: a regression test."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "200000")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
