"""Parity with the real `keras.layers.SeparableConv2D` (JAX backend).

Keras is the oracle: its layer is built on the same input, its weights
(`get_weights()`) are loaded as our params, and the outputs must agree.
Keras does not reject strides > 1 together with dilation_rate > 1, so that
combination is never used here.
"""

from __future__ import annotations

import os
import zlib

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

import sepconv_jax
from sepconv_jax import SeparableConv2D

CL, CF = "channels_last", "channels_first"

# Every activation name in the API spec.
ACTIVATIONS = (
    "linear", "relu", "relu6", "leaky_relu", "sigmoid", "hard_sigmoid",
    "tanh", "softmax", "elu", "selu", "softplus", "softsign", "swish",
    "silu", "hard_silu", "hard_swish", "gelu", "mish", "exponential",
    "log_softmax", "log_sigmoid", "hard_tanh", "celu", "tanh_shrink",
)

# Convolution configs cycled under the activations: both paddings, strides,
# dilation, depth multipliers, both data formats, with and without bias.
_CONV_CONFIGS = (
    dict(padding="same", strides=1, dilation_rate=1, depth_multiplier=1,
         data_format=CL, use_bias=True, kernel_size=3),
    dict(padding="valid", strides=2, dilation_rate=1, depth_multiplier=2,
         data_format=CF, use_bias=True, kernel_size=(3, 2)),
    dict(padding="same", strides=1, dilation_rate=2, depth_multiplier=3,
         data_format=CL, use_bias=False, kernel_size=(2, 3)),
    dict(padding="valid", strides=(1, 3), dilation_rate=1, depth_multiplier=1,
         data_format=CF, use_bias=False, kernel_size=(1, 4)),
    dict(padding="same", strides=(2, 1), dilation_rate=1, depth_multiplier=2,
         data_format=CF, use_bias=True, kernel_size=(4, 4)),
    dict(padding="valid", strides=1, dilation_rate=(2, 3),
         depth_multiplier=1, data_format=CL, use_bias=True,
         kernel_size=(3, 2)),
)


def _cases():
  """Every conv config through the layer, each with another activation
  (every activation name against Keras's own function: below)."""
  cases = []
  for i, cfg in enumerate(_CONV_CONFIGS):
    cases.append(dict(cfg, activation=ACTIVATIONS[(5 * i) % len(ACTIVATIONS)]))
  # softmax-like activations must act on the LAST axis even for
  # channels_first, like Keras: make sure both formats are covered.
  cases.append(dict(_CONV_CONFIGS[0], activation="softmax", data_format=CF))
  cases.append(dict(_CONV_CONFIGS[1], activation="log_softmax",
                    data_format=CL))
  # No activation, and a few more geometry cases (the full profile: the
  # float64 reference grids cover these geometries).
  cases.append(dict(_CONV_CONFIGS[2], activation=None))
  more = pytest.mark.full("more geometries")
  cases.append(pytest.param(dict(
      padding="same", strides=3, dilation_rate=1, depth_multiplier=2,
      data_format=CL, use_bias=True, kernel_size=(5, 2), activation=None),
                            marks=more))
  cases.append(pytest.param(dict(
      padding="same", strides=1, dilation_rate=3, depth_multiplier=1,
      data_format=CF, use_bias=True, kernel_size=3, activation="relu"),
                            marks=more))
  cases.append(pytest.param(dict(
      padding="valid", strides=1, dilation_rate=1, depth_multiplier=3,
      data_format=CL, use_bias=False, kernel_size=1, activation="gelu"),
                            marks=more))
  return cases


def _cid(cfg):
  return "-".join(f"{k}={v}" for k, v in cfg.items()).replace(" ", "")


def _input_shape(fmt, n=2, h=7, w=9, c=3):
  return (n, h, w, c) if fmt == CL else (n, c, h, w)


@pytest.mark.parametrize("cfg", _cases(), ids=_cid)
def test_matches_keras_layer(cfg):
  seed = zlib.crc32(_cid(cfg).encode()) % (2**31)
  keras.utils.set_random_seed(seed)
  rng = np.random.default_rng(seed)
  filters = 4
  kwargs = dict(cfg)
  x = (2.0 * rng.standard_normal(_input_shape(kwargs["data_format"]))).astype(
      np.float32)

  layer = keras.layers.SeparableConv2D(filters, **kwargs)
  layer(x)  # build
  weights = layer.get_weights()
  if kwargs["use_bias"]:
    # Keras initialises the bias to zeros; give it values that matter.
    weights[2] = rng.standard_normal(filters).astype(np.float32)
    layer.set_weights(weights)
  expected = np.asarray(layer(x))

  params = {"depthwise_kernel": weights[0], "pointwise_kernel": weights[1]}
  if kwargs["use_bias"]:
    params["bias"] = weights[2]
  ours = SeparableConv2D(filters, **kwargs)
  # The param shapes our layer creates agree with Keras's weights.
  shapes = jax.tree.map(np.shape, jax.eval_shape(
      ours.init, jax.random.key(0), x)["params"])
  assert shapes == {k: v.shape for k, v in params.items()}
  out = np.asarray(jax.jit(ours.apply)({"params": params}, x))
  assert out.shape == expected.shape
  assert out.dtype == expected.dtype == np.float32
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


_SHAPE_CASES = [
    (dict(kernel_size=3), (2, 9, 9, 3)),
    (dict(kernel_size=(2, 5), padding="same", strides=2), (1, 7, 8, 2)),
    (dict(kernel_size=3, strides=(3, 2), data_format=CF), (2, 1, 9, 8)),
    (dict(kernel_size=(3, 2), dilation_rate=(2, 3)), (2, 7, 9, 2)),
    (dict(kernel_size=4, padding="same", dilation_rate=2, data_format=CF,
          depth_multiplier=3), (3, 2, 5, 3)),
    (dict(kernel_size=5, padding="same", strides=(1, 3)), (1, 2, 2, 1)),
    (dict(kernel_size=3, padding="same", strides=2), (None, 9, 8, 3)),
    (dict(kernel_size=(1, 3), strides=2, data_format=CF), (None, 3, 5, 7)),
    (dict(kernel_size=3, padding="valid"), (None, None, 7, 3)),
]


@pytest.mark.parametrize("kwargs,shape", _SHAPE_CASES, ids=str)
def test_compute_output_shape_matches_keras(kwargs, shape):
  filters = 5
  expected = keras.layers.SeparableConv2D(
      filters, **kwargs).compute_output_shape(shape)
  got = SeparableConv2D(filters, **kwargs).compute_output_shape(shape)
  assert tuple(got) == tuple(expected)


@pytest.mark.parametrize("fmt", [CL, CF])
def test_every_activation_name_matches_keras(fmt):
  """The function each activation name gives the layer, against Keras's
  `keras.activations.get` on the layer's output layout (softmax and
  log_softmax act on the last axis whatever the data format, as in
  Keras)."""
  x = (3.0 * np.random.default_rng(11).standard_normal(
      _input_shape(fmt, w=5, c=4))).astype(np.float32)
  for act in ACTIVATIONS:
    ours = sepconv_jax._activations.get(act)
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(x))),
                               np.asarray(keras.activations.get(act)(x)),
                               rtol=1e-5, atol=1e-6, err_msg=act)


# Keras 3 activation names beyond the spec's list. Whichever of them our
# layer accepts must agree with Keras too ("glu" is left out: it halves the
# last axis, so it is not shape-preserving).
_EXTRA_ACTIVATIONS = ("hard_shrink", "soft_shrink", "sparse_plus",
                      "sparse_sigmoid", "sparsemax", "squareplus")


def test_extra_keras_activation_names_that_we_accept_match_keras():
  rng = np.random.default_rng(7)
  x = (2.0 * rng.standard_normal((2, 6, 5, 3))).astype(np.float32)
  for act in _EXTRA_ACTIVATIONS:
    try:
      ours = SeparableConv2D(4, 3, padding="same", activation=act)
    except ValueError as e:  # not in the spec's list: may be rejected,
      assert "`activation`" in str(e) and repr(act) in str(e)  # clearly.
      continue
    layer = keras.layers.SeparableConv2D(4, 3, padding="same",
                                         activation=act)
    layer(x)
    weights = layer.get_weights()
    weights[2] = rng.standard_normal(4).astype(np.float32)
    layer.set_weights(weights)
    expected = np.asarray(layer(x))
    out = ours.apply({"params": dict(zip(
        ("depthwise_kernel", "pointwise_kernel", "bias"), weights))}, x)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5,
                               atol=1e-5, err_msg=act)
