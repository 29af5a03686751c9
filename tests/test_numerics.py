"""Numerics: gradients, low precision, precision=HIGHEST, NaN/Inf, determinism.

Every test runs under "auto" and every implementation of
``tests/implementations.py``'s `BROAD`.

Promises checked here (and stated in docs/reliability.md):

* Gradients: second-order ``check_grads`` in float64, reverse mode and
  forward mode separately, for the function and the module, with respect to
  the input, both kernels and the bias, for every implementation with
  derivatives of its own ("lax"'s are JAX's).
* Low precision: with bfloat16 or float16 inputs and params the result has
  that dtype and, against the float64 reference run on the same (already
  rounded) values,

      |y - y64| <= 2 * eps * |y|_ref + (kh*kw + C*M + 2) * tiny

  where eps is 2**-7 (bfloat16) or 2**-10 (float16), ``tiny`` the dtype's
  smallest subnormal and ``|y|_ref`` the reference run on absolute values:
  each output is within two roundings of exact (accumulation is wider than
  the storage dtype). Measured worst case: 1.1 eps.
* ``precision=HIGHEST`` (as the enum, its name, or a pair) reaches every
  dot and convolution of the forward and the backward pass, for the
  function and the module, in the module each of CPU, CUDA and TPU would
  compile; ``precision=None`` leaves every one at the backend default.
* Non-finite values: a NaN or an Inf at one input position makes exactly the
  outputs in its receptive field non-finite (computed from the stride,
  dilation and padding arithmetic), every other output stays finite; a NaN
  in a weight reaches only the channels that weight feeds.
* Determinism: repeated runs give bit-identical outputs and gradients,
  in one process (eager, jit, module) and across processes.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import note
from hypothesis import settings
from hypothesis import strategies as st
from jax import lax
from jax.test_util import check_grads

import sepconv_jax

try:
  from tests import conftest_hypothesis as hyp
  from tests import implementations
  from tests import lowered
  from tests import reference as ref
except ImportError:  # tests/ itself on sys.path
  import conftest_hypothesis as hyp
  import implementations
  import lowered
  import reference as ref

IMPLS = ("auto",) + implementations.BROAD
# "auto" runs one of these (checked by test_auto_is_one_of_the_implementations),
# so the expensive tests run each concrete implementation once.
CONCRETE = tuple(i for i in IMPLS if i != "auto")
# Second-order checks: "lax"'s derivatives are JAX's own, so they check the
# implementations that bring derivatives of their own.
OWN_DERIVATIVES = tuple(i for i in CONCRETE if i != "lax")
CL, CF = "channels_last", "channels_first"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _arrays(seed, n, h, w, c, kh, kw, m, f, fmt=CL, dtype=np.float32):
  rng = np.random.default_rng(seed)
  shape = (n, h, w, c) if fmt == CL else (n, c, h, w)
  x = rng.standard_normal(shape)
  dk = rng.standard_normal((kh, kw, c, m)) / np.sqrt(kh * kw)
  pk = rng.standard_normal((1, 1, c * m, f)) / np.sqrt(c * m)
  b = rng.standard_normal((f,))
  return tuple(np.asarray(a, dtype) for a in (x, dk, pk, b))


def _f64(a):
  return np.asarray(jnp.asarray(a).astype(jnp.float32), np.float64)


def test_auto_is_one_of_the_implementations():
  """"auto" gives, bit for bit, what one of the concrete implementations
  gives, forward and backward."""
  x, dk, pk, b = _arrays(0, 2, 9, 8, 3, 3, 3, 2, 4)

  def run(impl):
    def f(*a):
      return sepconv_jax.separable_conv2d(*a, strides=2, padding="same",
                                          implementation=impl)
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) ** 2),
                             argnums=(0, 1, 2, 3)))
    f = jax.jit(f)
    return _digest(f(x, dk, pk, b), *grads(x, dk, pk, b))

  assert run("auto") in {run(impl) for impl in CONCRETE}


# --------------------------------------------------------------------------
# Gradients: second order, float64.
# --------------------------------------------------------------------------
_GRAD_CASES = [
    dict(strides=1, padding="same", dilation_rate=(2, 1), data_format=CF,
         kh=3, kw=2, m=2),
    dict(strides=(2, 1), padding="valid", dilation_rate=1, data_format=CL,
         kh=2, kw=3, m=1),
]


# Reverse over reverse is what training (and most second-order methods)
# use; forward mode is what `jax.jvp`, `jax.jacfwd` and `jax.hessian` use.
MODES = pytest.mark.parametrize("mode", ["rev", "fwd"])


@pytest.mark.parametrize("impl", OWN_DERIVATIVES)
@pytest.mark.parametrize("cfg,mode", [
    (_GRAD_CASES[0], "rev"), (_GRAD_CASES[1], "rev"),
    # Forward mode: test_module_second_order_grads runs it by default.
    pytest.param(_GRAD_CASES[0], "fwd", marks=pytest.mark.full("fwd"))],
                         ids=["same-dilated-cf-rev", "valid-strided-cl-rev",
                              "same-dilated-cf-fwd"])
def test_function_second_order_grads(impl, cfg, mode):
  cfg = dict(cfg)
  kh, kw, m = cfg.pop("kh"), cfg.pop("kw"), cfg.pop("m")
  arrays = _arrays(1, 1, 5, 4, 2, kh, kw, m, 2, fmt=cfg["data_format"],
                   dtype=np.float64)
  with jax.enable_x64(True):
    args = tuple(jnp.asarray(a, jnp.float64) for a in arrays)

    # jit: the same program, checked in half the time of eager dispatch.
    @jax.jit
    def sep(x, dk, pk, b):
      return sepconv_jax.separable_conv2d(x, dk, pk, b, implementation=impl,
                                          **cfg)

    @jax.jit
    def dw(x, dk):
      return sepconv_jax.depthwise_conv2d(x, dk, implementation=impl, **cfg)

    assert sep(*args).dtype == jnp.float64
    check_grads(sep, args, order=2, modes=(mode,))
    check_grads(dw, args[:2], order=2, modes=(mode,))


@MODES
@pytest.mark.parametrize("impl", OWN_DERIVATIVES)
def test_module_second_order_grads(impl, mode):
  """Through the module: params (both kernels and the bias) and input."""
  x, dk, pk, b = _arrays(2, 2, 5, 6, 3, 3, 3, 2, 2, dtype=np.float64)
  layer = sepconv_jax.SeparableConv2D(
      filters=2, kernel_size=3, depth_multiplier=2, strides=2,
      padding="same", activation="tanh", implementation=impl,
      param_dtype=jnp.float64)
  with jax.enable_x64(True):
    params = {"depthwise_kernel": jnp.asarray(dk),
              "pointwise_kernel": jnp.asarray(pk), "bias": jnp.asarray(b)}
    xj = jnp.asarray(x)
    shapes = jax.tree.map(jnp.shape,
                          layer.init(jax.random.key(0), xj)["params"])
    assert shapes == jax.tree.map(jnp.shape, params)

    @jax.jit
    def f(params, x):
      return layer.apply({"params": params}, x)

    assert f(params, xj).dtype == jnp.float64
    check_grads(f, (params, xj), order=2, modes=(mode,))


# --------------------------------------------------------------------------
# Low precision.
# --------------------------------------------------------------------------
LOW = {"bfloat16": jnp.bfloat16, "float16": jnp.float16}
_LOW_CASES = [  # (n, h, w, c, kh, kw, m, f, strides, padding, dilation, fmt)
    (2, 9, 11, 3, 3, 3, 1, 4, 1, "same", 1, CL),
    (1, 8, 7, 16, 5, 5, 2, 8, 1, "same", 1, CF),
    (2, 10, 10, 32, 3, 2, 3, 16, 2, "valid", 1, CL),
]


def _low_bound(dtype, x, dk, pk, b, kh, kw, c, m, **conv):
  eps = float(jnp.finfo(dtype).eps)
  tiny = float(jnp.finfo(dtype).smallest_subnormal)
  mag = ref.separable_conv2d(*[np.abs(_f64(a)) for a in (x, dk, pk, b)],
                             **conv)
  return 2 * eps * mag + (kh * kw + c * m + 2) * tiny


def _low_grid():
  """Every case in both dtypes; by default each case in one of them, the
  dtypes alternating (the other half: the full profile)."""
  grid = []
  for i, case in enumerate(_LOW_CASES):
    for j, dtype_name in enumerate(sorted(LOW)):
      marks = () if (i + j) % 2 == 0 else pytest.mark.full("the other dtype")
      grid.append(pytest.param(dtype_name, case, marks=marks,
                               id=f"{dtype_name}-{i}"))
  return grid


@pytest.mark.parametrize("impl", CONCRETE)
@pytest.mark.parametrize("dtype_name,case", _low_grid())
def test_low_precision_function(impl, dtype_name, case):
  dtype = LOW[dtype_name]
  n, h, w, c, kh, kw, m, f, strides, padding, dilation, fmt = case
  arrays = _arrays(3, n, h, w, c, kh, kw, m, f, fmt=fmt)
  x, dk, pk, b = (jnp.asarray(a, dtype) for a in arrays)
  conv = dict(strides=strides, padding=padding, dilation_rate=dilation,
              data_format=fmt)
  y = sepconv_jax.separable_conv2d(x, dk, pk, b, implementation=impl, **conv)
  assert y.dtype == dtype
  expected = ref.separable_conv2d(*map(_f64, (x, dk, pk, b)), **conv)
  bound = _low_bound(dtype, x, dk, pk, b, kh, kw, c, m, **conv)
  err = np.abs(_f64(y) - expected)
  assert np.all(err <= bound), float(np.max(err / bound))

  d = sepconv_jax.depthwise_conv2d(x, dk, implementation=impl, **conv)
  assert d.dtype == dtype
  expected_d = ref.depthwise_conv2d(_f64(x), _f64(dk), **conv)
  mag_d = ref.depthwise_conv2d(np.abs(_f64(x)), np.abs(_f64(dk)), **conv)
  eps, tiny = float(jnp.finfo(dtype).eps), float(
      jnp.finfo(dtype).smallest_subnormal)
  err_d = np.abs(_f64(d) - expected_d)
  assert np.all(err_d <= 2 * eps * mag_d + (kh * kw + 2) * tiny)


@pytest.mark.parametrize("impl", [
    i if i != "lax" else pytest.param(i, marks=pytest.mark.full(
        "the module's dtype rules do not depend on the implementation"))
    for i in CONCRETE])
@pytest.mark.parametrize("dtype_name", sorted(LOW))
def test_low_precision_module(impl, dtype_name):
  """param_dtype and inputs low: low result; dtype=low with float32 params:
  params are rounded to `dtype` first; low inputs with float32 params and
  dtype=None: the promoted float32 result, within the float32 bound."""
  dtype = LOW[dtype_name]
  x32, dk, pk, b = _arrays(4, 2, 9, 8, 4, 3, 3, 2, 5)
  conv = dict(strides=1, padding="same", dilation_rate=1)
  kw = dict(filters=5, kernel_size=3, depth_multiplier=2, padding="same",
            implementation=impl)
  params32 = {"depthwise_kernel": dk, "pointwise_kernel": pk, "bias": b}
  x = jnp.asarray(x32, dtype)

  # 1. Everything in the low dtype.
  layer = sepconv_jax.SeparableConv2D(param_dtype=dtype, **kw)
  params = layer.init(jax.random.key(0), x)["params"]
  assert all(v.dtype == dtype for v in jax.tree.leaves(params))
  params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params32)
  y = layer.apply({"params": params}, x)
  assert y.dtype == dtype
  ops = (x, params["depthwise_kernel"], params["pointwise_kernel"],
         params["bias"])
  expected = ref.separable_conv2d(*map(_f64, ops), **conv)
  assert np.all(np.abs(_f64(y) - expected)
                <= _low_bound(dtype, *ops, 3, 3, 4, 2, **conv))

  # 2. dtype=low, float32 params: computed in the low dtype.
  layer = sepconv_jax.SeparableConv2D(dtype=dtype, **kw)
  y = layer.apply({"params": params32}, x32)
  assert y.dtype == dtype
  ops = tuple(jnp.asarray(a, dtype) for a in (x32, dk, pk, b))
  expected = ref.separable_conv2d(*map(_f64, ops), **conv)
  assert np.all(np.abs(_f64(y) - expected)
                <= _low_bound(dtype, *ops, 3, 3, 4, 2, **conv))

  # 3. Low inputs, float32 params, dtype=None: promoted to float32.
  layer = sepconv_jax.SeparableConv2D(**kw)
  y = layer.apply({"params": params32}, x)
  assert y.dtype == jnp.float32
  ops = (x, dk, pk, b)
  expected = ref.separable_conv2d(*map(_f64, ops), **conv)
  mag = ref.separable_conv2d(*[np.abs(_f64(a)) for a in ops], **conv)
  bound = 2 * (9 + 8 + 2) * float(jnp.finfo(jnp.float32).eps) * mag
  assert np.all(np.abs(_f64(y) - expected) <= bound)


# --------------------------------------------------------------------------
# precision=: read from the module each platform would compile.
# --------------------------------------------------------------------------
_HIGHEST_FORMS = {"enum": lax.Precision.HIGHEST, "name": "highest",
                  "pair": (lax.Precision.HIGHEST, lax.Precision.HIGHEST)}


def _programs(impl, precision):
  """Forward and backward passes of the function and the module."""
  x, dk, pk, b = _arrays(5, 2, 8, 9, 3, 3, 3, 2, 4)
  conv = dict(strides=1, padding="same", implementation=impl,
              precision=precision)

  def sep(x, dk, pk, b):
    return sepconv_jax.separable_conv2d(x, dk, pk, b, **conv)

  layer = sepconv_jax.SeparableConv2D(4, 3, depth_multiplier=2,
                                      padding="same", precision=precision,
                                      implementation=impl)
  params = {"depthwise_kernel": dk, "pointwise_kernel": pk, "bias": b}

  def module(params, x):
    return layer.apply({"params": params}, x)

  def backward(f, count):  # the value, and the gradient of every argument
    return jax.value_and_grad(lambda *a: jnp.sum(f(*a) ** 2),
                              argnums=tuple(range(count)))

  return {
      "forward": (sep, (x, dk, pk, b)),
      "backward": (backward(sep, 4), (x, dk, pk, b)),
      "module forward": (module, (params, x)),
      "module backward": (backward(module, 2), (params, x)),
  }


@pytest.mark.parametrize("impl,platform", [
    # "taps" lowers the same ops everywhere: CPU by default.
    (i, p) if i != "taps" or p == "cpu" else pytest.param(
        i, p, marks=pytest.mark.full("taps lowers the same ops everywhere"))
    for i in IMPLS for p in lowered.PLATFORMS])
def test_precision_reaches_every_contraction_of_the_lowered_module(impl,
                                                                   platform):
  """``precision=`` (any form) is on every dot and convolution, forward
  and backward, of the program each platform compiles; None leaves them
  all at the backend default."""
  # Every form on one platform (the forms are one argument check); the
  # name elsewhere.
  forms = _HIGHEST_FORMS if platform == "cpu" else {
      "name": _HIGHEST_FORMS["name"]}
  for form, precision in forms.items():
    for what, (fn, args) in _programs(impl, precision).items():
      found = lowered.contractions(
          lowered.lower(fn, *args, platforms=(platform,)))
      assert found, f"{impl} {what} on {platform}: no contraction"
      wrong = [c for c in found if c[1] != ("HIGHEST", "HIGHEST")]
      assert not wrong, f"{impl} {what} on {platform} ({form}): {wrong}"


@pytest.mark.precision("default")
@pytest.mark.parametrize("impl", IMPLS)
def test_precision_none_leaves_the_backend_default(impl):
  for platform in lowered.PLATFORMS:
    for what, (fn, args) in _programs(impl, None).items():
      found = lowered.contractions(
          lowered.lower(fn, *args, platforms=(platform,)))
      assert found and all(p in ((), ("DEFAULT", "DEFAULT"))
                           for _, p in found), (impl, what, platform, found)


@pytest.mark.parametrize("impl", IMPLS)
def test_precision_highest_is_exact_float32(impl):
  """The numbers: within the float32 forward-error bound of float64."""
  x, dk, pk, b = _arrays(5, 2, 8, 9, 3, 3, 3, 2, 4)
  y = sepconv_jax.separable_conv2d(x, dk, pk, b, padding="same",
                                   precision="highest", implementation=impl)
  expected = ref.separable_conv2d(x, dk, pk, b, 1, "same")
  mag = ref.separable_conv2d(np.abs(x), np.abs(dk), np.abs(pk), np.abs(b), 1,
                             "same")
  bound = 2 * (9 + 6 + 2) * float(jnp.finfo(jnp.float32).eps) * mag
  assert np.all(np.abs(np.asarray(y, np.float64) - expected) <= bound)


# --------------------------------------------------------------------------
# NaN and Inf locality.
# --------------------------------------------------------------------------
def _touched(size, k, s, d, padding, pos):
  """Output indices whose window covers input index `pos` on one axis."""
  if padding == "same":
    before, _ = ref.tf_same_pads(size, k, s, d)
  else:
    before = 0
  out = ref.output_size(size, k, s, d, padding)
  return [o for o in range(out)
          if any(o * s + t * d - before == pos for t in range(k))]


@st.composite
def nan_cases(draw):
  kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
  strided = draw(st.booleans())
  steps = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
  strides, dilation = (steps, (1, 1)) if strided else ((1, 1), steps)
  padding = draw(st.sampled_from(["valid", "same"]))
  sizes = []
  for k, d in zip((kh, kw), dilation):
    low = (k - 1) * d + 1 if padding == "valid" else 1
    sizes.append(draw(st.integers(low, low + 7)))
  h, w = sizes
  n, c, m, f = (draw(st.integers(1, 2)), draw(st.integers(1, 3)),
                draw(st.integers(1, 2)), draw(st.integers(1, 3)))
  pos = (draw(st.integers(0, n - 1)), draw(st.integers(0, h - 1)),
         draw(st.integers(0, w - 1)), draw(st.integers(0, c - 1)))
  return dict(kh=kh, kw=kw, strides=strides, dilation=dilation,
              padding=padding, h=h, w=w, n=n, c=c, m=m, f=f, pos=pos,
              fmt=draw(st.sampled_from([CL, CF])),
              value=draw(st.sampled_from([np.nan, np.inf, -np.inf])),
              impl=draw(st.sampled_from(IMPLS)),
              seed=draw(st.integers(0, 2**16)))


@given(case=nan_cases())
@settings(max_examples=hyp.examples(10))
def test_non_finite_input_reaches_exactly_its_receptive_field(case):
  note(repr(case))
  kh, kw, m, f, c = case["kh"], case["kw"], case["m"], case["f"], case["c"]
  x, dk, pk, b = _arrays(case["seed"], case["n"], case["h"], case["w"], c,
                         kh, kw, m, f)  # channels_last, finite
  pn, ph, pw, pc = case["pos"]
  x[pn, ph, pw, pc] = case["value"]
  conv = dict(strides=case["strides"], padding=case["padding"],
              dilation_rate=case["dilation"], implementation=case["impl"],
              data_format=case["fmt"])
  xin = x if case["fmt"] == CL else np.transpose(x, (0, 3, 1, 2))
  # Jitted: what users run, and a fraction of the cost of eager dispatch.
  sep = jax.jit(functools.partial(sepconv_jax.separable_conv2d, **conv))
  dw = jax.jit(functools.partial(sepconv_jax.depthwise_conv2d, **conv))
  y = np.asarray(sep(xin, dk, pk, b))
  d = np.asarray(dw(xin, dk))
  if case["fmt"] == CF:
    y, d = np.transpose(y, (0, 2, 3, 1)), np.transpose(d, (0, 2, 3, 1))

  rows = _touched(case["h"], kh, case["strides"][0], case["dilation"][0],
                  case["padding"], ph)
  cols = _touched(case["w"], kw, case["strides"][1], case["dilation"][1],
                  case["padding"], pw)
  expected = np.zeros(y.shape, bool)
  for r, col in itertools.product(rows, cols):
    expected[pn, r, col, :] = True  # the pointwise step mixes all channels
  np.testing.assert_array_equal(~np.isfinite(y), expected)
  expected_d = np.zeros(d.shape, bool)
  for r, col in itertools.product(rows, cols):
    expected_d[pn, r, col, pc * m:(pc + 1) * m] = True  # Keras's c*M + m
  np.testing.assert_array_equal(~np.isfinite(d), expected_d)
  if np.isnan(case["value"]):
    assert np.all(np.isnan(d[expected_d]))
    assert np.all(np.isnan(y[expected]))

  # The module, on the same arrays.
  layer = sepconv_jax.SeparableConv2D(
      f, (kh, kw), strides=case["strides"], padding=case["padding"],
      dilation_rate=case["dilation"], depth_multiplier=m,
      data_format=case["fmt"], implementation=case["impl"])
  ym = np.asarray(jax.jit(layer.apply)(
      {"params": {"depthwise_kernel": dk, "pointwise_kernel": pk,
                  "bias": b}}, xin))
  if case["fmt"] == CF:
    ym = np.transpose(ym, (0, 2, 3, 1))
  np.testing.assert_array_equal(~np.isfinite(ym), expected)


@pytest.mark.parametrize("impl", CONCRETE)
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("where", ["depthwise_kernel", "pointwise_kernel",
                                   "bias"])
def test_nan_weight_reaches_only_the_channels_it_feeds(impl, padding, where):
  """...and every output of those channels: with "same" padding too, where
  some taps meet the zero padding (0 * NaN is NaN, as in Keras/TF)."""
  c, m, f = 3, 2, 4
  x, dk, pk, b = _arrays(7, 2, 7, 6, c, 3, 2, m, f)
  if where == "depthwise_kernel":
    dk[1, 0, 1, 1] = np.nan  # input channel 1, multiplier 1
  elif where == "pointwise_kernel":
    pk[0, 0, 4, 2] = np.nan  # depthwise channel 4 -> filter 2
  else:
    b[3] = np.nan
  y = np.asarray(sepconv_jax.separable_conv2d(x, dk, pk, b, padding=padding,
                                              implementation=impl))
  d = np.asarray(sepconv_jax.depthwise_conv2d(x, dk, padding=padding,
                                              implementation=impl))
  bad_filters = {"depthwise_kernel": [0, 1, 2, 3], "pointwise_kernel": [2],
                 "bias": [3]}[where]
  expected = np.zeros(y.shape, bool)
  expected[..., bad_filters] = True
  np.testing.assert_array_equal(np.isnan(y), expected)
  expected_d = np.zeros(d.shape, bool)
  if where == "depthwise_kernel":
    expected_d[..., 1 * m + 1] = True
  np.testing.assert_array_equal(np.isnan(d), expected_d)


# --------------------------------------------------------------------------
# Determinism.
# --------------------------------------------------------------------------
def _digest(*arrays):
  h = hashlib.sha256()
  for a in arrays:
    a = np.asarray(a)
    h.update(str((a.shape, a.dtype.str)).encode())
    h.update(a.tobytes())
  return h.hexdigest()


@pytest.mark.parametrize("impl", CONCRETE)
def test_bit_identical_across_repeated_runs(impl):
  """Large enough to use several threads; eager, jit, grad and module."""
  x, dk, pk, b = _arrays(8, 2, 40, 36, 16, 3, 3, 2, 24)
  conv = dict(strides=1, padding="same", implementation=impl)

  def sep(x, dk, pk, b):
    return sepconv_jax.separable_conv2d(x, dk, pk, b, **conv)

  grad = jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(sep(*a))),
                          argnums=(0, 1, 2, 3)))
  jitted = jax.jit(sep)
  layer = sepconv_jax.SeparableConv2D(24, 3, depth_multiplier=2,
                                      padding="same", implementation=impl)
  params = {"depthwise_kernel": dk, "pointwise_kernel": pk, "bias": b}
  runs = {
      "eager": lambda: sep(x, dk, pk, b),
      "jit": lambda: jitted(x, dk, pk, b),
      "grad": lambda: grad(x, dk, pk, b),
      "module": lambda: layer.apply({"params": params}, x),
  }
  for what, run in runs.items():
    digests = {_digest(*jax.tree.leaves(run())) for _ in range(4)}
    assert len(digests) == 1, what


_DETERMINISM_SCRIPT = r"""
import hashlib, json, sys
import jax, jax.numpy as jnp, numpy as np
import sepconv_jax


def digests(impls):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((1, 40, 36, 16)).astype(np.float32)
  dk = rng.standard_normal((3, 3, 16, 2)).astype(np.float32)
  pk = rng.standard_normal((1, 1, 32, 24)).astype(np.float32)
  b = rng.standard_normal((24,)).astype(np.float32)
  out = {}
  for impl in impls:
    f = jax.jit(lambda *a: sepconv_jax.separable_conv2d(
        *a, padding="same", implementation=impl))
    g = jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a))),
                         argnums=(0, 1, 2, 3)))
    h = hashlib.sha256()
    for a in [f(x, dk, pk, b), *g(x, dk, pk, b)]:
      h.update(np.asarray(a).tobytes())
    out[impl] = h.hexdigest()
  return out


if __name__ == "__main__":
  print(json.dumps(digests(sys.argv[1:])))
"""


@pytest.mark.precision("default")  # as the other process runs
def test_bit_identical_across_processes():
  """Another process computes, bit for bit, what this one computes."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-c", _DETERMINISM_SCRIPT, *CONCRETE],
      capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
      check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  other = json.loads(proc.stdout.strip().splitlines()[-1])
  namespace = {"__name__": "determinism"}
  exec(_DETERMINISM_SCRIPT, namespace)  # pylint: disable=exec-used
  here = namespace["digests"](CONCRETE)
  assert set(here) == set(CONCRETE)
  assert here == other


# --------------------------------------------------------------------------
# scripts/large_input.py, on a small size (the 2048x2048 run is manual:
# `python scripts/large_input.py`, figures in docs/reliability.md).
# --------------------------------------------------------------------------
def _large_input(*args):
  return subprocess.run(
      [sys.executable, os.path.join(REPO, "scripts", "large_input.py"),
       "--size", "40", "--channels", "4", "--filters", "4", *args],
      capture_output=True, text=True, cwd=REPO, timeout=300, check=False,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.mark.full("a measurement script's own test, in a process of its own")
def test_large_input_script_small_size():
  """One run, in its own process. At this size the interpreter alone is
  thousands of times the arrays, so the default 4x limit fails: the figures
  are reported and the exit status is 1."""
  proc = _large_input("--mode", "step", "--implementation", "auto")
  assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report["max_ratio"] == 4
  results = {r["implementation"]: r for r in report["results"]}
  assert set(results) == {"auto"}
  for r in results.values():
    assert r["mode"] == "step"
    assert r["input_shape"] == [1, 40, 40, 4]
    assert r["output_shape"] == [1, 40, 40, 4]
    assert r["input_bytes"] == r["output_bytes"] == 40 * 40 * 4 * 4
    assert r["finite"] and r["over_limit"]
    assert r["peak_rss_bytes"] >= r["baseline_rss_bytes"] > 0
    assert r["ratio"] == pytest.approx(
        r["peak_rss_bytes"] / (r["input_bytes"] + r["output_bytes"]))
  assert results["auto"]["resolved"] in CONCRETE

  # By default it measures "auto" and every registered implementation.
  sys.path.insert(0, os.path.join(REPO, "scripts"))
  try:
    import large_input  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  assert large_input.implementations() == list(IMPLS)


# --------------------------------------------------------------------------
# Memory of differentiation: what the backward pass keeps.
# --------------------------------------------------------------------------
@pytest.mark.parametrize("impl", CONCRETE)
@pytest.mark.parametrize("kernel", [3, 5])
def test_saved_residuals_are_a_few_activations(impl, kernel):
  """jax.vjp / nn.scan / un-jitted grads keep the residuals of the forward
  pass. They must stay a few activations' worth, whatever the kernel size:
  at most the depthwise output, the output and one input-sized buffer
  beyond the arguments themselves (lax keeps just the depthwise output)."""
  x, dk, pk, b = (jnp.asarray(a) for a in _arrays(0, 1, 32, 32, 8, kernel,
                                                  kernel, 1, 8))

  @jax.jit
  def f(x, dk, pk, b):
    return sepconv_jax.separable_conv2d(x, dk, pk, b, padding="same",
                                        implementation=impl)

  _, pullback = jax.vjp(f, x, dk, pk, b)
  args = {id(a) for a in (x, dk, pk, b)}
  saved = [r for r in jax.tree.leaves(pullback)
           if hasattr(r, "nbytes") and id(r) not in args]
  saved_bytes = sum(r.nbytes for r in saved)
  activation = x.nbytes  # input, depthwise output and output: all equal
  big = [(r.shape, str(r.dtype)) for r in saved if r.nbytes >= activation]
  assert saved_bytes <= 3 * activation, (
      f"{impl} keeps {saved_bytes / activation:.1f} activations for the"
      f" backward pass; {len(big)} of at least the input's size: {big}")
