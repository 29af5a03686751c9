"""Test set-up: Keras is the oracle, on its JAX backend, in a clean home.

Keras reads its backend and `keras.json` when first imported, so both are
fixed here, before any test module imports it. `KERAS_HOME` points at a
fresh folder so a developer's own `~/.keras/keras.json` (which may say
channels_first) cannot change what `data_format=None` means in the tests.

Precision: every test runs under ``jax.default_matmul_precision("highest")``
(exact float32 contractions on every backend), unless it is marked
``@pytest.mark.precision("default")``; `tests/tolerances.py` holds the
tolerances of each backend at the default precision, and the skip rule of
``@pytest.mark.cpu_only(why)``.
"""

import json
import os
import tempfile

import jax
import pytest

try:
  from tests import tolerances
except ImportError:  # tests/ itself on sys.path
  import tolerances

os.environ["KERAS_BACKEND"] = "jax"
_KERAS_HOME = tempfile.mkdtemp(prefix="sepconv_jax_keras_home_")
with open(os.path.join(_KERAS_HOME, "keras.json"), "w") as f:
  json.dump({"backend": "jax", "image_data_format": "channels_last",
             "floatx": "float32", "epsilon": 1e-07}, f)
os.environ["KERAS_HOME"] = _KERAS_HOME


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "precision(name): 'highest' (the default for every test) or"
      " 'default' (the backend's default matmul precision; the test takes its"
      " tolerance from tests/tolerances.py)")
  config.addinivalue_line(
      "markers", "cpu_only(why): a CPU-only mechanism; skipped, with `why`,"
      " on other backends")


def precision_of(item) -> str:
  """The matmul precision a test runs at (see the module docstring)."""
  marker = item.get_closest_marker("precision")
  return marker.args[0] if marker else "highest"


def pytest_runtest_setup(item):
  marker = item.get_closest_marker("cpu_only")
  if marker is not None:
    reason = tolerances.cpu_only_skip_reason(marker.args[0])
    if reason:
      pytest.skip(reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
  precision = precision_of(item)
  if precision == "default":
    yield
    return
  with jax.default_matmul_precision(precision):
    yield
