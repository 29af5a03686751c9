"""Initializers of `sepconv_jax.SeparableConv2D` against Keras 3.

Every expected number is a closed form from Keras's initializer definitions
(VarianceScaling: ``variance = scale / fan``, ``limit = sqrt(3 * variance)``,
truncated ``stddev = sqrt(variance) / 0.87962566103423978``) with fans from
``keras.src.initializers.random_initializers.compute_fans``, and the same
statistics are also measured on samples of the real Keras initializer, so a
wrong formula in these tests would show up against Keras too.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest
from keras.src.initializers.random_initializers import compute_fans

import sepconv_jax

# A realistic layer: 3x3 depthwise, 64 channels, multiplier 2, 96 filters.
# The pointwise kernel is not square (128 in, 96 out) so that fan_in, fan_out
# and fan_avg differ for all three params.
KH = KW = 3
C, M, F = 64, 2, 96
SHAPES = {
    "depthwise_kernel": (KH, KW, C, M),
    "pointwise_kernel": (1, 1, C * M, F),
    "bias": (F,),
}
N_KEYS = 4  # samples are pooled over this many PRNG keys
VAR_RTOL = 0.10
TRUNC = 0.87962566103423978  # stddev of a unit normal truncated to [-2, 2]

# Keras 3 defaults of the variance-scaling family: (scale, mode, distribution).
VARIANCE_SCALING = {
    "glorot_uniform": (1.0, "fan_avg", "uniform"),
    "glorot_normal": (1.0, "fan_avg", "truncated_normal"),
    "he_uniform": (2.0, "fan_in", "uniform"),
    "he_normal": (2.0, "fan_in", "truncated_normal"),
    "lecun_uniform": (1.0, "fan_in", "uniform"),
    "lecun_normal": (1.0, "fan_in", "truncated_normal"),
}
OTHERS = ("zeros", "ones", "random_normal", "random_uniform",
          "truncated_normal", "orthogonal")
ALL_NAMES = tuple(VARIANCE_SCALING) + OTHERS
CAMEL = {
    "GlorotUniform": "glorot_uniform", "GlorotNormal": "glorot_normal",
    "HeUniform": "he_uniform", "HeNormal": "he_normal",
    "LecunUniform": "lecun_uniform", "LecunNormal": "lecun_normal",
    "Zeros": "zeros", "Ones": "ones", "RandomNormal": "random_normal",
    "RandomUniform": "random_uniform", "TruncatedNormal": "truncated_normal",
    "Orthogonal": "orthogonal",
}


def _layer(init, *, bias_init=None, param_dtype=jnp.float32, c=C, m=M, f=F,
           k=KH):
  if bias_init is None:
    # Keras's Orthogonal needs rank >= 2, so it cannot initialize a bias.
    bias_init = "zeros" if init in ("orthogonal", "Orthogonal") else init
  return sepconv_jax.SeparableConv2D(
      filters=f, kernel_size=k, depth_multiplier=m,
      data_format="channels_last", depthwise_initializer=init,
      pointwise_initializer=init, bias_initializer=bias_init,
      param_dtype=param_dtype)


def _init(layer, seeds, c=C, k=KH):
  # Eager on purpose: its per-primitive compile cache is shared by all the
  # layers of this file, whereas jit would compile every layer anew.
  x = jnp.zeros((1, k, k, c), jnp.float32)
  return [layer.init(jax.random.key(s), x)["params"] for s in seeds]


def _pooled(params_list, name):
  return np.concatenate(
      [np.asarray(p[name], np.float64).ravel() for p in params_list])


def _keras_pooled(name, shape, n=N_KEYS):
  # A Keras initializer built with seed=None keeps one seed for all calls,
  # so each sample gets its own instance and seed.
  cls = type(keras.initializers.get(name))
  return np.concatenate([
      np.asarray(cls(seed=1000 + i)(shape, dtype="float32"), np.float64).ravel()
      for i in range(n)])


def _fan(shape, mode):
  fan_in, fan_out = compute_fans(shape)
  return {"fan_in": fan_in, "fan_out": fan_out,
          "fan_avg": (fan_in + fan_out) / 2.0}[mode]


def _expected(name, shape):
  """(distribution, expected variance, bound or None) from Keras formulas."""
  if name in VARIANCE_SCALING:
    scale, mode, dist = VARIANCE_SCALING[name]
    variance = scale / max(1.0, _fan(shape, mode))
    if dist == "uniform":
      return "uniform", variance, math.sqrt(3.0 * variance)
    return "truncated_normal", variance, 2.0 * math.sqrt(variance) / TRUNC
  if name == "random_normal":
    return "normal", 0.05 ** 2, None
  if name == "random_uniform":
    return "uniform", 0.05 ** 2 / 3.0, 0.05
  if name == "truncated_normal":
    return "truncated_normal", (0.05 * TRUNC) ** 2, 2.0 * 0.05
  raise AssertionError(name)


def _check_sample(values, name, shape, what):
  dist, variance, bound = _expected(name, shape)
  var = float(np.var(values))
  assert abs(var / variance - 1.0) < VAR_RTOL, (what, var, variance)
  assert abs(float(np.mean(values))) < 5 * math.sqrt(variance / values.size)
  if dist == "uniform":
    assert np.max(np.abs(values)) <= bound * (1 + 1e-6), (what, bound)
    # Both ends of the interval are reached.
    assert np.max(values) > 0.97 * bound, (what, np.max(values), bound)
    assert np.min(values) < -0.97 * bound, (what, np.min(values), bound)
  elif dist == "truncated_normal":
    assert np.max(np.abs(values)) <= bound * (1 + 1e-6), (what, bound)
    # Truncated at 2 stddev, not earlier (a uniform of the same variance
    # would stop at 0.76 * bound).
    assert np.max(np.abs(values)) > 0.9 * bound, (what, bound)
  else:  # untruncated normal
    if values.size > 10000:
      assert np.max(np.abs(values)) > 3.0 * math.sqrt(variance), what


def test_keras_table_matches_keras():
  """The (scale, mode, distribution) table above is Keras 3's."""
  for name, (scale, mode, dist) in VARIANCE_SCALING.items():
    init = keras.initializers.get(name)
    assert (init.scale, init.mode, init.distribution) == (scale, mode, dist)
  assert keras.initializers.get("random_normal").stddev == 0.05
  assert keras.initializers.get("truncated_normal").stddev == 0.05
  ru = keras.initializers.get("random_uniform")
  assert (ru.minval, ru.maxval) == (-0.05, 0.05)
  assert compute_fans(SHAPES["depthwise_kernel"]) == (KH * KW * C, KH * KW * M)
  assert compute_fans(SHAPES["pointwise_kernel"]) == (C * M, F)
  assert compute_fans(SHAPES["bias"]) == (F, F)


@pytest.mark.parametrize("name", tuple(VARIANCE_SCALING) + (
    "random_normal", "random_uniform", "truncated_normal"))
def test_random_initializer_statistics(name):
  params_list = _init(_layer(name), range(N_KEYS))
  for key, shape in SHAPES.items():
    for params in params_list:
      assert params[key].shape == shape and params[key].dtype == jnp.float32
    ours = _pooled(params_list, key)
    _check_sample(ours, name, shape, ("sepconv_jax", key))
    # The formula is Keras's: the real Keras initializer passes the same
    # checks, and both empirical variances agree.
    theirs = _keras_pooled(name, shape)
    _check_sample(theirs, name, shape, ("keras", key))
    ratio = np.var(ours) / np.var(theirs)
    assert abs(ratio - 1.0) < 0.15, (key, ratio)
  if name == "random_normal":
    # Not truncated: values beyond 3 stddev exist in the pooled sample.
    everything = np.concatenate([_pooled(params_list, k) for k in SHAPES])
    assert np.max(np.abs(everything)) > 3 * 0.05


@pytest.mark.parametrize("name", ALL_NAMES)
def test_bfloat16_param_dtype(name):
  """param_dtype sets the dtype; values still follow the distribution.

  The name initializes the depthwise kernel only (the other params use
  "ones"), which keeps the number of distinct compilations down.
  """
  layer = _layer(name, bias_init="ones", param_dtype=jnp.bfloat16).clone(
      pointwise_initializer="ones")
  (params,) = _init(layer, [0])
  assert set(params) == set(SHAPES)
  for key, shape in SHAPES.items():
    assert params[key].shape == shape, key
    assert params[key].dtype == jnp.bfloat16, (key, params[key].dtype)
  np.testing.assert_array_equal(
      np.asarray(params["pointwise_kernel"], np.float32), 1.0)
  np.testing.assert_array_equal(np.asarray(params["bias"], np.float32), 1.0)
  shape = SHAPES["depthwise_kernel"]
  values = np.asarray(params["depthwise_kernel"], np.float64)
  if name in ("zeros", "ones"):
    np.testing.assert_array_equal(values, float(name == "ones"))
  elif name == "orthogonal":
    flat = values.reshape(-1, shape[-1])
    np.testing.assert_allclose(flat.T @ flat, np.eye(shape[-1]), atol=0.05)
  else:
    dist, variance, bound = _expected(name, shape)
    if bound is not None:
      assert np.max(np.abs(values)) <= bound * (1 + 2 ** -7)
    assert abs(np.var(values) / variance - 1.0) < 0.15


def test_zeros_and_ones_are_exact():
  for name, value in (("zeros", 0.0), ("ones", 1.0)):
    (params,) = _init(_layer(name), [3])
    for key, shape in SHAPES.items():
      assert params[key].shape == shape and params[key].dtype == jnp.float32
      np.testing.assert_array_equal(np.asarray(params[key]), value)


def _assert_orthonormal(w, what):
  w = np.asarray(w, np.float64)
  flat = w.reshape(-1, w.shape[-1])
  rows, cols = flat.shape
  gram = flat.T @ flat if rows >= cols else flat @ flat.T
  np.testing.assert_allclose(gram, np.eye(min(rows, cols)), atol=2e-5,
                             err_msg=str(what))


@pytest.mark.parametrize("c, m, f, k", [
    (C, M, F, KH),  # tall: (576, 2) depthwise and (128, 96) pointwise
    (2, 8, 32, 1),  # wide: (2, 8) depthwise and (16, 32) pointwise
])
def test_orthogonal(c, m, f, k):
  layer = _layer("orthogonal", c=c, m=m, f=f, k=k)
  p0, p1 = _init(layer, [0, 1], c=c, k=k)
  for key in ("depthwise_kernel", "pointwise_kernel"):
    shape = (k, k, c, m) if key == "depthwise_kernel" else (1, 1, c * m, f)
    assert p0[key].shape == shape and p0[key].dtype == jnp.float32
    _assert_orthonormal(p0[key], ("sepconv_jax", key, shape))
    _assert_orthonormal(p1[key], ("sepconv_jax", key, shape))
    assert not np.allclose(p0[key], p1[key])
    # The same property holds for Keras's own Orthogonal on that shape.
    _assert_orthonormal(keras.initializers.Orthogonal(seed=7)(shape),
                        ("keras", key, shape))
  np.testing.assert_array_equal(p0["bias"], 0.0)


@pytest.mark.parametrize("camel", sorted(CAMEL))
def test_camel_case_names(camel):
  name = CAMEL[camel]
  if name == "orthogonal":
    (params,) = _init(_layer(camel), [0])
    _assert_orthonormal(params["depthwise_kernel"], camel)
    _assert_orthonormal(params["pointwise_kernel"], camel)
    return
  if name in ("zeros", "ones"):
    (params,) = _init(_layer(camel), [0])
    for key in SHAPES:
      np.testing.assert_array_equal(params[key], float(name == "ones"))
    return
  params_list = _init(_layer(camel), range(N_KEYS))
  for key, shape in SHAPES.items():
    _check_sample(_pooled(params_list, key), name, shape, (camel, key))


def test_callable_initializers_are_used_as_is():
  calls = []

  def make(offset):
    def init(key, shape, dtype=jnp.float32):
      calls.append((offset, tuple(shape), jnp.dtype(dtype)))
      assert isinstance(key, jax.Array)
      n = math.prod(shape)
      return (jnp.arange(n, dtype=jnp.float32).reshape(shape) / n
              + offset).astype(dtype)
    return init

  layer = sepconv_jax.SeparableConv2D(
      filters=F, kernel_size=KH, depth_multiplier=M,
      data_format="channels_last", depthwise_initializer=make(1.0),
      pointwise_initializer=make(2.0), bias_initializer=make(3.0),
      param_dtype=jnp.bfloat16)
  (params,) = _init(layer, [0])
  offsets = {"depthwise_kernel": 1.0, "pointwise_kernel": 2.0, "bias": 3.0}
  assert sorted(set(calls)) == sorted(
      (offsets[k], s, jnp.dtype(jnp.bfloat16)) for k, s in SHAPES.items())
  for key, shape in SHAPES.items():
    n = math.prod(shape)
    expected = (np.arange(n, dtype=np.float32).reshape(shape) / n
                + offsets[key]).astype(jnp.bfloat16)
    assert params[key].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(params[key], np.float32),
                                  expected.astype(np.float32))


def test_jax_nn_initializers():
  layer = sepconv_jax.SeparableConv2D(
      filters=F, kernel_size=3, depth_multiplier=M,
      data_format="channels_last",
      depthwise_initializer=jax.nn.initializers.normal(stddev=0.3),
      pointwise_initializer=jax.nn.initializers.uniform(scale=0.5),
      bias_initializer=jax.nn.initializers.constant(0.7))
  params_list = _init(layer, range(2))
  dw = _pooled(params_list, "depthwise_kernel")
  assert abs(np.var(dw) / 0.09 - 1.0) < VAR_RTOL
  pw = _pooled(params_list, "pointwise_kernel")  # uniform on [0, 0.5)
  assert pw.min() >= 0.0 and pw.max() < 0.5 and pw.max() > 0.49
  assert abs(np.var(pw) / (0.25 / 12) - 1.0) < VAR_RTOL
  np.testing.assert_allclose(_pooled(params_list, "bias"), 0.7, rtol=1e-7)


@pytest.mark.parametrize("name", ["glorot_uniform", "he_normal",
                                  "random_normal", "orthogonal"])
def test_keys(name):
  layer = _layer(name)
  p0, p1, p0_again = _init(layer, [0, 1, 0])
  for key in ("depthwise_kernel", "pointwise_kernel"):
    assert not np.allclose(p0[key], p1[key]), key
    np.testing.assert_array_equal(p0[key], p0_again[key])


def test_params_get_independent_streams():
  """Same-shaped params, in one layer or two layers, get different values."""
  import flax.linen as nn

  class Two(nn.Module):
    @nn.compact
    def __call__(self, x):
      kw = dict(filters=1, kernel_size=1, depth_multiplier=1,
                data_format="channels_last",
                depthwise_initializer="random_normal",
                pointwise_initializer="random_normal",
                bias_initializer="random_normal")
      return (sepconv_jax.SeparableConv2D(**kw, name="a")(x)
              + sepconv_jax.SeparableConv2D(**kw, name="b")(x))

  params = Two().init(jax.random.key(0), jnp.zeros((1, 2, 2, 8)))["params"]
  # depthwise (1, 1, 8, 1) and pointwise (1, 1, 8, 1) have the same shape.
  arrays = [np.asarray(params[l][k]) for l in ("a", "b")
            for k in ("depthwise_kernel", "pointwise_kernel")]
  for a in arrays:
    assert a.shape == (1, 1, 8, 1)
  for i in range(len(arrays)):
    for j in range(i + 1, len(arrays)):
      assert not np.allclose(arrays[i], arrays[j]), (i, j)
  assert not np.allclose(params["a"]["bias"], params["b"]["bias"])
