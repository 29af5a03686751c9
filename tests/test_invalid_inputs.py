"""Invalid-input fuzzing: every bad input gets a clean, named error.

Hypothesis draws random invalid configurations and arrays (wrong types,
non-positive values, wrong tuple lengths, strides with dilation, causal and
unknown paddings, unknown names, rank and channel mismatches, empty outputs,
NaN and infinite sizes) for the functions, the module's constructor, its
``__call__`` and ``compute_output_shape``. Every one must

* raise, never return;
* raise exactly ``ValueError`` or ``TypeError`` (not a subclass such as
  jax's ``ConcretizationTypeError``, not ``OverflowError``, not Flax's
  ``FlaxError``, not ``XlaRuntimeError``);
* raise from sepconv_jax's own code (the innermost traceback frame lies in
  the package): no lax, XLA or Flax error leaks through;
* name the offending argument in backticks, and show its value (repr) or,
  for arrays, its shape.

``REPRESENTATIVE`` holds one hand-picked case per kind of bad input; the
table of errors in docs/errors.md shows the kinds it covers.
"""

from __future__ import annotations

import os
import traceback
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import note
from hypothesis import settings
from hypothesis import strategies as st

import sepconv_jax

try:
  from tests import conftest_hypothesis as hyp
except ImportError:  # tests/ itself on sys.path
  import conftest_hypothesis as hyp

PACKAGE_DIR = os.path.dirname(os.path.abspath(sepconv_jax.__file__))
IMPLS = tuple(dict.fromkeys(("auto",) + tuple(sepconv_jax.IMPLEMENTATIONS)))
BOTH = (ValueError, TypeError)
FUZZ = settings(max_examples=hyp.examples(150))

# Valid arrays: N=2, H=6, W=7, C=3; M=2; F=4.
X = np.ones((2, 6, 7, 3), np.float32)
DK = np.ones((3, 3, 3, 2), np.float32)
PK = np.ones((1, 1, 6, 4), np.float32)
B = np.ones((4,), np.float32)


class Case(NamedTuple):
  """One bad call: what it is, how to make it, what it must raise."""

  kind: str
  call: Callable[[], Any]
  names: tuple[str, ...]
  exc: Any  # an exception type, or a tuple of acceptable ones
  shown: tuple[str, ...] = ()  # texts the message must contain


def check_error(case: Case) -> BaseException:
  """Runs `case`, asserting everything the module docstring promises."""
  try:
    result = case.call()
  except Exception as e:  # pylint: disable=broad-except
    error = e
  else:
    shape = getattr(result, "shape", None)
    raise AssertionError(
        f"{case.kind}: returned silently ({type(result).__name__},"
        f" shape={shape}) instead of raising {case.exc}")
  frames = traceback.extract_tb(error.__traceback__)
  where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
  assert type(error) in BOTH, (
      f"{case.kind}: leaked {type(error).__module__}.{type(error).__name__}"
      f" from {where}: {error}")
  expected = case.exc if isinstance(case.exc, tuple) else (case.exc,)
  assert type(error) in expected, (
      f"{case.kind}: {type(error).__name__} instead of {case.exc}: {error}")
  assert frames and os.path.abspath(frames[-1].filename).startswith(
      PACKAGE_DIR), f"{case.kind}: raised outside sepconv_jax, at {where}"
  message = str(error)
  for name in case.names:
    assert f"`{name}`" in message, (
        f"{case.kind}: message does not name `{name}`: {message}")
  for text in case.shown:
    assert text in message, (
        f"{case.kind}: message does not show {text!r}: {message}")
  return error


# --------------------------------------------------------------------------
# Strategies for bad values.
# --------------------------------------------------------------------------
_NON_INT_SCALARS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 2.0, 1.5,
                     np.float32(2.0), np.float64("nan"), True, False, None,
                     "3", "", b"2", 2 + 0j, object, {"a": 1}, {2},
                     np.array(2), np.array([2, 2]), jnp.int32(2)]),
    st.text(max_size=5),
)
_NON_POSITIVE_INTS = st.one_of(
    st.integers(max_value=0),
    st.sampled_from([np.int64(0), np.int32(-1), np.uint8(0)]),
)
_POSITIVE_INTS = st.integers(1, 4)


@st.composite
def bad_int(draw):
  """(value, expected exception) for a positive-int argument."""
  if draw(st.booleans()):
    return draw(_NON_INT_SCALARS), TypeError
  return draw(_NON_POSITIVE_INTS), ValueError


@st.composite
def bad_int_or_pair(draw):
  """(value, expected exception) for an int-or-pair argument."""
  choice = draw(st.integers(0, 3))
  if choice == 0:
    return draw(bad_int())
  seq = draw(st.sampled_from([tuple, list]))
  if choice == 1:  # wrong length: ValueError whatever the elements
    length = draw(st.sampled_from([0, 1, 3, 4]))
    items = draw(st.lists(st.one_of(_POSITIVE_INTS, _NON_INT_SCALARS),
                          min_size=length, max_size=length))
    return seq(items), ValueError
  if choice == 2:  # a non-int element: TypeError
    items = [draw(st.one_of(_POSITIVE_INTS, _NON_INT_SCALARS)),
             draw(_NON_INT_SCALARS)]
    if draw(st.booleans()):
      items.reverse()
    return seq(items), TypeError
  items = [draw(st.one_of(_POSITIVE_INTS, _NON_POSITIVE_INTS)),
           draw(_NON_POSITIVE_INTS)]
  if draw(st.booleans()):
    items.reverse()
  return seq(items), ValueError


def _shown(value) -> tuple[str, ...]:
  return (repr(value),)


_PADDING_NAMES = {"valid", "same"}


@st.composite
def bad_padding(draw):
  """(value, exception) for `padding` in 2-D."""
  choice = draw(st.integers(0, 3))
  if choice == 0:  # 'causal' is 1-D only
    word = "".join(c.upper() if draw(st.booleans()) else c for c in "causal")
    return word, ValueError
  if choice == 1:
    text = draw(st.one_of(
        st.text(max_size=10),
        st.sampled_from(["full", "valid ", " same", "SAME\n", "vaild",
                         "zeros", "VALID_", "reflect"])))
    if text.lower() in _PADDING_NAMES:
      text = text + "?"
    return text, ValueError
  if choice == 2:  # not a string
    return draw(st.one_of(st.integers(), st.floats(), st.none(),
                          st.just(b"same"), st.just(object()))), TypeError
  # Malformed explicit pairs (an extension beyond Keras, or a TypeError
  # where it is not supported): never accepted.
  return draw(st.sampled_from([
      (1, 2), ((1, 2),), ((1, 2), (3, 4), (5, 6)), ((1, -1), (0, 0)),
      ((1.0, 1), (0, 0)), ((1, 1), (0,)), [], ((None, 0), (0, 0)),
      ((float("nan"), 0), (0, 0)), ("same", "same")])), BOTH


@st.composite
def bad_data_format(draw):
  if draw(st.booleans()):
    text = draw(st.one_of(st.text(max_size=15), st.sampled_from(
        ["channels-last", "NHWC", "NCHW", "channels_last ", "channelsfirst",
         "channels_middle"])))
    if text.lower() in ("channels_last", "channels_first"):
      text = text + "!"
    return text, ValueError
  return draw(st.one_of(st.integers(), st.floats(), st.just(b"NHWC"),
                        st.just(("channels_last",)))), TypeError


@st.composite
def bad_implementation(draw):
  if draw(st.booleans()):
    text = draw(st.one_of(st.text(max_size=8), st.sampled_from(
        ["LAX", "xla", "fastest", "Auto", " auto", "pallas"])))
    if text in IMPLS:
      text = text + "?"
    return text, ValueError
  return draw(st.one_of(st.integers(), st.none(), st.floats(),
                        st.just(("lax",)))), TypeError


@st.composite
def bad_precision(draw):
  return draw(st.one_of(
      st.sampled_from(["HIGHEST", "max", "fp64", "", "highest ",
                       ("highest",), ("highest", "highest", "highest"),
                       ("highest", "nope"), 1, 2.5, float("nan"), b"highest",
                       object()]),
      st.text(min_size=1, max_size=6).filter(_not_a_precision_name),
  )), BOTH


def _not_a_precision_name(text):
  try:
    jax.lax.Precision(text)
  except Exception:  # pylint: disable=broad-except
    return True
  return False


# --------------------------------------------------------------------------
# Cases: configuration arguments of the functions.
# --------------------------------------------------------------------------
def _fn(pointwise: bool, impl: str = "auto", x=X, dk=DK, pk=PK, b=B,
        jit: bool = False, **kw) -> Callable[[], Any]:
  """A thunk calling one of the two functions."""
  if pointwise:
    def run(x, dk, pk, b):
      return sepconv_jax.separable_conv2d(x, dk, pk, b, implementation=impl,
                                          **kw)
    args = (x, dk, pk, b)
  else:
    def run(x, dk):
      return sepconv_jax.depthwise_conv2d(x, dk, implementation=impl, **kw)
    args = (x, dk)
  if jit:
    return lambda: jax.jit(run)(*args)
  return lambda: run(*args)


@st.composite
def function_config_cases(draw):
  pointwise = draw(st.booleans())
  impl = draw(st.sampled_from(IMPLS))
  which = draw(st.sampled_from(
      ["strides", "dilation_rate", "padding", "data_format", "both_steps",
       "implementation", "precision"]))
  if which in ("strides", "dilation_rate"):
    value, exc = draw(bad_int_or_pair())
    return Case(f"bad {which}", _fn(pointwise, impl, **{which: value}),
                (which,), exc, _shown(value))
  if which == "both_steps":
    strides = draw(st.one_of(st.integers(2, 5), st.tuples(
        st.integers(1, 5), st.integers(2, 5))))
    dilation = draw(st.one_of(st.integers(2, 5), st.tuples(
        st.integers(2, 5), st.integers(1, 5))))
    return Case("strides > 1 with dilation_rate > 1",
                _fn(pointwise, impl, strides=strides, dilation_rate=dilation),
                ("strides", "dilation_rate"), ValueError,
                (repr(strides), repr(dilation)))
  strategy = {"padding": bad_padding, "data_format": bad_data_format,
              "precision": bad_precision}.get(which)
  if which == "implementation":
    value, exc = draw(bad_implementation())
    return Case("bad implementation", _fn(pointwise, value), (which,), exc,
                _shown(value))
  value, exc = draw(strategy())
  # A bad precision pair shows its bad element, not the whole pair.
  shown = () if which == "precision" else _shown(value)
  return Case(f"bad {which}", _fn(pointwise, impl, **{which: value}),
              (which,), exc, shown)


@given(case=function_config_cases())
@FUZZ
def test_function_rejects_bad_configuration(case):
  note(case.kind)
  check_error(case)


# --------------------------------------------------------------------------
# Cases: arrays of the functions.
# --------------------------------------------------------------------------
_NON_NUMERIC = [None, "abc", [[1, 2], [3]], {"a": 1}, object(),
                np.array([["a"]]), np.zeros((2, 6, 7, 3), np.complex64),
                np.zeros((2, 6, 7, 3), object)]


def _shape_text(shape):
  return (str(tuple(shape)),)


@st.composite
def function_array_cases(draw):
  pointwise = draw(st.booleans())
  impl = draw(st.sampled_from(IMPLS))
  jit = draw(st.booleans())
  kind = draw(st.sampled_from(
      ["inputs rank", "inputs non-numeric", "zero channels",
       "empty output", "zero spatial size", "depthwise_kernel channels",
       "depthwise_kernel rank", "depthwise_kernel zero size",
       "pointwise_kernel shape", "pointwise_kernel zero filters",
       "bias shape", "kernel non-numeric"]))
  fmt = draw(st.sampled_from(["channels_last", "channels_first"]))
  n, h, w, c = (draw(st.integers(1, 3)), draw(st.integers(1, 8)),
                draw(st.integers(1, 8)), draw(st.integers(1, 4)))
  m, f = draw(st.integers(1, 3)), draw(st.integers(1, 4))
  kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))

  def image(n, h, w, c):
    return np.ones((n, h, w, c) if fmt == "channels_last" else (n, c, h, w),
                   np.float32)

  x = image(n, h, w, c)
  dk = np.ones((kh, kw, c, m), np.float32)
  pk = np.ones((1, 1, c * m, f), np.float32)
  b = np.ones((f,), np.float32)
  kw_ = dict(data_format=fmt, padding="same")

  def case(kind, names, exc, shown=(), **arrays):
    arrays = dict(dict(x=x, dk=dk, pk=pk, b=b), **arrays)
    use_jit = jit and all(
        isinstance(a, np.ndarray) and a.dtype.kind in "fiub"
        for a in arrays.values())
    return Case(kind, _fn(pointwise, impl, jit=use_jit, **arrays, **kw_),
                names, exc, shown)

  if kind == "inputs rank":
    rank = draw(st.integers(0, 2))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=rank,
                                max_size=rank)))
    return case(kind, ("inputs",), ValueError, _shape_text(shape),
                x=np.ones(shape, np.float32))
  if kind == "inputs non-numeric":
    return case(kind, ("inputs",), TypeError,
                x=draw(st.sampled_from(_NON_NUMERIC)))
  if kind == "kernel non-numeric":
    name = draw(st.sampled_from(["depthwise_kernel", "pointwise_kernel",
                                 "bias"] if pointwise else
                                ["depthwise_kernel"]))
    bad = draw(st.sampled_from(_NON_NUMERIC[1:]))  # None: no bias / error
    key = {"depthwise_kernel": "dk", "pointwise_kernel": "pk",
           "bias": "b"}[name]
    return case(kind, (name,), TypeError, **{key: bad})
  if kind == "zero channels":
    x0 = image(n, h, w, 0)
    return case(kind, ("inputs",), ValueError, _shape_text(x0.shape), x=x0,
                dk=np.ones((kh, kw, 0, m), np.float32),
                pk=np.ones((1, 1, 0, f), np.float32))
  if kind == "empty output":
    # 'valid' with the dilated kernel larger than the image.
    dilation = draw(st.integers(1, 3))
    kh = draw(st.integers(2, 4))
    h_small = draw(st.integers(1, (kh - 1) * dilation))
    xs = image(n, h_small, w + kh * dilation, c)
    dks = np.ones((kh, 1, c, m), np.float32)
    return Case(kind, _fn(pointwise, impl, x=xs, dk=dks, pk=pk, b=b,
                          jit=jit, data_format=fmt, padding="valid",
                          dilation_rate=(dilation, 1)),
                ("inputs",), ValueError)
  if kind == "zero spatial size":
    xs = image(n, 0, w, c) if draw(st.booleans()) else image(n, h, 0, c)
    padding = draw(st.sampled_from(["valid", "same"]))
    return Case(kind, _fn(pointwise, impl, x=xs, dk=dk, pk=pk, b=b, jit=jit,
                          data_format=fmt, padding=padding),
                ("inputs",), ValueError)
  if kind == "depthwise_kernel channels":
    other = draw(st.integers(1, 5).filter(lambda v: v != c))
    bad = np.ones((kh, kw, other, m), np.float32)
    return case(kind, ("depthwise_kernel",), ValueError,
                _shape_text(bad.shape), dk=bad)
  if kind == "depthwise_kernel rank":
    rank = draw(st.sampled_from([0, 1, 2, 3, 5]))
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=rank,
                                max_size=rank)))
    return case(kind, ("depthwise_kernel",), ValueError, _shape_text(shape),
                dk=np.ones(shape, np.float32))
  if kind == "depthwise_kernel zero size":
    shape = list(dk.shape)
    shape[draw(st.sampled_from([0, 1, 3]))] = 0
    return case(kind, ("depthwise_kernel",), ValueError,
                _shape_text(shape), dk=np.ones(shape, np.float32))
  if kind in ("pointwise_kernel shape", "pointwise_kernel zero filters",
              "bias shape") and not pointwise:
    # depthwise_conv2d has no pointwise kernel: test the separable call.
    pointwise = True
  if kind == "pointwise_kernel shape":
    good = [1, 1, c * m, f]
    mutation = draw(st.sampled_from(["spatial", "in", "rank"]))
    if mutation == "spatial":
      good[draw(st.integers(0, 1))] = draw(st.integers(2, 3))
      shape = tuple(good)
    elif mutation == "in":
      good[2] = draw(st.integers(1, 13).filter(lambda v: v != c * m))
      shape = tuple(good)
    else:
      shape = draw(st.sampled_from([(c * m, f), (1, c * m, f),
                                    (1, 1, 1, c * m, f)]))
    return case(kind, ("pointwise_kernel",), ValueError, _shape_text(shape),
                pk=np.ones(shape, np.float32))
  if kind == "pointwise_kernel zero filters":
    shape = (1, 1, c * m, 0)
    return case(kind, ("pointwise_kernel",), ValueError, _shape_text(shape),
                pk=np.ones(shape, np.float32), b=np.ones((0,), np.float32))
  # bias shape
  shape = draw(st.sampled_from([(), (f + 1,), (1, f), (f, 1), (2 * f + 2,)]))
  return case(kind, ("bias",), ValueError, _shape_text(shape),
              b=np.ones(shape, np.float32))


@given(case=function_array_cases())
@FUZZ
def test_function_rejects_bad_arrays(case):
  note(case.kind)
  check_error(case)


# --------------------------------------------------------------------------
# Cases: the module.
# --------------------------------------------------------------------------
_NAME_ARGS = {
    "activation": "activation",
    "depthwise_initializer": "initializer",
    "pointwise_initializer": "initializer",
    "bias_initializer": "initializer",
    "depthwise_regularizer": "regularizer",
    "pointwise_regularizer": "regularizer",
    "bias_regularizer": "regularizer",
    "activity_regularizer": "regularizer",
    "depthwise_constraint": "constraint",
    "pointwise_constraint": "constraint",
    "bias_constraint": "constraint",
}
_KNOWN = {"activation": {"relu", "linear", "gelu", "tanh", "softmax"},
          "initializer": {"zeros", "ones", "glorot_uniform", "orthogonal"},
          "regularizer": {"l1", "l2", "l1_l2", "L1L2", "l1l2"},
          "constraint": {"max_norm", "non_neg", "unit_norm",
                         "min_max_norm"}}


def _layer(**kw):
  return sepconv_jax.SeparableConv2D(**dict(dict(filters=4, kernel_size=3),
                                            **kw))


def _known_name(kind: str, text: str) -> bool:
  """Whether `text` resolves (then it is not a bad value)."""
  try:
    _layer(**{f"{'depthwise_' if kind != 'activation' else ''}{kind}": text})
  except (ValueError, TypeError):
    return False
  return True


@st.composite
def module_construction_cases(draw):
  which = draw(st.sampled_from(
      ["filters", "depth_multiplier", "kernel_size", "strides",
       "dilation_rate", "padding", "data_format", "both_steps",
       "implementation", "precision", "name_arg", "use_bias"]))
  if which in ("filters", "depth_multiplier"):
    value, exc = draw(bad_int())
    if draw(st.booleans()):
      value, exc = draw(st.sampled_from([(2, 2), [3], (1,)])), TypeError
    return Case(f"bad {which}", lambda: _layer(**{which: value}), (which,),
                exc, _shown(value))
  if which in ("kernel_size", "strides", "dilation_rate"):
    value, exc = draw(bad_int_or_pair())
    return Case(f"bad {which}", lambda: _layer(**{which: value}), (which,),
                exc, _shown(value))
  if which == "both_steps":
    strides = draw(st.integers(2, 4))
    dilation = draw(st.tuples(st.integers(1, 4), st.integers(2, 4)))
    return Case("strides > 1 with dilation_rate > 1",
                lambda: _layer(strides=strides, dilation_rate=dilation),
                ("strides", "dilation_rate"), ValueError)
  if which == "use_bias":
    value = draw(st.sampled_from([1, 0, "yes", None, 1.0]))
    return Case("bad use_bias", lambda: _layer(use_bias=value), (which,),
                TypeError, _shown(value))
  if which == "name_arg":
    arg = draw(st.sampled_from(sorted(_NAME_ARGS)))
    kind = _NAME_ARGS[arg]
    if draw(st.booleans()):
      text = draw(st.one_of(st.text(min_size=1, max_size=12), st.sampled_from(
          ["Relu ", "RELU", "l3", "max-norm", "glorot", "he", "nonneg"])))
      if text in _KNOWN[kind] or _known_name(kind, text):
        text = text + "_x"
      return Case(f"unknown {kind} name", lambda: _layer(**{arg: text}),
                  (arg,), ValueError, _shown(text))
    value = draw(st.sampled_from([3, 2.5, ("relu",), b"relu", np.array(1)]))
    return Case(f"{kind}: not a name or a callable",
                lambda: _layer(**{arg: value}), (arg,), TypeError)
  strategy = {"padding": bad_padding, "data_format": bad_data_format,
              "implementation": bad_implementation,
              "precision": bad_precision}[which]
  value, exc = draw(strategy())
  shown = () if which == "precision" else _shown(value)
  return Case(f"bad {which}", lambda: _layer(**{which: value}), (which,),
              exc, shown)


@given(case=module_construction_cases())
@FUZZ
def test_module_construction_rejects_bad_attributes(case):
  note(case.kind)
  check_error(case)


def _init_apply(layer, x, init_x=None):
  variables = layer.init(jax.random.key(0), X if init_x is None else init_x)
  return layer.apply(variables, x)


@st.composite
def module_call_cases(draw):
  kind = draw(st.sampled_from(
      ["inputs rank", "inputs non-numeric", "zero channels", "empty output",
       "channel mismatch with params", "filters mismatch with params",
       "depth_multiplier mismatch with params",
       "kernel_size mismatch with params", "bias shape"]))
  impl = draw(st.sampled_from(IMPLS))
  layer = _layer(implementation=impl)
  if kind == "inputs rank":
    rank = draw(st.integers(0, 2))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=rank,
                                max_size=rank)))
    return Case(kind, lambda: _init_apply(layer, np.ones(shape)),
                ("inputs",), ValueError, _shape_text(shape))
  if kind == "inputs non-numeric":
    bad = draw(st.sampled_from(_NON_NUMERIC))
    return Case(kind, lambda: layer.init(jax.random.key(0), bad),
                ("inputs",), TypeError)
  if kind == "zero channels":
    shape = (2, 6, 7, 0)
    return Case(kind, lambda: layer.init(jax.random.key(0), np.ones(shape)),
                ("inputs",), ValueError, _shape_text(shape))
  if kind == "empty output":
    h = draw(st.integers(0, 2))
    shape = (1, h, 7, 3) if draw(st.booleans()) else (1, 7, h, 3)
    return Case(kind, lambda: layer.init(jax.random.key(0), np.ones(shape)),
                ("inputs",), ValueError)
  variables = layer.init(jax.random.key(0), X)
  if kind == "channel mismatch with params":
    c = draw(st.integers(1, 6).filter(lambda v: v != 3))
    x = np.ones((2, 6, 7, c), np.float32)
    return Case(kind, lambda: layer.apply(variables, x),
                ("depthwise_kernel",), ValueError, ("(3, 3, 3, 1)",))
  if kind == "filters mismatch with params":
    other = _layer(filters=draw(st.integers(1, 8).filter(lambda v: v != 4)),
                   implementation=impl)
    return Case(kind, lambda: other.apply(variables, X),
                ("pointwise_kernel",), ValueError, ("(1, 1, 3, 4)",))
  if kind == "depth_multiplier mismatch with params":
    other = _layer(depth_multiplier=draw(st.integers(2, 4)),
                   implementation=impl)
    return Case(kind, lambda: other.apply(variables, X),
                ("depthwise_kernel",), ValueError, ("(3, 3, 3, 1)",))
  if kind == "kernel_size mismatch with params":
    other = _layer(kernel_size=draw(st.sampled_from([1, 2, (3, 2), (1, 3)])),
                   implementation=impl)
    return Case(kind, lambda: other.apply(variables, X),
                ("depthwise_kernel",), ValueError, ("(3, 3, 3, 1)",))
  shape = draw(st.sampled_from([(), (5,), (1, 4), (3,)]))
  params = dict(variables["params"], bias=jnp.ones(shape))
  return Case(kind, lambda: layer.apply({"params": params}, X), ("bias",),
              ValueError, _shape_text(shape))


@given(case=module_call_cases())
@settings(max_examples=hyp.examples(60))
def test_module_call_rejects_bad_inputs_and_params(case):
  note(case.kind)
  check_error(case)


@st.composite
def bad_input_shapes(draw):
  choice = draw(st.integers(0, 3))
  base = [2, 6, 7, 3]
  if choice == 0:  # a non-int, NaN or negative size
    i = draw(st.integers(0, 3))
    bad = draw(st.one_of(
        st.sampled_from([float("nan"), float("inf"), 2.0, True, "7",
                         np.float64("nan")]),
        st.integers(max_value=-1)))
    base[i] = bad
    # A negative size is a bad value, the rest bad types.
    return tuple(base), BOTH if isinstance(bad, int) else TypeError
  if choice == 1:  # rank < 3
    rank = draw(st.integers(0, 2))
    return tuple(base[:rank]), ValueError
  if choice == 2:  # valid output would be empty
    return (2, draw(st.integers(0, 2)), 7, 3), ValueError
  return (2, 6, 7, 0), ValueError  # zero channels


@given(shape_exc=bad_input_shapes())
@FUZZ
def test_compute_output_shape_rejects_bad_shapes(shape_exc):
  shape, exc = shape_exc
  check_error(Case("bad input_shape",
                   lambda: _layer().compute_output_shape(shape),
                   ("input_shape",), exc))


# --------------------------------------------------------------------------
# Known gaps, each a minimal repro (see the report).
# --------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [5, None, 3.0], ids=repr)
def test_compute_output_shape_rejects_non_sequence(shape):
  """`input_shape` that is not a sequence at all is named as well."""
  check_error(Case("input_shape not a sequence",
                   lambda: _layer().compute_output_shape(shape),
                   ("input_shape",), TypeError))


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.complex64],
                         ids=lambda d: jnp.dtype(d).name)
def test_module_rejects_non_float_dtype(dtype):
  """`dtype` must be a float dtype, rejected at construction, named."""
  check_error(Case("non-float dtype", lambda: _layer(dtype=dtype),
                   ("dtype",), (TypeError, ValueError)))


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.complex64],
                         ids=lambda d: jnp.dtype(d).name)
def test_module_rejects_non_float_param_dtype(dtype):
  """`param_dtype` must be a float dtype, rejected at construction, named."""
  check_error(Case("non-float param_dtype", lambda: _layer(param_dtype=dtype),
                   ("param_dtype",), (TypeError, ValueError)))


def test_module_missing_param_is_named():
  """Params without `bias` for a use_bias=True layer: a named ValueError."""
  layer = _layer()
  params = dict(layer.init(jax.random.key(0), X)["params"])
  del params["bias"]
  check_error(Case("missing param", lambda: layer.apply({"params": params},
                                                        X),
                   ("bias",), ValueError))


@pytest.mark.parametrize("huge", [2**63, 10**30], ids=["2**63", "10**30"])
def test_huge_strides_do_not_leak_overflow(huge):
  """A stride beyond int64 is absurd but positive: it must not leak
  OverflowError from jax's dispatch. (Either work, or a named error.)"""
  try:
    y = sepconv_jax.separable_conv2d(X, DK, PK, B, strides=huge,
                                     padding="same")
  except Exception as e:  # pylint: disable=broad-except
    assert type(e) in BOTH and "`strides`" in str(e), repr(e)
  else:
    assert y.shape == (2, 1, 1, 4)


# --------------------------------------------------------------------------
# One representative case per kind: the table of docs/errors.md.
# --------------------------------------------------------------------------
REPRESENTATIVE = [
    Case("`strides` a float", _fn(True, strides=2.0), ("strides",),
         TypeError),
    Case("`strides` a bool", _fn(True, strides=True), ("strides",),
         TypeError),
    Case("`strides` a string", _fn(True, strides="2"), ("strides",),
         TypeError),
    Case("`strides` NaN", _fn(True, strides=float("nan")), ("strides",),
         TypeError),
    Case("`strides` 0 or negative", _fn(True, strides=0), ("strides",),
         ValueError),
    Case("`strides` tuple of wrong length", _fn(True, strides=(1, 1, 1)),
         ("strides",), ValueError),
    Case("`strides` tuple with a non-int", _fn(True, strides=(2, 2.0)),
         ("strides",), TypeError),
    Case("`strides` a traced value (under jax.jit)",
         lambda: jax.jit(lambda s: sepconv_jax.separable_conv2d(
             X, DK, PK, B, strides=s))(2), ("strides",), TypeError),
    Case("`dilation_rate` 0 or negative", _fn(True, dilation_rate=(1, -1)),
         ("dilation_rate",), ValueError),
    Case("`strides` > 1 with `dilation_rate` > 1",
         _fn(True, strides=2, dilation_rate=(2, 1)),
         ("strides", "dilation_rate"), ValueError),
    Case("`padding` 'causal' (2-D)", _fn(True, padding="causal"),
         ("padding",), ValueError),
    Case("`padding` unknown", _fn(True, padding="full"), ("padding",),
         ValueError),
    Case("`padding` not a string", _fn(True, padding=1), ("padding",),
         TypeError),
    Case("`data_format` unknown", _fn(True, data_format="NHWC"),
         ("data_format",), ValueError),
    Case("`data_format` not a string", _fn(True, data_format=1),
         ("data_format",), TypeError),
    Case("`implementation` unknown", _fn(True, "xla"), ("implementation",),
         ValueError),
    Case("`precision` unknown", _fn(True, precision="max"), ("precision",),
         ValueError),
    Case("`inputs` rank < 3", _fn(True, x=np.ones((6, 3))), ("inputs",),
         ValueError),
    Case("`inputs` not numbers", _fn(True, x="abc"), ("inputs",),
         TypeError),
    Case("`inputs` complex", _fn(True, x=X.astype(np.complex64)),
         ("inputs",), TypeError),
    Case("`inputs` with 0 channels",
         _fn(True, x=np.ones((2, 6, 7, 0)), dk=np.ones((3, 3, 0, 2)),
             pk=np.ones((1, 1, 0, 4))), ("inputs",), ValueError),
    Case("'valid' output would be empty", _fn(True, x=np.ones((2, 2, 7, 3))),
         ("inputs",), ValueError),
    Case("`inputs` with a spatial size of 0",
         _fn(True, x=np.ones((2, 0, 7, 3)), padding="same"), ("inputs",),
         ValueError),
    Case("`depthwise_kernel` channels != input channels",
         _fn(True, dk=np.ones((3, 3, 4, 2))), ("depthwise_kernel",),
         ValueError),
    Case("`depthwise_kernel` wrong rank", _fn(True, dk=np.ones((3, 3, 3))),
         ("depthwise_kernel",), ValueError),
    Case("`depthwise_kernel` with a size of 0",
         _fn(True, dk=np.ones((3, 3, 3, 0))), ("depthwise_kernel",),
         ValueError),
    Case("`pointwise_kernel` not (1, 1, C*M, F)",
         _fn(True, pk=np.ones((1, 1, 5, 4))), ("pointwise_kernel",),
         ValueError),
    Case("`pointwise_kernel` with 0 filters",
         _fn(True, pk=np.ones((1, 1, 6, 0)), b=np.ones((0,))),
         ("pointwise_kernel",), ValueError),
    Case("`bias` not (F,)", _fn(True, b=np.ones((5,))), ("bias",),
         ValueError),
    Case("`filters` a float", lambda: _layer(filters=4.0), ("filters",),
         TypeError),
    Case("`filters` 0", lambda: _layer(filters=0), ("filters",), ValueError),
    Case("`depth_multiplier` negative", lambda: _layer(depth_multiplier=-1),
         ("depth_multiplier",), ValueError),
    Case("`kernel_size` NaN", lambda: _layer(kernel_size=float("nan")),
         ("kernel_size",), TypeError),
    Case("`kernel_size` tuple of wrong length",
         lambda: _layer(kernel_size=(3,)), ("kernel_size",), ValueError),
    Case("`activation` unknown", lambda: _layer(activation="relu7"),
         ("activation",), ValueError),
    Case("`activation` not a name or callable", lambda: _layer(activation=3),
         ("activation",), TypeError),
    Case("`depthwise_initializer` unknown",
         lambda: _layer(depthwise_initializer="glorot"),
         ("depthwise_initializer",), ValueError),
    Case("`depthwise_regularizer` unknown",
         lambda: _layer(depthwise_regularizer="l3"),
         ("depthwise_regularizer",), ValueError),
    Case("`pointwise_constraint` unknown",
         lambda: _layer(pointwise_constraint="max-norm"),
         ("pointwise_constraint",), ValueError),
    Case("`use_bias` not a bool", lambda: _layer(use_bias=1), ("use_bias",),
         TypeError),
    Case("module: inputs' channels != params'",
         lambda: _init_apply(_layer(), np.ones((2, 6, 7, 5))),
         ("depthwise_kernel",), ValueError),
    Case("`input_shape` with NaN",
         lambda: _layer().compute_output_shape((2, float("nan"), 7, 3)),
         ("input_shape",), TypeError),
]


@pytest.mark.parametrize("case", REPRESENTATIVE, ids=lambda c: c.kind)
def test_representative_errors(case):
  check_error(case)


def error_table() -> list[tuple[str, str, str]]:
  """(kind, exception type, message) for each representative case."""
  rows = []
  for case in REPRESENTATIVE:
    try:
      case.call()
    except Exception as e:  # pylint: disable=broad-except
      rows.append((case.kind, type(e).__name__, str(e)))
    else:
      rows.append((case.kind, "(no error)", ""))
  return rows


if __name__ == "__main__":
  for kind, exc, message in error_table():
    print(f"| {kind} | `{exc}` | `{message[:160]}` |")
