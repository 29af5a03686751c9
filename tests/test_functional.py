"""The functional API against the independent float64 NumPy reference.

Expected values come from tests/reference.py (float64, explicit loops over
kernel taps) or from closed forms; never from the implementation itself.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import sepconv_jax

try:
  from tests import implementations
  from tests import reference as ref
  from tests import reference_nd as ref_nd
except ImportError:  # tests/ itself on sys.path
  import implementations
  import reference as ref
  import reference_nd as ref_nd


IMPLS = ("auto",) + implementations.BROAD

CL, CF = "channels_last", "channels_first"


def _rng(*key):
  return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _make(rng, *, n=2, h=7, w=7, c=3, kh=3, kw=3, m=1, f=2, fmt=CL,
          leading=None):
  """float32 inputs, kernels scaled so outputs are O(1), and a bias."""
  lead = (n,) if leading is None else tuple(leading)
  shape = lead + ((h, w, c) if fmt == CL else (c, h, w))
  x = rng.standard_normal(shape).astype(np.float32)
  dk = (rng.standard_normal((kh, kw, c, m)) / np.sqrt(kh * kw)).astype(
      np.float32)
  pk = (rng.standard_normal((1, 1, c * m, f)) / np.sqrt(c * m)).astype(
      np.float32)
  b = rng.standard_normal((f,)).astype(np.float32)
  return x, dk, pk, b


def _jit(fn, **kwargs):
  """`fn` with its keyword arguments fixed, under jit.

  On CPU the tap-wise implementation dispatches many small ops; eagerly each
  compiles on its own, which is ~10x slower than compiling the whole call
  once. Eager execution is checked against jit in test_eager_equals_jit.
  """
  return jax.jit(functools.partial(fn, **kwargs))


assert_close = ref.assert_close


def _spec_out_shape(x_shape, kh, kw, f, strides, padding, dilation, fmt):
  """Output shape from the spec's closed-form size formulas."""
  sh, sw = ref.pair(strides)
  dh, dw = ref.pair(dilation)
  if fmt == CL:
    *lead, h, w, _ = x_shape
    oh = ref.output_size(h, kh, sh, dh, padding)
    ow = ref.output_size(w, kw, sw, dw, padding)
    return tuple(lead) + (oh, ow, f)
  *lead, _, h, w = x_shape
  oh = ref.output_size(h, kh, sh, dh, padding)
  ow = ref.output_size(w, kw, sw, dw, padding)
  return tuple(lead) + (f, oh, ow)


# --------------------------------------------------------------------------
# The main grid: padding x (stride, dilation) x three kernels each, with depth
# multiplier, data format, odd/even spatial sizes and channel counts cycled
# through it so every value of each appears many times, in combination with
# the others.
# --------------------------------------------------------------------------

_PADDINGS = ("valid", "same")
_STRIDE_DILATION = ((1, 1), (2, 1), (3, 1), (1, 2), (1, 3))
_KERNELS = ((1, 1), (2, 2), (3, 3), (5, 5), (1, 3), (5, 2))
_FORMAT_M = tuple(itertools.product((CL, CF), (1, 2, 3)))
_SIZES = ((7, 9), (5, 5), (9, 6), (6, 7), (8, 5), (9, 9))
_CHANNELS = ((3, 2), (1, 3), (4, 1), (2, 4))


def _grid():
  """Every (padding, stride, dilation) with three of the kernels, so that
  each padding meets every kernel; the rest cycles through the cases."""
  combos = [(padding, sd, _KERNELS[(i * 3 + j) % len(_KERNELS)])
            for i, (padding, sd) in enumerate(
                itertools.product(_PADDINGS, _STRIDE_DILATION))
            for j in range(3)]
  cases = []
  for idx, (padding, (s, d), (kh, kw)) in enumerate(combos):
    fmt, m = _FORMAT_M[idx % len(_FORMAT_M)]
    h, w = _SIZES[idx % len(_SIZES)]
    c, f = _CHANNELS[idx % len(_CHANNELS)]
    if padding == "valid":  # keep the output non-empty
      h = max(h, (kh - 1) * d + 1 + (idx % 2))
      w = max(w, (kw - 1) * d + 1 + (idx % 3))
    cases.append(dict(padding=padding, strides=s, dilation=d, kh=kh, kw=kw,
                      m=m, fmt=fmt, h=h, w=w, c=c, f=f))
  return cases


# Targeted extras: non-square strides / dilations, and "same" inputs smaller
# than the (dilated) kernel or the stride.
_EXTRA = [
    dict(padding="same", strides=(1, 2), dilation=1, kh=3, kw=3, m=2, fmt=CL,
         h=7, w=8, c=3, f=2),
    dict(padding="valid", strides=(2, 3), dilation=1, kh=2, kw=3, m=1, fmt=CF,
         h=9, w=9, c=2, f=3),
    dict(padding="same", strides=(3, 1), dilation=1, kh=4, kw=1, m=3, fmt=CF,
         h=8, w=5, c=2, f=2),
    dict(padding="valid", strides=1, dilation=(2, 1), kh=3, kw=2, m=2, fmt=CL,
         h=7, w=5, c=3, f=1),
    dict(padding="same", strides=1, dilation=(1, 3), kh=2, kw=3, m=1, fmt=CF,
         h=5, w=7, c=4, f=2),
    dict(padding="valid", strides=1, dilation=(3, 2), kh=3, kw=3, m=1, fmt=CL,
         h=8, w=6, c=2, f=2),
    # "same" with inputs smaller than the kernel:
    dict(padding="same", strides=1, dilation=1, kh=3, kw=3, m=2, fmt=CL,
         h=1, w=1, c=2, f=3),
    dict(padding="same", strides=1, dilation=1, kh=5, kw=5, m=1, fmt=CF,
         h=2, w=3, c=3, f=2),
    dict(padding="same", strides=2, dilation=1, kh=3, kw=2, m=3, fmt=CL,
         h=1, w=4, c=1, f=2),
    dict(padding="same", strides=1, dilation=2, kh=5, kw=3, m=1, fmt=CL,
         h=2, w=2, c=2, f=2),
    dict(padding="same", strides=3, dilation=1, kh=4, kw=5, m=2, fmt=CF,
         h=2, w=2, c=2, f=1),
]


def _case_id(cfg):
  return ("{padding}-s{strides}-d{dilation}-k{kh}x{kw}-M{m}-{fmt}-"
          "{h}x{w}-C{c}F{f}").format(**cfg).replace(" ", "")


_GRID = _grid()


def _with_impls(configs):
  """Every config under every named implementation; "auto" (which only
  dispatches to one of them) under every 4th config, to bound the count."""
  named = [i for i in IMPLS if i != "auto"] or ["auto"]
  cases = []
  for idx, cfg in enumerate(configs):
    impls = named + (["auto"] if "auto" not in named and idx % 4 == 0 else [])
    cases += [pytest.param(cfg, impl, id=f"{_case_id(cfg)}-{impl}")
              for impl in impls]
  return cases


_SEP_CASES = _with_impls(_GRID + _EXTRA)
_DW_CASES = _with_impls(_GRID[1::4] + _EXTRA[6:])


@pytest.mark.parametrize("cfg,impl", _SEP_CASES)
def test_separable_matches_reference(cfg, impl):
  rng = _rng("sep", _case_id(cfg))
  x, dk, pk, b = _make(rng, h=cfg["h"], w=cfg["w"], c=cfg["c"], kh=cfg["kh"],
                       kw=cfg["kw"], m=cfg["m"], f=cfg["f"], fmt=cfg["fmt"])
  fn = _jit(sepconv_jax.separable_conv2d, strides=cfg["strides"],
            padding=cfg["padding"], dilation_rate=cfg["dilation"],
            data_format=cfg["fmt"], implementation=impl)
  out = fn(x, dk, pk, b)
  expected = ref.separable_conv2d(x, dk, pk, b, cfg["strides"], cfg["padding"],
                                  cfg["dilation"], cfg["fmt"])
  assert out.dtype == jnp.float32
  assert out.shape == _spec_out_shape(x.shape, cfg["kh"], cfg["kw"], cfg["f"],
                                      cfg["strides"], cfg["padding"],
                                      cfg["dilation"], cfg["fmt"])
  assert_close(out, expected)


@pytest.mark.parametrize("cfg,impl", _DW_CASES)
def test_depthwise_matches_reference(cfg, impl):
  rng = _rng("dw", _case_id(cfg))
  x, dk, _, _ = _make(rng, h=cfg["h"], w=cfg["w"], c=cfg["c"], kh=cfg["kh"],
                      kw=cfg["kw"], m=cfg["m"], fmt=cfg["fmt"])
  fn = _jit(sepconv_jax.depthwise_conv2d, strides=cfg["strides"],
            padding=cfg["padding"], dilation_rate=cfg["dilation"],
            data_format=cfg["fmt"], implementation=impl)
  out = fn(x, dk)
  expected = ref.depthwise_conv2d(x, dk, cfg["strides"], cfg["padding"],
                                  cfg["dilation"], cfg["fmt"])
  assert out.dtype == jnp.float32
  assert out.shape == _spec_out_shape(x.shape, cfg["kh"], cfg["kw"],
                                      cfg["c"] * cfg["m"], cfg["strides"],
                                      cfg["padding"], cfg["dilation"],
                                      cfg["fmt"])
  assert_close(out, expected)


@pytest.mark.parametrize("fmt", [CL, CF])
@pytest.mark.parametrize("impl", IMPLS)
def test_depthwise_channel_order_closed_form(impl, fmt):
  # 1x1 kernel with dk[0, 0, c, m] = 10 c + m + 1 on an all-ones input:
  # output channel c * M + m must equal 10 c + m + 1 (Keras order).
  c, m = 3, 2
  dk = np.zeros((1, 1, c, m), np.float32)
  for ci in range(c):
    for mi in range(m):
      dk[0, 0, ci, mi] = 10 * ci + mi + 1
  x = np.ones((1, 2, 2, c) if fmt == CL else (1, c, 2, 2), np.float32)
  out = np.asarray(sepconv_jax.depthwise_conv2d(
      x, dk, data_format=fmt, implementation=impl))
  expected = np.array([10 * ci + mi + 1 for ci in range(c) for mi in range(m)],
                      np.float32)
  if fmt == CL:
    np.testing.assert_array_equal(out, np.broadcast_to(expected, (1, 2, 2, 6)))
  else:
    np.testing.assert_array_equal(
        out, np.broadcast_to(expected[:, None, None], (1, 6, 2, 2)))


def test_closed_form_all_ones():
  # Docstring-style closed form: ones input, ones kernels, valid padding:
  # every output is kh*kw*C*M (+ bias).
  x = np.ones((2, 6, 5, 3), np.float32)
  dk = np.ones((3, 2, 3, 2), np.float32)
  pk = np.ones((1, 1, 6, 4), np.float32)
  b = np.full((4,), 0.5, np.float32)
  out = np.asarray(sepconv_jax.separable_conv2d(x, dk, pk, b))
  assert out.shape == (2, 4, 4, 4)
  np.testing.assert_array_equal(out, np.full(out.shape, 3 * 2 * 3 * 2 + 0.5))


@pytest.mark.parametrize("padding,data_format", [
    ("SAME", "CHANNELS_FIRST"), ("Valid", "Channels_Last"), ("sAmE", CL)])
def test_padding_and_data_format_any_case(padding, data_format):
  fmt = data_format.lower()
  x, dk, pk, b = _make(_rng("case", padding, data_format), h=5, w=6, kh=3,
                       kw=2, m=2, fmt=fmt)
  out = sepconv_jax.separable_conv2d(x, dk, pk, b, strides=2,
                                     padding=padding, data_format=data_format)
  assert_close(out, ref.separable_conv2d(x, dk, pk, b, 2, padding.lower(), 1,
                                         fmt))


def test_int_strides_and_pairs_are_equivalent():
  x, dk, pk, b = _make(_rng("pairs"), h=9, w=9, kh=3, kw=3)
  a = sepconv_jax.separable_conv2d(x, dk, pk, b, strides=2, dilation_rate=1,
                                   padding="same")
  c = sepconv_jax.separable_conv2d(x, dk, pk, b, strides=(2, 2),
                                   dilation_rate=[1, 1], padding="same")
  np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
  assert_close(a, ref.separable_conv2d(x, dk, pk, b, 2, "same", 1))


def test_defaults_are_valid_stride1_no_bias():
  x, dk, pk, _ = _make(_rng("defaults"), h=6, w=7, kh=3, kw=2, m=2)
  out = sepconv_jax.separable_conv2d(x, dk, pk)
  assert_close(out, ref.separable_conv2d(x, dk, pk, None, 1, "valid", 1))


# --------------------------------------------------------------------------
# Transformations: jit, vmap, grad.
# --------------------------------------------------------------------------

_TRANSFORM_CASES = [
    dict(strides=2, padding="same", dilation=1, fmt=CL, kh=3, kw=3, m=2),
    dict(strides=1, padding="valid", dilation=2, fmt=CF, kh=3, kw=2, m=1),
    dict(strides=(1, 3), padding="same", dilation=1, fmt=CF, kh=2, kw=5, m=3),
]


@pytest.mark.parametrize("cfg,impl", [
    pytest.param(cfg, impl, id=f"cfg{i}-{impl}")
    for i, cfg in enumerate(_TRANSFORM_CASES) for impl in IMPLS])
def test_eager_equals_jit(cfg, impl):
  x, dk, pk, b = _make(_rng("jit", str(cfg)), h=8, w=7, kh=cfg["kh"],
                       kw=cfg["kw"], m=cfg["m"], fmt=cfg["fmt"])
  kw = dict(strides=cfg["strides"], padding=cfg["padding"],
            dilation_rate=cfg["dilation"], data_format=cfg["fmt"],
            implementation=impl)

  def sep(*a):
    return sepconv_jax.separable_conv2d(*a, **kw)

  def dw(*a):
    return sepconv_jax.depthwise_conv2d(*a, **kw)

  eager = sep(x, dk, pk, b)
  jitted = jax.jit(sep)(x, dk, pk, b)
  np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(jax.jit(dw)(x, dk)),
                             np.asarray(dw(x, dk)), rtol=1e-6, atol=1e-6)
  assert_close(jitted, ref.separable_conv2d(x, dk, pk, b, cfg["strides"],
                                            cfg["padding"], cfg["dilation"],
                                            cfg["fmt"]))


@pytest.mark.parametrize("fmt", [CL, CF])
def test_vmap_over_inputs_equals_stacking(fmt):
  rng = _rng("vmap", fmt)
  x, dk, pk, b = _make(rng, leading=(3, 2), h=6, w=5, kh=3, kw=3, m=2,
                       fmt=fmt)
  kw = dict(strides=2, padding="same", data_format=fmt)
  out = jax.vmap(
      lambda xi: sepconv_jax.separable_conv2d(xi, dk, pk, b, **kw))(x)
  expected = np.stack([ref.separable_conv2d(xi, dk, pk, b, 2, "same", 1, fmt)
                       for xi in x])
  assert_close(out, expected)
  stacked = np.stack([np.asarray(sepconv_jax.separable_conv2d(
      xi, dk, pk, b, **kw)) for xi in x])
  np.testing.assert_allclose(np.asarray(out), stacked, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_vmap_over_kernels_and_bias(impl):
  rng = _rng("vmap-kernels", impl)
  x, _, _, _ = _make(rng, h=7, w=6)
  dks = (rng.standard_normal((4, 3, 2, 3, 2)) / 3).astype(np.float32)
  pks = (rng.standard_normal((4, 1, 1, 6, 2)) / 3).astype(np.float32)
  bs = rng.standard_normal((4, 2)).astype(np.float32)
  f = jax.vmap(lambda dk, pk, b: sepconv_jax.separable_conv2d(
      x, dk, pk, b, padding="same", dilation_rate=2, implementation=impl))
  out = f(dks, pks, bs)
  expected = np.stack([ref.separable_conv2d(x, dks[i], pks[i], bs[i], 1,
                                            "same", 2) for i in range(4)])
  assert_close(out, expected)
  g = jax.vmap(lambda dk: sepconv_jax.depthwise_conv2d(
      x, dk, strides=2, implementation=impl))
  expected_dw = np.stack([ref.depthwise_conv2d(x, dks[i], 2, "valid", 1)
                          for i in range(4)])
  assert_close(g(dks), expected_dw)


_NAMED_IMPLS = [i for i in IMPLS if i != "auto"] or ["auto"]


@pytest.mark.parametrize("impl", IMPLS)
def test_per_example_grads_under_vmap(impl):
  # grad inside vmap (per-example gradients) of the linear loss
  # sum(g_i * y_i): d/d pointwise = einsum(depthwise_ref(x_i), g_i),
  # d/d bias = sum(g_i), d/d x_i checked against finite differences of the
  # reference being exact for a linear map: <grad, e> = L(e).
  rng = _rng("vmap-grad", impl)
  x, dk, pk, b = _make(rng, leading=(3, 1), h=5, w=5, kh=3, kw=2, m=2, f=2)
  dws = [ref.depthwise_conv2d(xi, dk, (1, 2), "same", 1) for xi in x]
  g = rng.standard_normal((3,) + dws[0].shape[:3] + (2,)).astype(np.float32)

  def loss(xi, pk, b, gi):
    y = sepconv_jax.separable_conv2d(xi, dk, pk, b, strides=(1, 2),
                                     padding="same", implementation=impl)
    return jnp.sum(y * gi)

  gx, gpk, gb = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1, 2)),
                                 in_axes=(0, None, None, 0)))(x, pk, b, g)
  for i in range(3):
    assert_close(gpk[i], np.einsum("nhwk,nhwf->kf", dws[i], g[i])[None, None])
    assert_close(gb[i], g[i].sum(axis=(0, 1, 2)))
  # d/dx of sum(g * y): y is linear in x, so grad . e = L(e) for a basis e.
  for idx in [(0, 0, 0, 0, 0), (1, 0, 4, 4, 2), (2, 0, 2, 3, 1)]:
    e = np.zeros(x.shape[1:])
    e[idx[1:]] = 1.0
    expected = np.sum(g[idx[0]] * ref.separable_conv2d(
        e, dk, pk, None, (1, 2), "same", 1))
    np.testing.assert_allclose(float(gx[idx]), expected, rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize("cfg,impl", [
    pytest.param(_TRANSFORM_CASES[i % 2], impl, id=f"cfg{i % 2}-{impl}",
                 # "lax"'s derivatives are JAX's, "auto" runs one of the
                 # others: the full profile.
                 marks=(pytest.mark.full("JAX's own derivatives")
                        if impl in ("lax", "auto") else ()))
    for i, impl in enumerate(_NAMED_IMPLS + ["auto"])])
def test_check_grads_float64(cfg, impl):
  rng = _rng("grads", str(cfg))
  x, dk, pk, b = _make(rng, n=1, h=5, w=6, c=2, kh=cfg["kh"], kw=cfg["kw"],
                       m=cfg["m"], f=2, fmt=cfg["fmt"])
  kw = dict(strides=cfg["strides"], padding=cfg["padding"],
            dilation_rate=cfg["dilation"], data_format=cfg["fmt"],
            implementation=impl)
  with jax.enable_x64(True):
    args = tuple(jnp.asarray(a, jnp.float64) for a in (x, dk, pk, b))

    def sep(x, dk, pk, b):
      return sepconv_jax.separable_conv2d(x, dk, pk, b, **kw)

    def dw(x, dk):
      return sepconv_jax.depthwise_conv2d(x, dk, **kw)

    y = sep(*args)
    assert y.dtype == jnp.float64  # compute dtype follows the operands
    # float64 result against the float64 reference: tight tolerance.
    np.testing.assert_allclose(
        np.asarray(y), ref.separable_conv2d(x, dk, pk, b, cfg["strides"],
                                            cfg["padding"], cfg["dilation"],
                                            cfg["fmt"]),
        rtol=1e-10, atol=1e-10)
    check_grads(sep, args, order=1, modes=("fwd", "rev"))
    check_grads(dw, args[:2], order=1, modes=("fwd", "rev"))


def test_grad_of_linear_op_matches_reference_f32():
  # d/d pointwise_kernel of sum(g * y) = sum over positions of depthwise(x)
  # outer g; d/d bias = sum of g.  Both from the float64 reference.
  rng = _rng("grad-f32")
  x, dk, pk, b = _make(rng, h=6, w=6, kh=3, kw=3, m=2, f=3)
  dw_ref = ref.depthwise_conv2d(x, dk, 2, "same", 1)
  g = rng.standard_normal(dw_ref.shape[:3] + (3,)).astype(np.float32)

  def loss(pk, b):
    y = sepconv_jax.separable_conv2d(x, dk, pk, b, strides=2, padding="same")
    return jnp.sum(y * g)

  gpk, gb = jax.grad(loss, argnums=(0, 1))(pk, b)
  assert_close(gpk, np.einsum("nhwk,nhwf->kf", dw_ref, g)[None, None])
  assert_close(gb, g.sum(axis=(0, 1, 2)))


# --------------------------------------------------------------------------
# Ranks, dtypes.
# --------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", [CL, CF])
@pytest.mark.parametrize("impl", IMPLS)
def test_rank3_unbatched(fmt, impl):
  rng = _rng("rank3", fmt)
  x, dk, pk, b = _make(rng, leading=(), h=7, w=5, kh=3, kw=2, m=2, fmt=fmt)
  assert x.ndim == 3
  out = _jit(sepconv_jax.separable_conv2d, padding="same", strides=2,
             data_format=fmt, implementation=impl)(x, dk, pk, b)
  assert out.ndim == 3
  assert_close(out, ref.separable_conv2d(x[None], dk, pk, b, 2, "same", 1,
                                         fmt)[0])
  out_dw = _jit(sepconv_jax.depthwise_conv2d, dilation_rate=2,
                data_format=fmt, implementation=impl)(x, dk)
  assert_close(out_dw, ref.depthwise_conv2d(x[None], dk, 1, "valid", 2,
                                            fmt)[0])


@pytest.mark.parametrize("fmt", [CL, CF])
@pytest.mark.parametrize("leading", [(2, 3), (2, 1, 3)], ids=str)
def test_extra_leading_batch_dims(leading, fmt):
  rng = _rng("lead", leading, fmt)
  x, dk, pk, b = _make(rng, leading=leading, h=5, w=6, kh=2, kw=3, m=2,
                       fmt=fmt)
  out = _jit(sepconv_jax.separable_conv2d, padding="same",
             data_format=fmt)(x, dk, pk, b)
  flat = x.reshape((-1,) + x.shape[len(leading):])
  expected = ref.separable_conv2d(flat, dk, pk, b, 1, "same", 1, fmt)
  expected = expected.reshape(leading + expected.shape[1:])
  assert out.shape[:len(leading)] == leading
  assert_close(out, expected)
  out_dw = _jit(sepconv_jax.depthwise_conv2d, strides=(2, 1),
                data_format=fmt)(x, dk)
  exp_dw = ref.depthwise_conv2d(flat, dk, (2, 1), "valid", 1, fmt)
  assert_close(out_dw, exp_dw.reshape(leading + exp_dw.shape[1:]))


@pytest.mark.parametrize("dtype", [np.int32, np.int8, np.uint8, np.bool_],
                         ids=lambda d: np.dtype(d).name)
def test_integer_and_bool_inputs_are_cast(dtype):
  rng = _rng("int", np.dtype(dtype).name)
  _, dk, pk, b = _make(rng, h=6, w=6, kh=3, kw=3, m=2)
  if dtype is np.bool_:
    x = rng.integers(0, 2, (2, 6, 6, 3)).astype(np.bool_)
  elif dtype is np.uint8:
    x = rng.integers(0, 6, (2, 6, 6, 3)).astype(dtype)
  else:
    x = rng.integers(-3, 4, (2, 6, 6, 3)).astype(dtype)
  out = _jit(sepconv_jax.separable_conv2d, padding="same")(x, dk, pk, b)
  assert out.dtype == jnp.float32
  assert_close(out, ref.separable_conv2d(x.astype(np.float64), dk, pk, b, 1,
                                         "same", 1))
  out_dw = _jit(sepconv_jax.depthwise_conv2d, strides=2)(x, dk)
  assert out_dw.dtype == jnp.float32
  assert_close(out_dw, ref.depthwise_conv2d(x.astype(np.float64), dk, 2,
                                            "valid", 1))


def test_bf16_inputs_with_f32_kernels_compute_in_f32():
  # Compute dtype = result_type(bf16, f32) = f32: the only error is the
  # (exact) bf16 rounding of the inputs, which the reference sees too.
  rng = _rng("bf16-mixed")
  x, dk, pk, b = _make(rng, h=7, w=7, kh=3, kw=3, m=2)
  xb = jnp.asarray(x, jnp.bfloat16)
  out = sepconv_jax.separable_conv2d(xb, dk, pk, b, padding="same")
  assert out.dtype == jnp.float32
  x_rounded = np.asarray(xb.astype(jnp.float32))
  assert_close(out, ref.separable_conv2d(x_rounded, dk, pk, b, 1, "same", 1))


def test_bf16_everything():
  # All operands bf16 -> bf16 result. bf16 keeps 8 significant bits
  # (relative rounding 2**-9 ~ 0.2%); with a rounded depthwise intermediate
  # and a rounded output, we allow atol = 2e-2 * max|ref| and rtol = 2e-2
  # against the float64 reference on the same (bf16-rounded) operands.
  rng = _rng("bf16")
  x, dk, pk, b = _make(rng, h=7, w=6, kh=3, kw=2, m=2, f=3)
  ops = [jnp.asarray(a, jnp.bfloat16) for a in (x, dk, pk, b)]
  rounded = [np.asarray(a.astype(jnp.float32)) for a in ops]
  out = sepconv_jax.separable_conv2d(*ops, strides=2, padding="same")
  assert out.dtype == jnp.bfloat16
  expected = ref.separable_conv2d(*rounded, 2, "same", 1)
  scale = float(np.abs(expected).max())
  np.testing.assert_allclose(np.asarray(out.astype(jnp.float32)), expected,
                             rtol=2e-2, atol=2e-2 * scale)
  out_dw = sepconv_jax.depthwise_conv2d(ops[0], ops[1], padding="same")
  assert out_dw.dtype == jnp.bfloat16
  exp_dw = ref.depthwise_conv2d(rounded[0], rounded[1], 1, "same", 1)
  np.testing.assert_allclose(np.asarray(out_dw.astype(jnp.float32)), exp_dw,
                             rtol=2e-2,
                             atol=2e-2 * float(np.abs(exp_dw).max()))


# --------------------------------------------------------------------------
# data_format=None reads keras.json.
# --------------------------------------------------------------------------

def test_data_format_none_reads_keras_json(monkeypatch, tmp_path):
  (tmp_path / "keras.json").write_text(
      json.dumps({"image_data_format": "channels_first"}))
  monkeypatch.setenv("KERAS_HOME", str(tmp_path))
  rng = _rng("keras-json")
  # NCHW with C=3; read as NHWC it would have 5 "channels" and not fit dk.
  x, dk, pk, b = _make(rng, h=4, w=5, c=3, kh=2, kw=2, m=2, fmt=CF)
  out = sepconv_jax.separable_conv2d(x, dk, pk, b)  # data_format=None
  assert_close(out, ref.separable_conv2d(x, dk, pk, b, 1, "valid", 1, CF))
  out_dw = sepconv_jax.depthwise_conv2d(x, dk, padding="same")
  assert_close(out_dw, ref.depthwise_conv2d(x, dk, 1, "same", 1, CF))


def test_data_format_none_without_keras_json_is_channels_last(monkeypatch,
                                                             tmp_path):
  monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # empty: no keras.json
  rng = _rng("no-keras-json")
  # NHWC with C=3; read as NCHW it would have 5 "channels" and not fit dk.
  x, dk, pk, b = _make(rng, h=5, w=4, c=3, kh=2, kw=2, m=1, fmt=CL)
  assert x.shape == (2, 5, 4, 3)
  out = sepconv_jax.separable_conv2d(x, dk, pk, b, padding="same")
  assert_close(out, ref.separable_conv2d(x, dk, pk, b, 1, "same", 1, CL))


def test_data_format_none_channels_last_in_keras_json(monkeypatch, tmp_path):
  (tmp_path / "keras.json").write_text(
      json.dumps({"image_data_format": "channels_last", "backend": "jax"}))
  monkeypatch.setenv("KERAS_HOME", str(tmp_path))
  x, dk, pk, b = _make(_rng("keras-json-cl"), h=3, w=6, c=2, kh=2, kw=2)
  out = sepconv_jax.separable_conv2d(x, dk, pk, b)
  assert_close(out, ref.separable_conv2d(x, dk, pk, b, 1, "valid", 1, CL))


# --------------------------------------------------------------------------
# The rank-generic functions: the rank comes from the depthwise kernel.
# --------------------------------------------------------------------------
@pytest.mark.parametrize("rank,padding", [(1, "causal"), (1, "same"),
                                          (2, "valid"), (3, "same")])
@pytest.mark.parametrize("impl", IMPLS)
def test_rank_generic_functions_match_the_nd_reference(rank, padding, impl):
  rng = _rng("generic", rank, padding, impl)
  spatial = {1: (11,), 2: (7, 6), 3: (5, 6, 4)}[rank]
  window = {1: (3,), 2: (3, 2), 3: (2, 3, 2)}[rank]
  x = rng.standard_normal((2, *spatial, 3)).astype(np.float32)
  dk = rng.standard_normal((*window, 3, 2)).astype(np.float32)
  pk = rng.standard_normal((*(1,) * rank, 6, 4)).astype(np.float32)
  b = rng.standard_normal((4,)).astype(np.float32)
  db = rng.standard_normal((6,)).astype(np.float32)
  strides = (1,) * rank if padding == "causal" else (2,) + (1,) * (rank - 1)
  kw = dict(strides=strides, padding=padding, implementation=impl)
  y = _jit(sepconv_jax.separable_conv, **kw)(x, dk, pk, b)
  d = _jit(sepconv_jax.depthwise_conv, **kw)(x, dk, db)
  want_d = ref_nd.depthwise(x, dk, strides, padding, (1,) * rank)
  want = np.einsum("...k,kf->...f", want_d, pk.reshape(6, 4)) + b
  ref.assert_close(y, want, rtol=1e-5, atol=1e-5)
  ref.assert_close(d, want_d + db, rtol=1e-5, atol=1e-5)
  if rank == 2:  # the same as the 2-D functions
    np.testing.assert_array_equal(
        y, _jit(sepconv_jax.separable_conv2d, **kw)(x, dk, pk, b))
    np.testing.assert_array_equal(
        d, _jit(sepconv_jax.depthwise_conv2d, **kw)(x, dk, db))


@pytest.mark.parametrize("shape", [(3, 3), (1, 1, 2, 3, 3, 1)], ids=str)
def test_rank_generic_functions_reject_kernels_of_no_rank(shape):
  x = np.ones((1, 5, 5, 3), np.float32)
  for fn in (sepconv_jax.depthwise_conv,
             functools.partial(sepconv_jax.separable_conv,
                               pointwise_kernel=np.ones((1, 1, 3, 2)))):
    with pytest.raises(ValueError, match=r"`depthwise_kernel` \(shape="
                       + re.escape(str(shape)) + r"\) has rank \d; it must"
                       r" be \(\*kernel_size, channels, depth_multiplier\)"):
      fn(x, np.ones(shape, np.float32))
