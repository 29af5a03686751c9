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
