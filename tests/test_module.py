"""The linen module `sepconv_jax.SeparableConv2D`.

Expected values come from tests/reference.py (float64 NumPy) or closed
forms; params are set explicitly from NumPy where values matter.
"""

from __future__ import annotations

import copy
import itertools
import json
import pickle
import zlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sepconv_jax
from sepconv_jax import SeparableConv2D

try:
  from tests import reference as ref
except ImportError:  # tests/ itself on sys.path
  import reference as ref

CL, CF = "channels_last", "channels_first"
KEY = jax.random.key(0)


def _rng(*key):
  return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _input(rng, lead, h, w, c, fmt):
  shape = tuple(lead) + ((h, w, c) if fmt == CL else (c, h, w))
  return rng.standard_normal(shape).astype(np.float32)


def _params(rng, kh, kw, c, m, f, use_bias=True):
  p = {
      "depthwise_kernel": (rng.standard_normal((kh, kw, c, m))
                           / np.sqrt(kh * kw)).astype(np.float32),
      "pointwise_kernel": (rng.standard_normal((1, 1, c * m, f))
                           / np.sqrt(c * m)).astype(np.float32),
  }
  if use_bias:
    p["bias"] = rng.standard_normal((f,)).astype(np.float32)
  return p


def _ref(x, p, strides, padding, dilation, fmt):
  return ref.separable_conv2d(x, p["depthwise_kernel"], p["pointwise_kernel"],
                              p.get("bias"), strides, padding, dilation, fmt)


assert_close = ref.assert_close


def _pair(v):
  return ref.pair(v)


# --------------------------------------------------------------------------
# Params.
# --------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kernel_size,m,f,fmt,use_bias,param_dtype",
    [
        (3, 1, 4, CL, True, jnp.float32),
        ((2, 3), 2, 1, CF, True, jnp.bfloat16),
        ([1, 4], 3, 2, CL, False, jnp.float16),
        ((5, 1), 1, 3, CF, False, jnp.float32),
    ],
    ids=str,
)
def test_param_names_shapes_dtypes(kernel_size, m, f, fmt, use_bias,
                                   param_dtype):
  c = 3
  layer = SeparableConv2D(f, kernel_size, depth_multiplier=m, data_format=fmt,
                          use_bias=use_bias, padding="same",
                          param_dtype=param_dtype)
  x = jnp.ones((2, 6, 6, c) if fmt == CL else (2, c, 6, 6))
  variables = jax.eval_shape(layer.init, KEY, x)
  assert set(variables) == {"params"}
  params = variables["params"]
  kh, kw = _pair(kernel_size)
  expected = {"depthwise_kernel": (kh, kw, c, m),
              "pointwise_kernel": (1, 1, c * m, f)}
  if use_bias:
    expected["bias"] = (f,)
  assert {k: tuple(v.shape) for k, v in params.items()} == expected
  for v in params.values():
    assert v.dtype == param_dtype


def test_params_are_a_plain_dict_pytree():
  layer = SeparableConv2D(2, 3)
  variables = layer.init(KEY, jnp.ones((1, 5, 5, 2)))
  assert type(variables) is dict
  assert type(variables["params"]) is dict
  assert not isinstance(variables, flax.core.FrozenDict)
  leaves, treedef = jax.tree_util.tree_flatten(variables)
  assert len(leaves) == 3
  assert all(isinstance(leaf, jax.Array) for leaf in leaves)
  rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
  assert type(rebuilt) is dict and type(rebuilt["params"]) is dict
  # Paths are the Keras weight names.
  paths = {tuple(k.key for k in path) for path, _ in
           jax.tree_util.tree_flatten_with_path(variables)[0]}
  assert paths == {("params", "depthwise_kernel"),
                   ("params", "pointwise_kernel"), ("params", "bias")}


def test_callable_initializers_are_used():
  def init_dw(key, shape, dtype):
    return jnp.full(shape, 0.5, dtype)

  def init_b(key, shape, dtype):
    return jnp.arange(shape[0], dtype=dtype)

  layer = SeparableConv2D(3, (2, 2), depth_multiplier=2,
                          depthwise_initializer=init_dw,
                          pointwise_initializer="ones",
                          bias_initializer=init_b)
  x = np.ones((1, 4, 4, 2), np.float32)
  variables = layer.init(KEY, x)
  np.testing.assert_array_equal(variables["params"]["depthwise_kernel"],
                                np.full((2, 2, 2, 2), 0.5))
  # every output: 0.5 * kh*kw*C*M + bias[f] = 0.5 * 16 + f
  out = np.asarray(layer.apply(variables, x))
  np.testing.assert_array_equal(
      out, np.broadcast_to(8.0 + np.arange(3, dtype=np.float32),
                           (1, 3, 3, 3)))


# --------------------------------------------------------------------------
# Outputs against the reference.
# --------------------------------------------------------------------------

def _module_grid():
  cases = []
  combos = itertools.product(("valid", "same"),
                             ((1, 1), (2, 1), (1, 2), ((1, 3), 1)),
                             (CL, CF))
  kernels = ((3, 3), (1, 1), (2, 3), (5, 2), (4, 4), (3, 1))
  for idx, (padding, (s, d), fmt) in enumerate(combos):
    kh, kw = kernels[idx % len(kernels)]
    m = 1 + idx % 3
    h, w = (7, 5) if idx % 2 else (6, 9)
    if padding == "valid":
      h = max(h, (kh - 1) * _pair(d)[0] + 1)
      w = max(w, (kw - 1) * _pair(d)[1] + 1)
    cases.append(dict(padding=padding, strides=s, dilation=d, fmt=fmt, kh=kh,
                      kw=kw, m=m, h=h, w=w, c=1 + idx % 4, f=1 + (idx // 2) % 3))
  return cases


def _cid(cfg):
  return "{padding}-s{strides}-d{dilation}-{fmt}-k{kh}x{kw}-M{m}".format(
      **cfg).replace(" ", "")


@pytest.mark.parametrize("cfg", _module_grid(), ids=_cid)
def test_module_matches_reference(cfg):
  rng = _rng("module", _cid(cfg))
  kh, kw = cfg["kh"], cfg["kw"]
  layer = SeparableConv2D(cfg["f"], (kh, kw), strides=cfg["strides"],
                          padding=cfg["padding"], data_format=cfg["fmt"],
                          dilation_rate=cfg["dilation"],
                          depth_multiplier=cfg["m"])
  x = _input(rng, (2,), cfg["h"], cfg["w"], cfg["c"], cfg["fmt"])
  p = _params(rng, kh, kw, cfg["c"], cfg["m"], cfg["f"])
  # jit: one compilation instead of eager per-op dispatch (much faster on
  # CPU); eager apply is covered by the other tests and test_jit_of_apply.
  out = jax.jit(layer.apply)({"params": p}, x)
  assert out.dtype == jnp.float32
  assert_close(out, _ref(x, p, cfg["strides"], cfg["padding"],
                         cfg["dilation"], cfg["fmt"]))


@pytest.mark.parametrize("fmt", [CL, CF])
def test_use_bias_false(fmt):
  rng = _rng("nobias", fmt)
  layer = SeparableConv2D(3, (3, 2), padding="same", depth_multiplier=2,
                          data_format=fmt, use_bias=False)
  x = _input(rng, (2,), 5, 7, 2, fmt)
  variables = jax.eval_shape(layer.init, KEY, x)
  assert set(variables["params"]) == {"depthwise_kernel", "pointwise_kernel"}
  p = _params(rng, 3, 2, 2, 2, 3, use_bias=False)
  out = jax.jit(layer.apply)({"params": p}, x)
  assert_close(out, _ref(x, p, 1, "same", 1, fmt))


def test_activation_callable():
  rng = _rng("act-callable")
  layer = SeparableConv2D(2, 3, activation=jnp.tanh)
  x = _input(rng, (2,), 6, 6, 3, CL)
  p = _params(rng, 3, 3, 3, 1, 2)
  out = layer.apply({"params": p}, x)
  assert_close(out, np.tanh(_ref(x, p, 1, "valid", 1, CL)))


def test_dtype_bfloat16_compute():
  # dtype=bf16: computation (and output) in bf16, params stay float32.
  # bf16 keeps 8 significant bits; we allow rtol 2e-2 and
  # atol 2e-2 * max|ref| against the float64 reference on the same
  # bf16-rounded operands.
  rng = _rng("bf16-module")
  layer = SeparableConv2D(3, (3, 3), padding="same", depth_multiplier=2,
                          dtype=jnp.bfloat16)
  x = _input(rng, (2,), 6, 5, 2, CL)
  variables = jax.eval_shape(layer.init, KEY, x)
  for v in variables["params"].values():
    assert v.dtype == jnp.float32
  p = _params(rng, 3, 3, 2, 2, 3)
  out = jax.jit(layer.apply)({"params": p}, x)
  assert out.dtype == jnp.bfloat16

  def rounded(a):
    return np.asarray(jnp.asarray(a, jnp.bfloat16).astype(jnp.float32))

  expected = _ref(rounded(x), {k: rounded(v) for k, v in p.items()}, 1,
                  "same", 1, CL)
  np.testing.assert_allclose(np.asarray(out.astype(jnp.float32)), expected,
                             rtol=2e-2,
                             atol=2e-2 * float(np.abs(expected).max()))


def test_integer_inputs():
  rng = _rng("int-module")
  layer = SeparableConv2D(2, 2, strides=2)
  x = rng.integers(-4, 5, (2, 5, 5, 3)).astype(np.int32)
  p = _params(rng, 2, 2, 3, 1, 2)
  out = layer.apply({"params": p}, x)
  assert out.dtype == jnp.float32
  assert_close(out, _ref(x.astype(np.float64), p, 2, "valid", 1, CL))


@pytest.mark.parametrize("fmt", [CL, CF])
@pytest.mark.parametrize("lead", [(), (2, 3), (1, 2, 2)], ids=str)
def test_leading_batch_dims_and_rank3(lead, fmt):
  rng = _rng("lead-module", lead, fmt)
  layer = SeparableConv2D(3, (2, 3), padding="same", strides=(2, 1),
                          depth_multiplier=2, data_format=fmt)
  x = _input(rng, lead, 5, 6, 2, fmt)
  variables = jax.eval_shape(layer.init, KEY, x)  # init works at any rank
  assert variables["params"]["depthwise_kernel"].shape == (2, 3, 2, 2)
  p = _params(rng, 2, 3, 2, 2, 3)
  out = jax.jit(layer.apply)({"params": p}, x)
  flat = x.reshape((-1,) + x.shape[len(lead):])
  expected = _ref(flat, p, (2, 1), "same", 1, fmt)
  expected = expected.reshape(lead + expected.shape[1:])
  assert out.ndim == len(lead) + 3
  assert_close(out, expected)


def test_data_format_none_reads_keras_json(monkeypatch, tmp_path):
  (tmp_path / "keras.json").write_text(
      json.dumps({"image_data_format": "channels_first"}))
  monkeypatch.setenv("KERAS_HOME", str(tmp_path))
  rng = _rng("keras-json-module")
  layer = SeparableConv2D(2, 2)  # data_format=None
  x = _input(rng, (2,), 4, 5, 3, CF)  # NCHW, C=3
  variables = layer.init(KEY, x)
  assert variables["params"]["depthwise_kernel"].shape == (2, 2, 3, 1)
  p = _params(rng, 2, 2, 3, 1, 2)
  assert_close(layer.apply({"params": p}, x), _ref(x, p, 1, "valid", 1, CF))


def test_arguments_are_resolved_once_per_instance(monkeypatch):
  """Each module instance (Flax clones one per init/apply) validates and
  resolves its arguments once, when made; calls reuse that."""
  made = []
  resolve = sepconv_jax._layers.layer_config

  def counting(layer, rank, family):
    made.append(layer)  # held, so no two instances share an id()
    return resolve(layer, rank, family)

  monkeypatch.setattr(sepconv_jax._layers, "layer_config", counting)
  layer = SeparableConv2D(4, 3, padding="same", pointwise_constraint="non_neg")
  assert len(made) == 1
  x = jnp.ones((1, 6, 6, 2))
  for _ in range(3):
    assert layer.compute_output_shape(x.shape) == (1, 6, 6, 4)
    assert list(layer.keras_constraints()) == ["pointwise_kernel"]
  assert len(made) == 1
  variables = layer.init(KEY, x)
  for _ in range(3):
    layer.apply(variables, x)
  ids = [id(m) for m in made]
  assert len(ids) == len(set(ids))  # No instance resolved twice.


def test_pickled_and_copied_modules_resolve_again():
  layer = SeparableConv2D(4, 3, activation="relu", depthwise_regularizer="l2")
  x = _input(_rng("pickle"), (2,), 5, 5, 3, CL)
  variables = layer.init(KEY, x)
  for twin in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer),
               copy.copy(layer)):
    assert twin == layer and hash(twin) == hash(layer)
    assert_close(twin.apply(variables, x), layer.apply(variables, x))


# --------------------------------------------------------------------------
# Closed forms.
# --------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kernel_size,c,m,f,fmt,bias_init",
    [
        ((3, 3), 3, 1, 2, CL, "zeros"),
        ((3, 3), 3, 1, 2, CL, "ones"),
        ((2, 4), 2, 3, 1, CF, "ones"),
        ((1, 1), 4, 2, 3, CF, "zeros"),
        ((5, 2), 1, 2, 2, CL, "ones"),
    ],
    ids=str,
)
def test_all_ones_closed_form(kernel_size, c, m, f, fmt, bias_init):
  kh, kw = kernel_size
  layer = SeparableConv2D(f, kernel_size, depth_multiplier=m, data_format=fmt,
                          depthwise_initializer="ones",
                          pointwise_initializer="ones",
                          bias_initializer=bias_init)
  h, w = 7, 6
  x = jnp.ones((2, h, w, c) if fmt == CL else (2, c, h, w))
  variables = jax.jit(layer.init)(KEY, x)
  out = np.asarray(jax.jit(layer.apply)(variables, x))
  oh, ow = h - kh + 1, w - kw + 1
  assert out.shape == ((2, oh, ow, f) if fmt == CL else (2, f, oh, ow))
  value = kh * kw * c * m + (1 if bias_init == "ones" else 0)
  np.testing.assert_array_equal(out, np.full(out.shape, value, np.float32))


# --------------------------------------------------------------------------
# compute_output_shape.
# --------------------------------------------------------------------------

_SHAPE_CASES = [
    # (layer kwargs, input shape)
    (dict(filters=4, kernel_size=3), (2, 9, 9, 3)),
    (dict(filters=2, kernel_size=(2, 5), padding="same", strides=2),
     (1, 7, 8, 2)),
    (dict(filters=3, kernel_size=3, strides=(3, 2), data_format=CF),
     (2, 1, 9, 8)),
    (dict(filters=5, kernel_size=(3, 2), dilation_rate=(2, 3)), (2, 7, 9, 2)),
    (dict(filters=1, kernel_size=4, padding="SAME", dilation_rate=2,
          data_format=CF, depth_multiplier=3), (3, 2, 5, 3)),
    (dict(filters=2, kernel_size=1, strides=3, padding="same"), (4, 4, 3)),
    (dict(filters=2, kernel_size=5, padding="same", strides=(1, 3)),
     (2, 3, 2, 6, 5, 1)),
    (dict(filters=6, kernel_size=(1, 3), data_format=CF, strides=2),
     (2, 2, 3, 5, 7)),
    (dict(filters=2, kernel_size=5, padding="same"), (1, 2, 2, 1)),
]


@pytest.mark.parametrize("kwargs,shape", _SHAPE_CASES, ids=str)
def test_compute_output_shape_equals_eval_shape(kwargs, shape):
  layer = SeparableConv2D(**kwargs)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(layer.init, KEY, x)
  out = jax.eval_shape(layer.apply, variables, x)
  got = layer.compute_output_shape(shape)
  assert isinstance(got, tuple)
  assert got == tuple(out.shape)
  # ... and both equal the spec's closed-form sizes.
  fmt = kwargs.get("data_format", CL)
  kh, kw = _pair(kwargs["kernel_size"])
  sh, sw = _pair(kwargs.get("strides", 1))
  dh, dw = _pair(kwargs.get("dilation_rate", 1))
  padding = kwargs.get("padding", "valid")
  if fmt == CL:
    *lead, h, w, _ = shape
  else:
    *lead, _, h, w = shape
  oh = ref.output_size(h, kh, sh, dh, padding)
  ow = ref.output_size(w, kw, sw, dw, padding)
  f = kwargs["filters"]
  expected = tuple(lead) + ((oh, ow, f) if fmt == CL else (f, oh, ow))
  assert got == expected


def test_compute_output_shape_unknown_sizes():
  layer = SeparableConv2D(4, 3, padding="same", strides=2)
  assert layer.compute_output_shape((None, 9, 8, 3)) == (None, 5, 4, 4)
  layer = SeparableConv2D(4, 3, data_format=CF)
  assert layer.compute_output_shape((None, 3, 9, 8)) == (None, 4, 7, 6)


def test_alias():
  assert sepconv_jax.SeparableConvolution2D is sepconv_jax.SeparableConv2D


# --------------------------------------------------------------------------
# Transformations.
# --------------------------------------------------------------------------

def test_jit_of_apply():
  rng = _rng("jit-module")
  layer = SeparableConv2D(3, (3, 2), strides=2, padding="same",
                          depth_multiplier=2, activation="relu")
  x = _input(rng, (2,), 7, 6, 2, CL)
  variables = layer.init(KEY, x)
  eager = layer.apply(variables, x)
  jitted = jax.jit(layer.apply)(variables, x)
  np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager),
                             rtol=1e-6, atol=1e-6)
  p = {k: np.asarray(v) for k, v in variables["params"].items()}
  assert_close(jitted, np.maximum(_ref(x, p, 2, "same", 1, CL), 0.0))


@pytest.mark.parametrize("fmt", [CL, CF])
def test_grad_through_apply(fmt):
  # Loss L = sum(g * y) is linear in each param, so its exact gradient can be
  # read off the float64 reference: bias -> sum of g over positions,
  # pointwise -> einsum(depthwise(x), g), depthwise -> L at each basis kernel.
  rng = _rng("grad-module", fmt)
  kh, kw, c, m, f = 3, 2, 2, 2, 3
  layer = SeparableConv2D(f, (kh, kw), padding="same", strides=(1, 2),
                          depth_multiplier=m, data_format=fmt)
  x = _input(rng, (2,), 5, 6, c, fmt)
  p = _params(rng, kh, kw, c, m, f)
  y_ref = _ref(x, p, (1, 2), "same", 1, fmt)
  g = rng.standard_normal(y_ref.shape)

  def loss(params):
    return jnp.sum(layer.apply({"params": params}, x) * g)

  grads = jax.jit(jax.grad(loss))({k: jnp.asarray(v) for k, v in p.items()})
  assert set(grads) == set(p)
  g_cl = g if fmt == CL else np.moveaxis(g, 1, -1)
  assert_close(grads["bias"], g_cl.sum(axis=(0, 1, 2)))
  dw = ref.depthwise_conv2d(x, p["depthwise_kernel"], (1, 2), "same", 1, fmt)
  dw_cl = dw if fmt == CL else np.moveaxis(dw, 1, -1)
  assert_close(grads["pointwise_kernel"],
               np.einsum("nhwk,nhwf->kf", dw_cl, g_cl)[None, None])
  expected_dk = np.zeros((kh, kw, c, m))
  for idx in np.ndindex(kh, kw, c, m):
    basis = np.zeros((kh, kw, c, m))
    basis[idx] = 1.0
    expected_dk[idx] = np.sum(g * ref.separable_conv2d(
        x, basis, p["pointwise_kernel"], None, (1, 2), "same", 1, fmt))
  assert_close(grads["depthwise_kernel"], expected_dk)
