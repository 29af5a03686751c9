"""Hypothesis profiles for the property-based tests.

Two profiles, chosen with the environment variable
``SEPCONV_HYPOTHESIS_PROFILE`` (default ``ci``):

* ``ci``: derandomized (the same examples on every run, so CI is
  reproducible), no example database. The property tests of
  ``tests/test_properties.py`` run 100 examples together, in about 20 s on
  two CPU cores.
* ``thorough``: 10,000 examples in ``tests/test_properties.py`` and 25
  times the ci count elsewhere, random (a new search each run; a failure
  prints the ``@reproduce_failure`` blob to replay it)::

    SEPCONV_HYPOTHESIS_PROFILE=thorough python -m pytest \
        tests/test_properties.py tests/test_invalid_inputs.py -q \
        -p no:cacheprovider --hypothesis-show-statistics

Each test sets its count with :func:`examples`, which scales a ci count by
the active profile (``tests/test_properties.py`` gives both counts); the
profile's own ``max_examples`` (100 / 2,500) is the default for any test that
sets none.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck
from hypothesis import settings

ENV_VAR = "SEPCONV_HYPOTHESIS_PROFILE"

#: Examples per property test, by profile.
PER_TEST = {"ci": 100, "thorough": 2500}

_COMMON = dict(
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

settings.register_profile("ci", max_examples=PER_TEST["ci"],
                          derandomize=True, **_COMMON)
settings.register_profile("thorough", max_examples=PER_TEST["thorough"],
                          derandomize=False, **_COMMON)

PROFILE = os.environ.get(ENV_VAR, "ci")
if PROFILE not in PER_TEST:
  raise ValueError(
      f"{ENV_VAR}={PROFILE!r}: the profiles are {sorted(PER_TEST)}")
settings.load_profile(PROFILE)


def examples(ci_count: int) -> int:
  """`ci_count` examples under ``ci``, 25 times as many under ``thorough``."""
  return ci_count * PER_TEST[PROFILE] // PER_TEST["ci"]
