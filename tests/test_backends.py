"""The suite's backend switch, proved without an accelerator.

`jax.default_backend` is faked, and the tolerances, the skips of CPU-only
tests and the precision each test runs at must follow.
"""

from __future__ import annotations

import jax
import pytest

try:
  from tests import conftest
  from tests import tolerances as tol
except ImportError:  # tests/ itself on sys.path
  import conftest
  import tolerances as tol


@pytest.mark.parametrize("platform,backend,roundoff,skips", [
    ("cpu", "cpu", 2.0**-24, False),
    ("gpu", "gpu", 2.0**-11, True),
    ("cuda", "gpu", 2.0**-11, True),
    ("rocm", "gpu", 2.0**-11, True),
    ("tpu", "tpu", 2.0**-8, True),
])
def test_tolerances_and_skips_follow_the_backend(monkeypatch, platform,
                                                 backend, roundoff, skips):
  monkeypatch.setattr(jax, "default_backend", lambda: platform)
  assert tol.backend() == backend
  assert tol.operand_roundoff("default") == roundoff
  # "highest" is exact float32 everywhere.
  assert tol.operand_roundoff("highest") == 2.0**-24
  assert tol.contraction_bound(10, "highest") == pytest.approx(
      2 * 2.0**-24 + 20 * 2.0**-24)
  reason = tol.cpu_only_skip_reason("XLA:CPU temporaries")
  if skips:
    assert "XLA:CPU temporaries" in reason and backend in reason
  else:
    assert reason is None


def test_default_precision_bounds_cover_the_measured_error(monkeypatch):
  # An H200 at the default precision (TF32) was measured at 2.8e-4 to
  # 3.8e-4 relative error at the canonical shapes (3x3, C*M up to 1024):
  # the GPU bound must admit that; CPU (exact) is tighter, TPU looser.
  bounds = {}
  for backend in ("cpu", "gpu", "tpu"):
    monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
    bounds[backend] = tol.separable_bound(9, 1024, "default")
  assert bounds["cpu"] < bounds["gpu"] < bounds["tpu"]
  assert bounds["gpu"] > 3.8e-4
  assert bounds["cpu"] == tol.separable_bound(9, 1024, "highest")


def test_unknown_precision_is_refused():
  with pytest.raises(ValueError, match="precision"):
    tol.operand_roundoff("tensorfloat32")


def test_conftest_skips_cpu_only_tests_off_cpu(monkeypatch, request):
  class Item:
    def __init__(self, marker):
      self.marker = marker

    def get_closest_marker(self, name):
      return self.marker if name == "cpu_only" else None

  item = Item(pytest.mark.cpu_only("page faults").mark)
  conftest.pytest_runtest_setup(item)  # on CPU: runs
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  with pytest.raises(pytest.skip.Exception, match="page faults.*tpu"):
    conftest.pytest_runtest_setup(item)
  conftest.pytest_runtest_setup(Item(None))  # unmarked: runs everywhere


def test_tests_run_at_highest_unless_marked():
  assert jax.config.jax_default_matmul_precision == "highest"


@pytest.mark.precision("default")
def test_marked_tests_run_at_the_backend_default(request):
  assert conftest.precision_of(request.node) == "default"
  assert jax.config.jax_default_matmul_precision in (None, "default")
