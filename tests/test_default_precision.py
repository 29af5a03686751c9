"""One test per comparison family at the backend's default matmul precision.

Every other test runs at ``"highest"`` (see `conftest.py`), where float32
contractions are exact on every backend. These run at the backend default,
what users get without asking (TF32 on GPU, one bfloat16 pass on TPU,
exact float32 on CPU), with the tolerance of `tests/tolerances.py`:

* the functions against the float64 NumPy reference, outputs;
* their gradients against float64 gradients;
* the module (bias and activation) against the float64 reference;
* the module against the real Keras layer;
* the implementations against each other.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

import sepconv_jax

try:
  from tests import implementations
  from tests import reference as ref
  from tests import tolerances as tol
except ImportError:  # tests/ itself on sys.path
  import implementations
  import reference as ref
  import tolerances as tol

pytestmark = pytest.mark.precision("default")

CONCRETE = list(implementations.ALL)
# (kh, kw) = (3, 3), C = 8, M = 2, F = 16: 9 taps, then 16 channels.
KERNEL, C, M, F = (3, 3), 8, 2, 16
CONV = dict(strides=1, padding="same", dilation_rate=1)


def _arrays(seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((2, 12, 11, C))
  dk = rng.standard_normal((*KERNEL, C, M)) / 3
  pk = rng.standard_normal((1, 1, C * M, F)) / 4
  b = rng.standard_normal((F,))
  return tuple(np.asarray(a, dtype) for a in (x, dk, pk, b))


def _magnitude(x, dk, pk, b):
  return ref.separable_conv2d(np.abs(x), np.abs(dk), np.abs(pk), np.abs(b),
                              **CONV)


def _bound():
  return tol.separable_bound(9, C * M, "default")


@pytest.mark.parametrize("impl", sepconv_jax.IMPLEMENTATIONS)
def test_function_against_float64(impl):
  x, dk, pk, b = _arrays()
  y = jax.jit(lambda *a: sepconv_jax.separable_conv2d(
      *a, **CONV, implementation=impl))(x, dk, pk, b)
  tol.assert_within(y, ref.separable_conv2d(x, dk, pk, b, **CONV),
                    _magnitude(x, dk, pk, b), _bound(), impl)
  d = sepconv_jax.depthwise_conv2d(x, dk, **CONV, implementation=impl)
  tol.assert_within(d, ref.depthwise_conv2d(x, dk, **CONV),
                    ref.depthwise_conv2d(np.abs(x), np.abs(dk), **CONV),
                    tol.contraction_bound(9, "default"), impl)


@pytest.mark.parametrize("impl", CONCRETE)
def test_gradients_against_float64(impl):
  # The VJP at cotangent g is three more contractions of the same sizes;
  # its magnitude is the same VJP of the absolute values. The float64
  # oracle is the NumPy reference's VJP, written from the definition.
  x, dk, pk, b = _arrays(1)
  g = np.random.default_rng(2).standard_normal((2, 12, 11, F)).astype(
      np.float32)

  def vjp(impl, args, cot):
    _, pull = jax.vjp(lambda *a: sepconv_jax.separable_conv2d(
        *a, **CONV, implementation=impl), *args)
    return pull(cot)

  got = jax.jit(vjp, static_argnums=0)(impl, (x, dk, pk, b), g)
  want = ref.separable_conv2d_vjp(x, dk, pk, g, **CONV)
  mag = ref.separable_conv2d_vjp(np.abs(x), np.abs(dk), np.abs(pk),
                                 np.abs(g), **CONV)
  # The pointwise-kernel and depthwise gradients sum over every position
  # (2 * 12 * 11 more terms); the input gradient over taps and filters.
  terms = 9 + C * M + F + 2 * 12 * 11
  for name, a, w, m in zip(("inputs", "depthwise", "pointwise", "bias"),
                           got, want, mag):
    tol.assert_within(a, w, m, tol.contraction_bound(terms, "default",
                                                     chained=2), name)


def test_module_against_float64():
  x, dk, pk, b = _arrays(3)
  layer = sepconv_jax.SeparableConv2D(F, KERNEL, padding="same",
                                      depth_multiplier=M, activation="tanh")
  params = {"depthwise_kernel": dk, "pointwise_kernel": pk, "bias": b}
  y = jax.jit(layer.apply)({"params": params}, x)
  # tanh is 1-Lipschitz: the bound before it holds after it.
  want = np.tanh(ref.separable_conv2d(x, dk, pk, b, **CONV))
  tol.assert_within(y, want, _magnitude(x, dk, pk, b), _bound(), "module")


def test_module_against_keras():
  x, dk, pk, b = _arrays(4)
  kl = keras.layers.SeparableConv2D(F, KERNEL, padding="same",
                                    depth_multiplier=M)
  kl.build(x.shape)
  kl.set_weights([dk, pk, b])
  layer = sepconv_jax.SeparableConv2D(F, KERNEL, padding="same",
                                      depth_multiplier=M)
  y = layer.apply({"params": {"depthwise_kernel": dk, "pointwise_kernel": pk,
                              "bias": b}}, x)
  # Both run at the default precision: each is within the bound of the
  # exact result, so they are within twice it of each other.
  tol.assert_within(y, np.asarray(kl(x)), _magnitude(x, dk, pk, b),
                    2 * _bound(), "module vs Keras")


def test_implementations_against_each_other():
  x, dk, pk, b = _arrays(5)
  outs = {impl: np.asarray(jax.jit(lambda *a, impl=impl: (
      sepconv_jax.separable_conv2d(*a, **CONV, implementation=impl)))(
          x, dk, pk, b)) for impl in CONCRETE}
  for impl, y in outs.items():
    tol.assert_within(y, outs["lax"], _magnitude(x, dk, pk, b),
                      2 * _bound(), f"{impl} vs lax")
