"""Every error case of the API spec.

Each error must be a ValueError (bad value) or TypeError (wrong type) whose
message names the argument in backticks AND shows the offending value
(its repr(), or for arrays their shape). Both are checked independently of
their order in the message.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import sepconv_jax
from sepconv_jax import SeparableConv2D

KEY = jax.random.key(0)


def _pattern(name, *shown):
  """Regex: the backticked `name` and every `shown` text, in any order."""
  parts = [f"(?=.*{re.escape('`' + name + '`')})"]
  for s in shown:
    if isinstance(s, (tuple, list)) and not isinstance(s, str):
      # any one of several acceptable renderings
      parts.append("(?=.*(?:" + "|".join(re.escape(t) for t in s) + "))")
    else:
      parts.append(f"(?=.*{re.escape(s)})")
  return "(?s)^" + "".join(parts)


def raises(exc, name, *shown):
  return pytest.raises(exc, match=_pattern(name, *shown))


# Valid arrays for the functional API: C=3, M=2, F=4.
X = np.ones((2, 6, 6, 3), np.float32)
DK = np.ones((3, 3, 3, 2), np.float32)
PK = np.ones((1, 1, 6, 4), np.float32)
B = np.ones((4,), np.float32)


def _sep(**kw):
  return sepconv_jax.separable_conv2d(X, DK, PK, B, **kw)


def _dw(**kw):
  return sepconv_jax.depthwise_conv2d(X, DK, **kw)


FUNCS = pytest.mark.parametrize("fn", [_sep, _dw], ids=["separable",
                                                        "depthwise"])


# --------------------------------------------------------------------------
# Configuration errors: functional API.
# --------------------------------------------------------------------------

_INT_PAIR_BAD = [
    # (value, exception, shown)
    (2.0, TypeError, "2.0"),
    (True, TypeError, "True"),
    ("3", TypeError, "'3'"),
    ((2, 2.0), TypeError, "(2, 2.0)"),
    (None, TypeError, "None"),
    (0, ValueError, "0"),
    (-1, ValueError, "-1"),
    ((1, 0), ValueError, "(1, 0)"),
    ((2, -2), ValueError, "(2, -2)"),
    ((1, 1, 1), ValueError, "(1, 1, 1)"),
    ((2,), ValueError, "(2,)"),
]


@FUNCS
@pytest.mark.parametrize("arg", ["strides", "dilation_rate"])
@pytest.mark.parametrize("value,exc,shown", _INT_PAIR_BAD, ids=repr)
def test_functional_bad_strides_and_dilation(fn, arg, value, exc, shown):
  with raises(exc, arg, shown):
    fn(**{arg: value})


@FUNCS
@pytest.mark.parametrize("value,exc,shown", [
    ("causal", ValueError, "'causal'"),
    ("CAUSAL", ValueError, "'CAUSAL'"),
    ("full", ValueError, "'full'"),
    ("", ValueError, "''"),
    (None, TypeError, "None"),
    (1, TypeError, "1"),
], ids=repr)
def test_functional_bad_padding(fn, value, exc, shown):
  with raises(exc, "padding", shown):
    fn(padding=value)


@FUNCS
@pytest.mark.parametrize("value,exc,shown", [
    ("channels_middle", ValueError, "'channels_middle'"),
    ("NHWC", ValueError, "'NHWC'"),
    (3, TypeError, "3"),
], ids=repr)
def test_functional_bad_data_format(fn, value, exc, shown):
  with raises(exc, "data_format", shown):
    fn(data_format=value)


@FUNCS
@pytest.mark.parametrize("strides,dilation", [
    (2, 2), ((1, 2), (2, 1)), ((3, 1), 2), (2, (1, 3))], ids=str)
def test_functional_strides_with_dilation(fn, strides, dilation):
  pattern = _pattern("strides", repr(strides))
  with pytest.raises(ValueError, match=pattern) as info:
    fn(strides=strides, dilation_rate=dilation)
  assert re.search(_pattern("dilation_rate", repr(dilation)),
                   str(info.value)), str(info.value)


@FUNCS
def test_functional_unknown_implementation(fn):
  with raises(ValueError, "implementation", "'no-such-impl'"):
    fn(implementation="no-such-impl")


# --------------------------------------------------------------------------
# Array errors: functional API.
# --------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(6, 6), (6,), ()], ids=str)
def test_functional_input_rank_too_low(shape):
  x = np.ones(shape, np.float32)
  with raises(ValueError, "inputs", str(shape)):
    sepconv_jax.separable_conv2d(x, DK, PK, B)
  with raises(ValueError, "inputs", str(shape)):
    sepconv_jax.depthwise_conv2d(x, DK)


@pytest.mark.parametrize("fmt,shape", [
    ("channels_last", (2, 5, 5, 0)), ("channels_first", (2, 0, 5, 5)),
    ("channels_last", (5, 5, 0))], ids=str)
def test_functional_zero_channels(fmt, shape):
  x = np.ones(shape, np.float32)
  dk = np.ones((3, 3, 0, 1), np.float32)
  pk = np.ones((1, 1, 0, 2), np.float32)
  with raises(ValueError, "inputs", str(shape)):
    sepconv_jax.separable_conv2d(x, dk, pk, data_format=fmt)
  with raises(ValueError, "inputs", str(shape)):
    sepconv_jax.depthwise_conv2d(x, dk, data_format=fmt)


@pytest.mark.parametrize("shape,kernel,kw,spatial", [
    ((1, 2, 2, 1), (3, 3), {}, (2, 2)),
    ((1, 4, 6, 1), (3, 3), dict(dilation_rate=2), (4, 6)),
    ((1, 5, 2, 1), (1, 3), dict(strides=2), (5, 2)),
    ((1, 1, 2, 7), (3, 2), dict(data_format="channels_first"), (2, 7)),
], ids=str)
def test_functional_valid_output_empty(shape, kernel, kw, spatial):
  x = np.ones(shape, np.float32)
  c = shape[1] if kw.get("data_format") == "channels_first" else shape[-1]
  dk = np.ones(kernel + (c, 1), np.float32)
  pk = np.ones((1, 1, c, 2), np.float32)
  # The offending value: the input's shape, or its spatial part.
  shown = (str(shape), str(spatial))
  with raises(ValueError, "inputs", shown):
    sepconv_jax.separable_conv2d(x, dk, pk, padding="valid", **kw)
  with raises(ValueError, "inputs", shown):
    sepconv_jax.depthwise_conv2d(x, dk, padding="valid", **kw)


@pytest.mark.parametrize("dk_shape,fmt", [
    ((3, 3, 2, 1), "channels_last"),   # channels differ from the input's 3
    ((3, 3, 3), "channels_last"),      # rank 3
    ((3, 3, 3, 1, 1), "channels_last"),  # rank 5
    ((3, 3, 6, 1), "channels_first"),  # matches W, not C, of NCHW
], ids=str)
def test_functional_depthwise_kernel_shape(dk_shape, fmt):
  x = np.ones((2, 6, 6, 3) if fmt == "channels_last" else (2, 3, 6, 6),
              np.float32)
  dk = np.ones(dk_shape, np.float32)
  with raises(ValueError, "depthwise_kernel", str(dk_shape)):
    sepconv_jax.depthwise_conv2d(x, dk, data_format=fmt)
  pk = np.ones((1, 1, 3, 2), np.float32)
  with raises(ValueError, "depthwise_kernel", str(dk_shape)):
    sepconv_jax.separable_conv2d(x, dk, pk, data_format=fmt)


@pytest.mark.parametrize("pk_shape", [
    (1, 1, 4, 2),   # C*M = 6 expected
    (1, 1, 3, 4),   # C, not C*M
    (3, 3, 6, 4),   # not 1x1
    (1, 1, 6),      # rank 3
    (6, 4),         # rank 2
], ids=str)
def test_functional_pointwise_kernel_shape(pk_shape):
  pk = np.ones(pk_shape, np.float32)
  with raises(ValueError, "pointwise_kernel", str(pk_shape)):
    sepconv_jax.separable_conv2d(X, DK, pk, B)


@pytest.mark.parametrize("b_shape", [(3,), (5,), (1, 4), (4, 1), ()],
                         ids=str)
def test_functional_bias_shape(b_shape):
  b = np.ones(b_shape, np.float32)
  with raises(ValueError, "bias", str(b_shape)):
    sepconv_jax.separable_conv2d(X, DK, PK, b)


# --------------------------------------------------------------------------
# Configuration errors: the module, raised at construction.
# --------------------------------------------------------------------------

_POSITIVE_INT_BAD = [
    (2.0, TypeError, "2.0"),
    (True, TypeError, "True"),
    ("3", TypeError, "'3'"),
    (None, TypeError, "None"),
    (0, ValueError, "0"),
    (-1, ValueError, "-1"),
]


@pytest.mark.parametrize("value,exc,shown", _POSITIVE_INT_BAD, ids=repr)
def test_module_bad_filters(value, exc, shown):
  with raises(exc, "filters", shown):
    SeparableConv2D(value, 3)


@pytest.mark.parametrize("value,exc,shown", _POSITIVE_INT_BAD, ids=repr)
def test_module_bad_depth_multiplier(value, exc, shown):
  with raises(exc, "depth_multiplier", shown):
    SeparableConv2D(4, 3, depth_multiplier=value)


@pytest.mark.parametrize("arg", ["kernel_size", "strides", "dilation_rate"])
@pytest.mark.parametrize("value,exc,shown", _INT_PAIR_BAD, ids=repr)
def test_module_bad_int_pairs(arg, value, exc, shown):
  kwargs = dict(filters=4, kernel_size=3)
  kwargs[arg] = value
  with raises(exc, arg, shown):
    SeparableConv2D(**kwargs)


@pytest.mark.parametrize("value,exc,shown", [
    ("causal", ValueError, "'causal'"),
    ("full", ValueError, "'full'"),
    (None, TypeError, "None"),
], ids=repr)
def test_module_bad_padding(value, exc, shown):
  with raises(exc, "padding", shown):
    SeparableConv2D(4, 3, padding=value)


@pytest.mark.parametrize("value,exc,shown", [
    ("channels_middle", ValueError, "'channels_middle'"),
    ("nchw", ValueError, "'nchw'"),
    (1, TypeError, "1"),
], ids=repr)
def test_module_bad_data_format(value, exc, shown):
  with raises(exc, "data_format", shown):
    SeparableConv2D(4, 3, data_format=value)


@pytest.mark.parametrize("strides,dilation", [(2, 2), ((1, 2), (3, 1))],
                         ids=str)
def test_module_strides_with_dilation(strides, dilation):
  with pytest.raises(ValueError) as info:
    SeparableConv2D(4, 3, strides=strides, dilation_rate=dilation)
  msg = str(info.value)
  assert re.search(_pattern("strides", repr(strides)), msg), msg
  assert re.search(_pattern("dilation_rate", repr(dilation)), msg), msg


_NAMED_ARGS = (
    ["activation"]
    + [f"{w}_initializer" for w in ("depthwise", "pointwise", "bias")]
    + [f"{w}_regularizer" for w in ("depthwise", "pointwise", "bias",
                                    "activity")]
    + [f"{w}_constraint" for w in ("depthwise", "pointwise", "bias")]
)


@pytest.mark.parametrize("arg", _NAMED_ARGS)
@pytest.mark.parametrize("value,exc,shown", [
    ("no_such_name", ValueError, "'no_such_name'"),
    (3.5, TypeError, "3.5"),
    ([1, 2], TypeError, "[1, 2]"),
], ids=repr)
def test_module_unknown_or_uncallable_names(arg, value, exc, shown):
  with raises(exc, arg, shown):
    SeparableConv2D(4, 3, **{arg: value})


# --------------------------------------------------------------------------
# Input / param errors: the module.
# --------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(6, 6), (6,)], ids=str)
def test_module_input_rank_too_low(shape):
  layer = SeparableConv2D(4, 3)
  with raises(ValueError, "inputs", str(shape)):
    layer.init(KEY, jnp.ones(shape))


@pytest.mark.parametrize("fmt,shape", [("channels_last", (2, 5, 5, 0)),
                                       ("channels_first", (2, 0, 5, 5))],
                         ids=str)
def test_module_zero_channels(fmt, shape):
  layer = SeparableConv2D(4, 3, data_format=fmt)
  with raises(ValueError, "inputs", str(shape)):
    layer.init(KEY, jnp.ones(shape))


def test_module_valid_output_empty():
  layer = SeparableConv2D(4, 3, dilation_rate=2)
  shape = (2, 4, 8, 3)
  with raises(ValueError, "inputs", (str(shape), "(4, 8)")):
    layer.init(KEY, jnp.ones(shape))


@pytest.mark.parametrize("fmt", ["channels_last", "channels_first"])
def test_module_channel_mismatch_names_the_param(fmt):
  layer = SeparableConv2D(4, 3, data_format=fmt)
  x3 = jnp.ones((2, 6, 6, 3) if fmt == "channels_last" else (2, 3, 6, 6))
  x5 = jnp.ones((2, 6, 6, 5) if fmt == "channels_last" else (2, 5, 6, 6))
  variables = layer.init(KEY, x3)
  layer.apply(variables, x3)  # fine
  with raises(ValueError, "depthwise_kernel", "(3, 3, 3, 1)"):
    layer.apply(variables, x5)
  with raises(ValueError, "depthwise_kernel", "(3, 3, 3, 1)"):
    jax.jit(layer.apply)(variables, x5)


@pytest.mark.parametrize("name,bad_shape", [
    ("depthwise_kernel", (3, 2, 3, 1)),
    ("pointwise_kernel", (1, 1, 3, 5)),
    ("pointwise_kernel", (1, 1, 6, 4)),
    ("bias", (5,)),
], ids=str)
def test_module_loaded_params_wrong_shape(name, bad_shape):
  layer = SeparableConv2D(4, 3)
  x = jnp.ones((2, 6, 6, 3))
  params = dict(layer.init(KEY, x)["params"])
  params[name] = jnp.ones(bad_shape)
  with raises(ValueError, name, str(bad_shape)):
    layer.apply({"params": params}, x)


# --------------------------------------------------------------------------
# Messages a new user met (issue: small defects).
# --------------------------------------------------------------------------
def test_unknown_padding_names_the_explicit_pairs_form():
  with raises(ValueError, "padding", "'full'", "explicit pairs",
              "((before, after), (before, after))"):
    sepconv_jax.separable_conv2d(X, DK, PK, padding="full")


def test_bias_shape_is_shown_as_a_tuple():
  with raises(ValueError, "bias", "(3,)", "expected shape (4,)"):
    sepconv_jax.separable_conv2d(X, DK, PK, np.ones((3,), np.float32))


@pytest.mark.parametrize("dk_shape", [(3, 3, 3), (3, 3, 3, 1, 1)], ids=str)
def test_wrong_rank_kernel_is_told_its_rank(dk_shape):
  dk = np.ones(dk_shape, np.float32)
  with raises(ValueError, "depthwise_kernel", f"has rank {len(dk_shape)}",
              "rank 4 is needed"):
    sepconv_jax.depthwise_conv2d(X, dk)


# --------------------------------------------------------------------------
# Messages that point at the real mistake (issue 20): a kernel in another
# library's layout, an input in the other data_format, float64 without x64.
# --------------------------------------------------------------------------
def _suggested(message):
  """The last backticked expression of `message`: the suggested fix."""
  return re.findall(r"`([^`]+)`", message)[-1]


def _keras_kernel(kh=3, kw=3, c=3, m=1, seed=0):
  return np.random.default_rng(seed).normal(
      size=(kh, kw, c, m)).astype(np.float32)


def _as_pytorch(k):
  """PyTorch's depthwise Conv2d(groups=C) weight (C*M, 1, kh, kw): output
  channel c*M + m reads input channel c, written out element by element."""
  kh, kw, c, m = k.shape
  w = np.zeros((c * m, 1, kh, kw), k.dtype)
  for i in range(kh):
    for j in range(kw):
      for ci in range(c):
        for mi in range(m):
          w[ci * m + mi, 0, i, j] = k[i, j, ci, mi]
  return w


def _as_flax_grouped(k):
  """Flax's nn.Conv(feature_group_count=C) kernel (kh, kw, 1, C*M), by
  element."""
  kh, kw, c, m = k.shape
  w = np.zeros((kh, kw, 1, c * m), k.dtype)
  for ci in range(c):
    for mi in range(m):
      w[:, :, 0, ci * m + mi] = k[:, :, ci, mi]
  return w


@pytest.mark.parametrize("m", [1, 2])
def test_pytorch_layout_depthwise_kernel_is_named_with_its_transpose(m):
  k = _keras_kernel(m=m)
  torch_weight = _as_pytorch(k)
  x = np.ones((1, 6, 6, 3), np.float32)
  pk = np.ones((1, 1, 3 * m, 8), np.float32)
  with pytest.raises(ValueError) as info:
    sepconv_jax.separable_conv2d(x, torch_weight, pk)
  message = str(info.value)
  # The pointwise kernel fails, and the message says how the depthwise one
  # was read and that it looks like PyTorch's layout.
  assert re.match(_pattern("pointwise_kernel", "(1, 1, 3, 8)"
                           if m == 1 else "(1, 1, 6, 8)"), message)
  assert (f"`depthwise_kernel` (shape={torch_weight.shape}) was read in"
          " Keras's layout") in message
  assert "looks like PyTorch's" in message
  fix = _suggested(message)
  fixed = eval(fix, {"jnp": jnp, "depthwise_kernel": jnp.asarray(torch_weight)})  # pylint: disable=eval-used
  np.testing.assert_array_equal(fixed, k)  # exact: a transpose moves values


@pytest.mark.parametrize("m", [1, 2])
def test_flax_grouped_depthwise_kernel_is_named_with_its_reshape(m):
  k = _keras_kernel(m=m)
  grouped = _as_flax_grouped(k)
  x = np.ones((1, 6, 6, 3), np.float32)
  with raises(ValueError, "depthwise_kernel", str(grouped.shape),
              "looks like Flax's grouped"):
    sepconv_jax.depthwise_conv2d(x, grouped)
  with pytest.raises(ValueError) as info:
    sepconv_jax.depthwise_conv2d(x, grouped)
  fixed = eval(_suggested(str(info.value)),  # pylint: disable=eval-used
               {"jnp": jnp, "depthwise_kernel": jnp.asarray(grouped)})
  np.testing.assert_array_equal(fixed, k)  # exact: a reshape moves values


def test_params_from_keras_names_a_pytorch_layout_kernel():
  k = _keras_kernel()
  weights = [_as_pytorch(k), np.ones((1, 1, 3, 8), np.float32)]
  with pytest.raises(ValueError) as info:
    sepconv_jax.params_from_keras(weights)
  message = str(info.value)
  assert re.match(_pattern("pointwise_kernel", "weights[1]", "(1, 1, 3, 8)",
                           "`weights[0]` (shape=(3, 1, 3, 3)) was read",
                           "looks like PyTorch's"), message)
  fixed = eval(_suggested(message),  # pylint: disable=eval-used
               {"jnp": jnp, "weights": weights})
  np.testing.assert_array_equal(fixed, k)
  # With the module, the depthwise kernel itself fails, with the same hint.
  module = SeparableConv2D(8, 3, use_bias=False)
  with raises(ValueError, "depthwise_kernel", "weights[0]",
              "looks like PyTorch's"):
    sepconv_jax.params_from_keras(weights, module=module)
  params = sepconv_jax.params_from_keras([np.asarray(fixed), weights[1]],
                                         module=module)
  np.testing.assert_array_equal(params["depthwise_kernel"], k)


def test_a_keras_kernel_with_a_wrong_bias_gets_no_layout_hint():
  # (3, 1, 3, 1) is a valid 3x1 Keras kernel for 3 channels: the bias is
  # the mistake, and no other layout would explain it.
  with pytest.raises(ValueError) as info:
    sepconv_jax.depthwise_conv2d(X, np.ones((3, 1, 3, 1), np.float32),
                                 np.ones((7,), np.float32))
  assert "PyTorch" not in str(info.value) and "Flax" not in str(info.value)


def _channels_first_hint(axis_from, axis_to, fmt):
  return ("data_format=" + repr(fmt),
          f"`jnp.moveaxis(inputs, {axis_from}, {axis_to})`")


@pytest.mark.parametrize("fmt", ["channels_last", "channels_first"])
def test_input_in_the_other_data_format_names_data_format(fmt):
  other = "channels_first" if fmt == "channels_last" else "channels_last"
  right = np.random.default_rng(0).normal(size=(2, 6, 7, 3)).astype(np.float32)
  if fmt == "channels_first":
    right = np.moveaxis(right, -1, 1)
  wrong = np.moveaxis(right, 1, -1) if fmt == "channels_first" else (
      np.moveaxis(right, -1, 1))
  axes = (3, 1) if fmt == "channels_first" else (1, 3)
  layer = SeparableConv2D(4, 3, data_format=fmt)
  variables = layer.init(KEY, right)
  with raises(ValueError, "depthwise_kernel", "(3, 3, 3, 1)", "`data_format`",
              *_channels_first_hint(*axes, other)):
    layer.apply(variables, wrong)
  nnx_layer = sepconv_jax.nnx.SeparableConv2D(
      3, 4, 3, data_format=fmt, rngs=nnx.Rngs(0))
  with raises(ValueError, "depthwise_kernel", "`data_format`",
              *_channels_first_hint(*axes, other)):
    nnx_layer(wrong)
  with raises(ValueError, "depthwise_kernel", "`data_format`",
              *_channels_first_hint(*axes, other)):
    sepconv_jax.depthwise_conv2d(wrong, DK, data_format=fmt)
  # Either suggested fix runs, and both give the same output (up to the
  # channel axis): the move is what the message names.
  moved = jnp.moveaxis(jnp.asarray(wrong), *axes)
  np.testing.assert_array_equal(moved, right)
  as_other = SeparableConv2D(4, 3, data_format=other).apply(variables, wrong)
  np.testing.assert_allclose(  # float32, one layer: a few ulps apart
      np.moveaxis(np.asarray(as_other), *axes),
      layer.apply(variables, moved), rtol=1e-6, atol=1e-6)


def test_a_channel_count_mismatch_gets_no_data_format_hint():
  layer = SeparableConv2D(4, 3)
  variables = layer.init(KEY, jnp.ones((2, 6, 6, 3)))
  with pytest.raises(ValueError) as info:
    layer.apply(variables, jnp.ones((2, 6, 6, 5)))
  assert "data_format" not in str(info.value)
  assert "another channel count" in str(info.value)


def test_float64_weights_with_x64_off_say_what_to_do():
  assert not jax.config.jax_enable_x64  # JAX's default, and the suite's
  module = SeparableConv2D(8, 3, dtype=jnp.float64, param_dtype=jnp.float64)
  # What Keras's float64 layer hands over with x64 off: float32 weights.
  weights = [np.ones((3, 3, 3, 1), np.float32),
             np.ones((1, 1, 3, 8), np.float32), np.ones((8,), np.float32)]
  with raises(ValueError, "depthwise_kernel", "weights[0]", "dtype=float32",
              "must have dtype float64", "JAX's 64-bit types are off",
              'jax.config.update("jax_enable_x64", True)',
              '"dtype": "float32"', "param_dtype=jnp.float32"):
    sepconv_jax.params_from_keras(weights, module=module)
  # Both fixes work: float32 ...
  as_float32 = module.clone(dtype=jnp.float32, param_dtype=jnp.float32)
  params = sepconv_jax.params_from_keras(weights, module=as_float32)
  assert {p.dtype for p in params.values()} == {np.dtype(np.float32)}
  # ... or x64 on, where the weights come as float64; float32 ones are then
  # still refused, without the x64 advice.
  with jax.enable_x64(True):
    params = sepconv_jax.params_from_keras(
        [w.astype(np.float64) for w in weights], module=module)
    assert {p.dtype for p in params.values()} == {np.dtype(np.float64)}
    with pytest.raises(ValueError) as info:
      sepconv_jax.params_from_keras(weights, module=module)
    assert "jax_enable_x64" not in str(info.value)
