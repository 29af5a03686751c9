"""The library's warnings, and the pytest configuration's warning filters.

* `sepconv_jax.PallasInterpretWarning`: ``implementation="pallas"`` lowered
  for a CPU runs in Pallas's interpreter; the first such lowering in a
  process warns, once, with a class a user can filter. The suite itself
  ignores it (pyproject.toml); these tests turn it back on.
* pyproject.toml filters exactly one warning that is not ours: NumPy 2's
  `__array__` `copy` keyword DeprecationWarning raised inside Keras.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import sepconv_jax
from sepconv_jax import _warnings

# Shapes no other test lowers, so each call below is a fresh lowering (a
# program cached from an earlier test would lower, and warn, no more).
X = np.ones((1, 7, 5, 3), np.float32)
DK = np.ones((3, 3, 3, 1), np.float32)
PK = np.ones((1, 1, 3, 2), np.float32)


def _interpret_warnings(records):
  return [r for r in records
          if issubclass(r.category, sepconv_jax.PallasInterpretWarning)]


@pytest.fixture
def first_in_process(monkeypatch):
  """As if no Pallas program had been lowered for a CPU in this process."""
  monkeypatch.setattr(_warnings, "_warned_interpret", False)


def test_the_warning_class_is_public_and_a_user_warning():
  assert "PallasInterpretWarning" in sepconv_jax.__all__
  assert issubclass(sepconv_jax.PallasInterpretWarning, UserWarning)


def test_pallas_on_cpu_warns_once_per_process(first_in_process):
  with warnings.catch_warnings(record=True) as records:
    warnings.simplefilter("always")  # would show every repeat
    y = sepconv_jax.separable_conv2d(X, DK, PK, implementation="pallas")
    jax.grad(lambda x: sepconv_jax.separable_conv2d(
        x, DK, PK, implementation="pallas").sum())(X)  # two more lowerings
    sepconv_jax.depthwise_conv2d(X[:, :6], DK, implementation="pallas")
  found = _interpret_warnings(records)
  assert len(found) == 1, [str(r.message) for r in found]
  message = str(found[0].message)
  assert "Pallas's interpreter" in message and "'taps'" in message
  assert "sepconv_jax.PallasInterpretWarning" in message  # how to filter
  # The warning changes nothing: the result is the reference's (float32,
  # 9 products of ones: exact).
  np.testing.assert_array_equal(
      y, sepconv_jax.separable_conv2d(X, DK, PK, implementation="lax"))


def test_the_warning_can_be_filtered(first_in_process):
  with warnings.catch_warnings(record=True) as records:
    warnings.simplefilter("always")
    warnings.filterwarnings("ignore",
                            category=sepconv_jax.PallasInterpretWarning)
    sepconv_jax.separable_conv2d(X[:, :, :4], DK, PK, implementation="pallas")
  assert not _interpret_warnings(records)


def test_the_other_implementations_and_accelerator_exports_do_not_warn(
    first_in_process):
  triton = export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
  with warnings.catch_warnings(record=True) as records:
    warnings.simplefilter("always")
    for implementation in ("auto", "lax", "taps"):
      sepconv_jax.separable_conv2d(X, DK, PK, implementation=implementation)
    # Lowered for CUDA from this CPU: the Triton kernel, not the interpreter.
    export.export(jax.jit(lambda x: sepconv_jax.separable_conv2d(
        x, DK, PK, implementation="pallas")), platforms=("cuda",),
                  disabled_checks=[triton])(jnp.ones((1, 7, 6, 3)))
  assert not _interpret_warnings(records)


_KERAS_NUMPY2 = (
    "__array__ implementation doesn't accept a copy keyword, so passing"
    " copy=False failed. __array__ must implement 'dtype' and 'copy' keyword"
    " arguments.")


def test_the_config_filters_only_keras_numpy2_copy_warning():
  """Under pytest's filters from pyproject.toml (active in every test)."""
  with warnings.catch_warnings(record=True) as records:
    # What Keras raises, attributed to Keras's module: filtered.
    warnings.warn_explicit(_KERAS_NUMPY2, DeprecationWarning, "variables.py",
                           252, module="keras.src.backend.common.variables")
    # The same text from our code, another Keras deprecation, and a
    # warning of ours: all shown.
    warnings.warn_explicit(_KERAS_NUMPY2, DeprecationWarning, "_ops.py", 1,
                           module="sepconv_jax._ops")
    warnings.warn_explicit("something else", DeprecationWarning,
                           "variables.py", 1, module="keras.src.ops")
    warnings.warn_explicit("ours", UserWarning, "_ops.py", 2,
                           module="sepconv_jax._ops")
  shown = [(r.category, str(r.message)) for r in records]
  assert shown == [(DeprecationWarning, _KERAS_NUMPY2),
                   (DeprecationWarning, "something else"),
                   (UserWarning, "ours")]
