"""Which code ran: the Pallas kernels, or a documented fallback, never a
silent one.

A `"pallas"` call that quietly ran the "lax" formulation would match "lax"
and the float64 reference to the last bit, so a comparison alone cannot
notice it. These tests record the kernels that run (`kernel_calls`, in
`conftest.py`, wraps `forward`, `input_grad` and `param_grads` of
`_pallas_gpu` and `_pallas_tpu`, which every lowering of the kernels
calls) and assert them:

* the forward pass runs the forward kernel, and the VJP the input-gradient
  and parameter-gradient kernels, for every kind of configuration of the
  default grid ("valid" and "same", stride 2, 2-D dilation, multiplier 3,
  channels_first, 1-D, bias or none, bfloat16), each checked against the
  float64 NumPy reference (outputs) and the adjoint identity with it
  (gradients);
* the GPU (Triton) form and the TPU (Mosaic) form of the kernels, each
  interpreted directly, against the float64 reference and its VJP;
* the documented fallbacks run "lax" exactly where `_pallas`'s docstring
  says (forward mode, vmap of the kernels, second order), and nowhere else.

Tolerances: the suite runs at "highest" (exact float32); a float32 sum of
``n`` products is within ``n * 2**-23`` of the sum of its absolute terms
(`tolerances.separable_bound`), bfloat16 within ``n * 2**-7``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import sepconv_jax
from sepconv_jax import _pallas
from sepconv_jax import _pallas_layout

try:
  from tests import reference as ref
  from tests import reference_nd as ref_nd
  from tests import tolerances
except ImportError:  # tests/ itself on sys.path
  import reference as ref
  import reference_nd as ref_nd
  import tolerances

KERNELS = ("forward", "input_grad", "param_grads")  # see `kernel_calls`


# (spatial, window, strides, dilation, padding, M, format, bias, dtype):
# together they meet every kind the issue names, in small shapes.
CL, CF = "channels_last", "channels_first"
_GRID = [
    ((7, 8), (3, 3), 1, 1, "valid", 1, CL, True, "float32"),
    ((9, 7), (3, 2), 2, 1, "same", 3, CF, False, "float32"),
    ((8, 9), (3, 3), 1, (2, 2), "same", 2, CL, True, "float32"),
    ((10,), (3,), 2, 1, "valid", 2, CF, True, "float32"),
    ((9, 8), (2, 3), (2, 1), 1, "same", 1, CL, True, "bfloat16"),
]


def _id(case):
  spatial, window, s, d, padding, m, fmt, bias, dtype = case
  return (f"{len(spatial)}d-k{'x'.join(map(str, window))}-s{s}-d{d}-{padding}"
          f"-m{m}-{fmt[9:]}{'-bias' if bias else ''}-{dtype}")


def _operands(case, seed=0):
  spatial, window, _, _, _, m, fmt, bias, dtype = case
  rng = np.random.default_rng(seed)
  c, f, rank = 3, 4, len(spatial)
  x = rng.standard_normal((2, *spatial, c) if fmt == CL else (2, c, *spatial))
  dk = rng.standard_normal((*window, c, m)) / math.sqrt(math.prod(window))
  pk = rng.standard_normal((*(1,) * rank, c * m, f)) / math.sqrt(c * m)
  b = rng.standard_normal((f,)) if bias else None
  cast = lambda a: None if a is None else jnp.asarray(a, dtype)
  return tuple(map(cast, (x, dk, pk, b)))


def _bound(case, magnitude):
  _, window, _, _, _, m, _, _, dtype = case
  terms = math.prod(window) + 3 * m + 2
  if dtype == "bfloat16":
    return 2 * terms * 2.0**-7 * magnitude
  return tolerances.separable_bound(math.prod(window), 3 * m,
                                    "highest") * magnitude


@pytest.mark.parametrize("case", _GRID, ids=_id)
def test_the_kernels_run_and_match_float64(case, kernel_calls):
  spatial, _, strides, dilation, padding, _, fmt, _, dtype = case
  rank = len(spatial)
  x, dk, pk, b = _operands(case)
  kw = dict(strides=strides, dilation_rate=dilation, padding=padding,
            data_format=fmt, implementation="pallas")
  sep = functools.partial(sepconv_jax.separable_conv, **kw)

  y = jax.jit(sep)(x, dk, pk, b)
  assert kernel_calls == ["forward"], kernel_calls
  assert y.dtype == jnp.dtype(dtype)
  as64 = lambda a: None if a is None else np.asarray(a, np.float64)
  args = dict(strides=ref.pair(strides)[:rank] if rank == 2 else (strides,),
              padding=padding,
              dilation=ref.pair(dilation)[:rank] if rank == 2 else (dilation,),
              channels_last=fmt == CL)
  want = ref_nd.separable(as64(x), as64(dk), as64(pk), as64(b), **args)
  mag = ref_nd.separable(*(None if a is None else np.abs(as64(a))
                           for a in (x, dk, pk, b)), **args)
  tolerances.assert_within(y, want, mag, _bound(case, 1.0), "output")

  # The VJP: the backward kernels, and the adjoint identity with the
  # reference (y is linear in x, dk and pk, each alone).
  del kernel_calls[:]
  g = np.random.default_rng(1).standard_normal(y.shape)
  def step(*a):  # the training step: y and the VJP
    y, pullback = jax.vjp(sep, *a)
    return y, pullback(jnp.asarray(g, y.dtype))

  _, grads = jax.jit(step)(x, dk, pk, b)
  assert sorted(set(kernel_calls)) == sorted(KERNELS), kernel_calls
  # The gradient sums the output's terms once more: over every output.
  bound = _bound(case, 1.0) + 2 * g.size * (
      2.0**-7 if dtype == "bfloat16" else 2.0**-23)
  g_used = np.asarray(jnp.asarray(g, y.dtype), np.float64)  # as rounded
  ref_nd.assert_adjoint(
      grads[:3], g_used, lambda *a: ref_nd.separable(*a, None, **args),
      (as64(x), as64(dk), as64(pk)), bound, seed=2)
  if b is not None:
    axis = -1 if fmt == CL else 1
    np.testing.assert_allclose(
        np.asarray(grads[3], np.float64),
        np.moveaxis(g, axis, -1).reshape(-1, g.shape[axis]).sum(0),
        rtol=2 * g.size * (2.0**-7 if dtype == "bfloat16" else 2.0**-23))


def test_the_depthwise_step_alone_runs_the_kernels(kernel_calls):
  x, dk, _, _ = _operands(_GRID[1])
  b = jnp.asarray(np.random.default_rng(3).standard_normal(9), jnp.float32)
  dw = functools.partial(sepconv_jax.depthwise_conv, strides=2,
                         padding="same", data_format=CF,
                         implementation="pallas")
  y, pull = jax.vjp(jax.jit(dw), x, dk, b)
  pull(jnp.ones_like(y))
  assert sorted(set(kernel_calls)) == sorted(KERNELS), kernel_calls
  want = ref_nd.depthwise(np.asarray(x, np.float64), np.asarray(dk),
                          (2, 2), "same", (1, 1), channels_last=False)
  np.testing.assert_allclose(y, want + np.asarray(b)[:, None, None],
                             rtol=2e-6, atol=2e-6 * np.max(np.abs(want)))


# ---------------------------------------------------------------------------
# The documented fallbacks, exactly there.


def _small():
  return _operands(((6, 7), (3, 3), 1, 1, "same", 2, CL, True, "float32"))


def _layer(x, dk, pk, b):
  return sepconv_jax.separable_conv(x, dk, pk, b, padding="same",
                                    implementation="pallas")


def test_forward_mode_runs_lax_for_the_tangent_only(kernel_calls):
  """jax.jvp: the primal by the forward kernel, the tangent by "lax"."""
  args = _small()
  jax.jit(lambda a, t: jax.jvp(_layer, a, t))(args, args)
  assert kernel_calls == ["forward"], kernel_calls


def test_vmap_of_the_input_runs_the_kernels_vmap_of_kernels_does_not(
    kernel_calls):
  x, dk, pk, b = _small()
  jax.jit(jax.vmap(_layer, in_axes=(0, None, None, None)))(
      jnp.stack([x, x]), dk, pk, b)
  assert kernel_calls == ["forward"], kernel_calls
  del kernel_calls[:]
  # Per-example kernels: the documented "lax" formulation.
  jax.jit(jax.vmap(_layer, in_axes=(None, 0, None, None)))(
      x, jnp.stack([dk, dk]), pk, b)
  assert kernel_calls == [], kernel_calls


def test_second_order_runs_the_kernels_for_the_first_order(kernel_calls):
  x, dk, pk, b = _small()
  loss = lambda dk: jnp.sum(jnp.tanh(_layer(x, dk, pk, b)))
  jax.jit(jax.grad(lambda dk: jnp.sum(jax.grad(loss)(dk) ** 2)))(dk)
  assert {"forward", "input_grad", "param_grads"} & set(kernel_calls), (
      kernel_calls)
  assert "forward" in kernel_calls


def test_three_d_is_refused_not_run_by_lax():
  x = jnp.ones((1, 4, 4, 4, 2))
  with pytest.raises(ValueError, match="pallas"):
    sepconv_jax.separable_conv(x, jnp.ones((2, 2, 2, 2, 1)),
                               jnp.ones((1, 1, 1, 2, 3)),
                               implementation="pallas")


# ---------------------------------------------------------------------------
# Both forms of the kernels, interpreted directly, against float64.


_FORMS = [  # (strides, dilation, pads, M, bias), 2-D, channels-last
    ((1, 1), (1, 1), ((1, 1), (1, 1)), 1, True),
    ((2, 2), (1, 1), ((0, 1), (1, 0)), 3, False),
    ((1, 1), (2, 1), ((0, 0), (0, 0)), 2, True),
]


@pytest.mark.parametrize("target", ["gpu", "tpu"])
@pytest.mark.parametrize("strides, dilation, pads, m, bias", _FORMS)
def test_each_form_interpreted_matches_float64(target, strides, dilation,
                                               pads, m, bias):
  """`_forward_kernels` and `_backward_kernels` of the GPU (Triton) and the
  TPU (Mosaic) form, in Pallas's interpreter, against the reference and its
  VJP; with a pointwise kernel, and for the depthwise step alone (the
  reference's pointwise kernel the identity)."""
  rng = np.random.default_rng(4)
  c, f = 4, 5
  x = rng.standard_normal((2, 9, 10, c)).astype(np.float32)
  dk = (rng.standard_normal((3, 3, c, m)) / 3).astype(np.float32)
  pk = (rng.standard_normal((c * m, f)) / 2).astype(np.float32)
  cfg = _pallas_layout.Config(strides, dilation, pads,
                              (lax.Precision.HIGHEST, lax.Precision.HIGHEST))
  form = dict(cfg=cfg, target=target, interpret=True)
  for has_pk in (True, False):
    channels = f if has_pk else c * m
    pk64 = pk if has_pk else np.eye(c * m)
    b = rng.standard_normal(channels).astype(np.float32) if bias else None
    operands = [x, dk] + ([pk] if has_pk else []) + ([b] if bias else [])
    y = jax.jit(functools.partial(_pallas._forward_kernels, has_pk=has_pk,
                                  has_b=bias, **form))(*operands)
    args = dict(strides=strides, padding=pads, dilation=dilation)
    want = ref_nd.separable(x, dk, pk64.reshape(1, 1, *pk64.shape), b, **args)
    mag = ref_nd.separable(np.abs(x), np.abs(dk),
                           np.abs(pk64).reshape(1, 1, *pk64.shape),
                           None if b is None else np.abs(b), **args)
    bound = tolerances.separable_bound(9, c * m, "highest")
    tolerances.assert_within(y, want, mag, bound,
                             f"{target} forward (pointwise={has_pk})")
    ct = rng.standard_normal(want.shape).astype(np.float32)
    need = (True,) * len(operands)
    grads = jax.jit(functools.partial(
        _pallas._backward_kernels, has_pk=has_pk, has_b=bias, need=need,
        **form))(*operands[:2 + has_pk], ct)
    wants = ref.separable_conv2d_vjp(x, dk, pk64.reshape(1, 1, *pk64.shape),
                                     ct, strides=strides, padding=pads,
                                     dilation_rate=dilation)
    mags = ref.separable_conv2d_vjp(np.abs(x), np.abs(dk),
                                    np.abs(pk64).reshape(1, 1, *pk64.shape),
                                    np.abs(ct), strides=strides, padding=pads,
                                    dilation_rate=dilation)
    names = ["inputs", "depthwise"] + (["pointwise"] if has_pk else []) + (
        ["bias"] if bias else [])
    picked = [0, 1] + ([2] if has_pk else []) + ([3] if bias else [])
    # A gradient sums over every output position once more.
    grad_bound = bound + 2 * ct.size * 2.0**-24
    for got, name, i in zip(grads, names, picked, strict=True):
      w, mg = wants[i], mags[i]
      if i == 2:
        w, mg = w[0, 0], mg[0, 0]
      tolerances.assert_within(got, w, mg, grad_bound,
                               f"{target} d{name} (pointwise={has_pk})")
