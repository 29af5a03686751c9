"""The precision every test runs at, and the tolerances of each backend.

The one table of tolerances of the suite. Every test runs under
``jax.default_matmul_precision("highest")`` (see `conftest.py`): float32
convolutions and dots are then exact float32 on every backend, so the
exact-float32 tolerances written in the tests hold on CPU, GPU and TPU
alike. A test marked ``@pytest.mark.precision("default")`` runs at the
backend's default instead, and takes its tolerance from this table:

==========  =====================================  ==========================
backend     float32 contraction at the default     operand unit roundoff ``u``
==========  =====================================  ==========================
cpu         exact float32                          2**-24
gpu         TF32 (10 explicit mantissa bits)       2**-11
tpu         one bfloat16 pass (7 mantissa bits)    2**-8
==========  =====================================  ==========================

Measured on an NVIDIA H200 against a float64 oracle (7 canonical shapes,
every implementation): 2.8e-4 to 3.8e-4 relative error at the default
precision, 2e-7 to 1.3e-6 at ``"highest"``.

Tests of CPU-only mechanisms (XLA:CPU's temporaries, glibc's allocator,
page faults) are marked ``@pytest.mark.cpu_only("why")`` and skip, with that
reason, on any other backend.
"""

from __future__ import annotations

import jax
import numpy as np

#: Unit roundoff of float32 (its machine epsilon is twice this).
U32 = 2.0**-24

#: Unit roundoff of the operands of a float32 convolution or dot at the
#: backend's default precision.
DEFAULT_OPERAND_ROUNDOFF = {
    "cpu": U32,
    "gpu": 2.0**-11,  # TF32
    "tpu": 2.0**-8,   # bfloat16
}

#: What each backend computes at the default precision, for messages.
DEFAULT_PRECISION_MEANS = {
    "cpu": "exact float32",
    "gpu": "TF32 (float32 operands rounded to 10 mantissa bits)",
    "tpu": "one bfloat16 pass (operands rounded to 7 mantissa bits)",
}


def backend() -> str:
  """The backend the tests run on: 'cpu', 'gpu' or 'tpu'."""
  name = jax.default_backend()
  return "gpu" if name in ("cuda", "rocm") else name


def operand_roundoff(precision: str) -> float:
  """``u`` of a float32 contraction's operands at `precision`.

  Args:
    precision: "highest" (exact float32 everywhere) or "default" (the
      backend's default, from `DEFAULT_OPERAND_ROUNDOFF`).
  """
  if precision == "highest":
    return U32
  if precision != "default":
    raise ValueError(f"`precision` (={precision!r}) must be 'highest' or"
                     " 'default'")
  return DEFAULT_OPERAND_ROUNDOFF.get(backend(), U32)


def contraction_bound(terms: int, precision: str, chained: int = 1) -> float:
  """Relative forward-error bound of float32 sums of `terms` products.

  Each product of two operands rounded to ``u`` is off by at most ``2u``
  (plus ``u**2``), and summing `terms` of them in float32 adds at most
  ``terms`` float32 roundings (``2 * U32`` each, float32's epsilon):
  ``|y - y_exact| <= bound * |y|_ref``, with ``|y|_ref`` the same sums over
  absolute values. `chained` contractions, each rounding its operands
  again, add ``2u`` each.
  """
  u = operand_roundoff(precision)
  return chained * (2 * u + u * u) + terms * 2 * U32


def separable_bound(taps: int, channels: int, precision: str) -> float:
  """`contraction_bound` of the depthwise step then the pointwise step.

  Two chained contractions: the depthwise step sums `taps` products (a
  convolution, so TF32 or bfloat16 at the default precision on GPU and
  TPU, like the pointwise step), the pointwise step `channels` (= C * M)
  more, plus the bias and the final rounding.
  """
  return contraction_bound(taps + channels + 2, precision, chained=2)


def assert_within(actual, expected, magnitude, bound: float,
                  what: str = "") -> None:
  """``|actual - expected| <= bound * magnitude + tiny``, elementwise.

  `magnitude` is the reference run on the absolute values of the operands
  (or any upper bound of it); the float32 tiny covers exact zeros.
  """
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  err = np.abs(actual - expected)
  limit = bound * np.asarray(magnitude, np.float64) + 1e-30
  worst = float(np.max(err / limit, initial=0.0))
  assert worst <= 1.0, (
      f"{what}: error up to {worst:.3g}x the bound ({bound:.3g} relative,"
      f" backend {backend()})")


def cpu_only_skip_reason(why: str) -> str | None:
  """Why a CPU-only test skips on this backend, or None on CPU."""
  if backend() == "cpu":
    return None
  return f"CPU-only mechanism ({why}); this backend is {backend()}"


#: Unit roundoff of bfloat16 (8 significant bits).
U_BF16 = 2.0**-8

#: The largest slope of the activations the Keras comparisons use (relu,
#: relu6, tanh, sigmoid: 1; gelu and swish: below 1.13): an activation
#: multiplies a difference of its inputs by at most this.
ACTIVATION_SLOPE = 1.13


def bfloat16_layer_bound() -> float:
  """Relative bound between two bfloat16 evaluations of one layer.

  Keras's layer and ours under a bfloat16 compute dtype start from the
  same bfloat16 operands (the inputs and kernels rounded alike), then each
  rounds the depthwise result to bfloat16 (``u``, which the pointwise sum
  carries through) and the output (``u``); the float32 accumulation adds
  a negligible ``terms * 2**-24``. The two sides therefore differ by at
  most ``2 * 2u`` of the magnitude (the layer on absolute values, before
  its activation) times the activation's slope; the extra ``u`` covers
  the bias added after a rounding.
  """
  return ACTIVATION_SLOPE * 5 * U_BF16


def keras_magnitude(layer, x) -> np.ndarray:
  """The magnitude of a Keras conv layer's output at `x`: the same layer
  in float32, without activation, on the absolute values of `x` and of
  its weights (an elementwise bound of the sums' absolute terms)."""
  config = {**layer.get_config(), "dtype": "float32", "activation": None,
            "name": None}
  config.pop("name")
  twin = type(layer).from_config(config)
  x = np.abs(np.asarray(x, np.float32))
  twin.build(x.shape)
  twin.set_weights([np.abs(np.asarray(w, np.float32))
                    for w in layer.get_weights()])
  return np.asarray(twin(x), np.float64)
