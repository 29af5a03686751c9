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

Profiles: the default suite leaves out the tests marked
``@pytest.mark.full(why)`` (more cases of what the default suite already
covers, and the longer end-to-end runs); ``SEPCONV_JAX_FULL_TESTS=1`` runs
them too. The hypothesis profile is separate (`conftest_hypothesis.py`).

Compile time: on a CPU most of the suite's time is XLA compiling small
programs, so the tests run with LLVM's optimisations off
(``--xla_backend_optimization_level=0`` in ``XLA_FLAGS``, inherited by the
subprocesses), a quarter faster. It changes the machine code, not the HLO:
fusion, buffer assignment (what the memory tests read) and every op's
semantics stay. Set ``XLA_FLAGS`` yourself to choose otherwise.
"""

import json
import os
import tempfile

# Before JAX starts its backend (and before any subprocess inherits them).
os.environ["KERAS_BACKEND"] = "jax"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = " ".join(filter(None, [
      os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0"]))

import jax  # noqa: E402
import pytest  # noqa: E402

try:
  from tests import tolerances
except ImportError:  # tests/ itself on sys.path
  import tolerances

FULL = os.environ.get("SEPCONV_JAX_FULL_TESTS") == "1"
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
  config.addinivalue_line(
      "markers", "full(why): in the full profile only"
      " (SEPCONV_JAX_FULL_TESTS=1): more cases of what the default suite"
      " covers, or a longer end-to-end run")


# Seconds per module on two cores (summed durations of the latest run),
# longest first. `--dist loadscope --no-loadscope-reorder` (pyproject.toml)
# hands whole modules to the two workers in collection order, so the longest
# go first and the short ones fill in at the end: one worker is not left
# running a long module alone. (Without `--no-loadscope-reorder`, xdist
# orders modules by their number of tests, which puts the few-test,
# long-running subprocess modules last.) Unlisted modules count as short.
_MODULE_SECONDS = {
    "test_numerics.py": 72, "test_pallas.py": 54,
    "test_implementations.py": 40, "test_docs.py": 38,
    "test_functional.py": 37, "test_layers_nd.py": 34,
    "test_keras_interop.py": 31, "test_train.py": 28,
    "test_properties.py": 27, "test_serialization_transforms.py": 26,
    "test_notebooks.py": 24, "test_benchmark.py": 22,
    "test_keras_applications.py": 20, "test_constraints.py": 18,
    "test_initializers.py": 16, "test_keras_parity.py": 15,
    "test_module.py": 15, "test_default_precision.py": 11,
    "test_invalid_inputs.py": 11, "test_regularizers.py": 10,
    "test_keras_families.py": 8, "test_export.py": 8,
}


def pytest_collection_modifyitems(config, items):
  """Deselects the tests marked ``full`` (default profile), then orders the
  modules longest first (see `_MODULE_SECONDS`)."""
  if not FULL:
    kept = [item for item in items if not item.get_closest_marker("full")]
    if len(kept) < len(items):
      config.hook.pytest_deselected(
          items=[item for item in items if item.get_closest_marker("full")])
      items[:] = kept
  items.sort(key=lambda item: -_MODULE_SECONDS.get(item.path.name, 0))


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


@pytest.fixture
def kernel_calls(monkeypatch):
  """The names of the Pallas kernels lowered while the test runs, in
  order: `forward` (or the TPU's `forward_direct`), `input_grad` and
  `param_grads` of `_pallas_gpu` or `_pallas_tpu`, which every lowering of
  the "pallas" implementation calls.

  JAX caches compiled programs (and `_pallas` its eager ones), which would
  not lower the kernels again: the caches are emptied before and after.
  """
  from sepconv_jax import _pallas  # pylint: disable=g-import-not-at-top
  from sepconv_jax import _pallas_gpu  # pylint: disable=g-import-not-at-top
  from sepconv_jax import _pallas_tpu  # pylint: disable=g-import-not-at-top
  calls = []
  # (function, the kernel it records): the TPU's layout-free forward pass
  # is its forward kernel too.
  kernels = [(m, n, n) for m in (_pallas_gpu, _pallas_tpu)
             for n in ("forward", "input_grad", "param_grads")]
  kernels.append((_pallas_tpu, "forward_direct", "forward"))
  for module, name, kernel in kernels:
    original = getattr(module, name)

    def wrapped(*args, _kernel=kernel, _original=original, **kwargs):
      calls.append(_kernel)
      return _original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
  jax.clear_caches()
  _pallas._jitted.cache_clear()
  yield calls
  jax.clear_caches()
  _pallas._jitted.cache_clear()
