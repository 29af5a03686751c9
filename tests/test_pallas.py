"""The fused Pallas kernels: ``implementation="pallas"``.

On CPU the kernels run in Pallas's interpreter (the same kernel code the
GPU compiles), so every test here checks the kernels' arithmetic; the
exports check what a GPU and a TPU would compile:

* outputs and the gradients of the input, both kernels and the bias
  against the float64 reference and "lax", over the core grid (strides,
  dilations, paddings and padding modes, multipliers, formats, odd sizes,
  bias or none, 1-D), for the separable layer and the depthwise step;
* the TPU form of the kernels, interpreted, on the same kind of grid;
* every transform: jit, vmap (input batches run the kernels; per-example
  gradients), grad, jvp, second order;
* bfloat16 and float16 (float32 accumulation), and ``precision=`` on every
  dot of every kernel;
* `jax.export` for CUDA (Triton) and TPU (Mosaic) of the forward pass and a
  training step at the canonical shapes: the module must call the kernels
  and hold no convolution, so a silent fallback to XLA fails.

Shapes are small: every compile of an interpreted kernel takes seconds.
Tolerances are the exact-float32 ones (the suite runs at "highest").
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

import sepconv_jax
from sepconv_jax import _pallas
from sepconv_jax import _pallas_layout

try:
  from tests import lowered
  from tests import reference as ref
  from tests import reference_nd as ref_nd
  from tests import tolerances
except ImportError:  # tests/ itself on sys.path
  import lowered
  import reference as ref
  import reference_nd as ref_nd
  import tolerances

CL, CF = "channels_last", "channels_first"


def _arrays(seed, spatial, c, window, m, f, fmt=CL, dtype=np.float32):
  rng = np.random.default_rng(seed)
  rank = len(spatial)
  x = rng.standard_normal((2, *spatial, c) if fmt == CL else (2, c, *spatial))
  dk = rng.standard_normal((*window, c, m)) / np.sqrt(np.prod(window))
  pk = rng.standard_normal((*(1,) * rank, c * m, f)) / np.sqrt(c * m)
  b = rng.standard_normal((f,))
  db = rng.standard_normal((c * m,))
  return tuple(np.asarray(a, dtype) for a in (x, dk, pk, b, db))


def _close(got, want, what, rtol=2e-5):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, (what, got.shape, want.shape)
  scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale,
                             err_msg=what)


# (spatial, window, strides, dilation, padding, padding_mode, M, format,
#  bias): strides and dilation never both above 1.
_MORE = pytest.mark.full("more of the grid")
_GRID = [  # (stride 1, "same", M 1, channels_last: test_transforms_match_lax)
    ((9, 11), (3, 3), 2, 1, "same", "zeros", 2, CF, True),
    pytest.param(((10, 9), (3, 2), (1, 2), 1, "valid", "zeros", 3, CL, False),
                 marks=_MORE),
    pytest.param(((8, 7), (3, 3), 1, 2, "same", "zeros", 1, CF, True),
                 marks=_MORE),
    ((7, 9), (2, 3), 2, 1, ((2, 0), (1, 3)), "reflect", 1, CL, True),
    ((11,), (3,), 1, 2, "causal", "zeros", 2, CL, True),
    pytest.param(((5, 6), (5, 4), 3, 1, ((4, 5), (0, 2)), "zeros", 1, CF,
                  False), marks=_MORE),
]


def _id(case):
  spatial, window, s, d, padding, mode, m, fmt, bias = case
  return (f"{'x'.join(map(str, spatial))}-k{'x'.join(map(str, window))}"
          f"-s{s}-d{d}-{padding}-{mode}-m{m}-{fmt[9:]}"
          f"{'-bias' if bias else ''}")


@pytest.mark.parametrize("case", _GRID, ids=_id)
def test_outputs_and_gradients_match_float64(case, kernel_calls):
  spatial, window, strides, dilation, padding, mode, m, fmt, bias = case
  rank = len(spatial)
  x, dk, pk, b, db = _arrays(len(spatial) * 7 + m, spatial, 3, window, m, 4,
                             fmt)
  if not bias:
    b = db = None
  kw = dict(strides=strides, dilation_rate=dilation, padding=padding,
            padding_mode=mode, data_format=fmt)
  sep = lambda *a: sepconv_jax.separable_conv(*a, **kw,
                                              implementation="pallas")
  dw = lambda *a: sepconv_jax.depthwise_conv(*a, **kw,
                                             implementation="pallas")

  @jax.jit
  def run(x, dk, pk, b, db, ct, ct_dw):
    y, pull = jax.vjp(sep, x, dk, pk, b)
    d, pull_dw = jax.vjp(dw, x, dk, db)
    return y, pull(ct), d, pull_dw(ct_dw)

  y_shape = jax.eval_shape(sep, x, dk, pk, b).shape
  d_shape = jax.eval_shape(dw, x, dk, db).shape
  rng = np.random.default_rng(1)
  ct = rng.standard_normal(y_shape).astype(np.float32)
  ct_dw = rng.standard_normal(d_shape).astype(np.float32)
  got = run(x, dk, pk, b, db, ct, ct_dw)
  # The kernels ran (a silent fallback to "lax" would match "lax" exactly).
  assert sorted(set(kernel_calls)) == ["forward", "input_grad",
                                       "param_grads"], kernel_calls

  # The float64 reference, from the definition.
  last = fmt == CL
  s_ = (strides,) * rank if isinstance(strides, int) else strides
  d_ = (dilation,) * rank if isinstance(dilation, int) else dilation
  ref_y = ref_nd.separable(x, dk, pk, b, s_, padding, d_, last, mode)
  ref_d = ref_nd.depthwise(x, dk, s_, padding, d_, last, mode)
  if db is not None:
    ref_d = ref_d + (db if last else db.reshape((-1,) + (1,) * rank))
  _close(got[0], ref_y, "output vs float64")
  _close(got[2], ref_d, "depthwise output vs float64")
  # The gradients, by the adjoint identity with the reference: float32
  # sums of at most the outputs' count plus the layer's terms.
  bound = tolerances.contraction_bound(
      ct.size + np.prod(window) + 3 * m + 2, "highest", chained=2)
  ref_args = (s_, padding, d_, last, mode)
  ref_nd.assert_adjoint(
      got[1][:3], ct, lambda *a: ref_nd.separable(*a, None, *ref_args),
      (x, dk, pk), bound)
  ref_nd.assert_adjoint(
      got[3][:2], ct_dw, lambda *a: ref_nd.depthwise(*a, *ref_args),
      (x, dk), bound)
  axis = -1 if last else 1
  for grad, g in ((got[1][3], ct), (got[3][2], ct_dw)):
    if grad is not None:  # the bias's: the cotangent summed per channel
      per_channel = np.moveaxis(g, axis, -1).reshape(-1, g.shape[axis])
      tolerances.assert_within(
          grad, per_channel.sum(0), np.abs(per_channel).sum(0),
          tolerances.contraction_bound(len(per_channel), "highest"),
          "bias gradient")


@pytest.mark.parametrize("strides,m", [((1, 1), 1), ((2, 2), 2)])
def test_tpu_form_with_channel_and_filter_tiles_matches_float64(strides, m,
                                                            monkeypatch):
  """The Mosaic form when the VMEM budget splits C into 128-lane tiles (C
  padded from 200 to 256) and F into 256-lane blocks and chunks (F padded
  from 520 to 768): the channel blocks' offsets, the forward pass's and
  the input gradient's chunk loops, and the partial sums per block.
  Against the float64 reference and its VJP, within the float32 forward
  error bound of the sums (`tolerances.separable_bound`)."""
  from sepconv_jax import _pallas_policy
  monkeypatch.setattr(_pallas_policy, "TPU_VMEM_BUDGET", 1)
  cfg = _pallas_layout.Config(strides, (1, 1), ((1, 1), (1, 1)),
                              (lax.Precision.HIGHEST, lax.Precision.HIGHEST))
  g = _pallas_layout.geometry((7, 5, 6, 200), (3, 3, 200, m), 520, cfg,
                              kernel="param_grads")
  assert (g.tiles.channels, g.padded_channels) == (128, 256), g.tiles
  assert (g.tiles.filters, g.padded_filters) == (256, 768), g.tiles
  _check_form("tpu", cfg, _arrays(7, (5, 6), 200, (3, 3), m, 520))


@pytest.mark.parametrize("strides,dilation,m", [((1, 1), (1, 1), 1),
                                                ((2, 2), (1, 1), 2),
                                                ((1, 1), (2, 2), 1)])
def test_gpu_form_with_partial_chunks_blocks_and_groups_matches_float64(
    strides, dilation, m, monkeypatch):
  """The Triton form with tiles of 16 positions, chunks of 16 channels
  and blocks of 16 filters, in 3 groups: C = 40 is 3 chunks (the last
  masked at 8), F = 36 is 3 blocks (the last masked at 4), the 70 or 18
  output positions end in a partial tile, and a group has fewer tiles
  than the others. Against the float64 reference and its VJP."""
  from sepconv_jax import _pallas_policy
  small = _pallas_policy.GpuTiles(pixels=16, channels=16, filters=16,
                                  groups=3, warps=4, stages=1)
  monkeypatch.setattr(_pallas_policy, "gpu_tiles", lambda *a, **k: small)
  cfg = _pallas_layout.Config(strides, dilation, ((1, 1), (2, 0)),
                              (lax.Precision.HIGHEST, lax.Precision.HIGHEST))
  _check_form("gpu", cfg, _arrays(8, (5, 7), 40, (3, 3), m, 36))


def _check_form(target, cfg, arrays):
  """One form's `_forward_kernels` and `_backward_kernels`, interpreted,
  with and without a pointwise kernel, against float64."""
  x, dk, pk, b, db = arrays
  strides, dilation = cfg.strides, cfg.dilation
  c, m = dk.shape[-2:]
  filters = pk.shape[-1]
  form = dict(cfg=cfg, target=target, interpret=True)
  pk2 = pk.reshape(-1, filters)
  for has_pk in (True, False):
    bias_ = b if has_pk else db
    operands = [x, dk] + ([pk2] if has_pk else []) + [bias_]
    y = jax.jit(functools.partial(_pallas._forward_kernels, has_pk=has_pk,
                                  has_b=True, **form))(*operands)
    # The float64 reference; the depthwise step alone is the reference
    # with the identity as its pointwise kernel.
    pk64 = (pk2 if has_pk else np.eye(c * m)).reshape(1, 1, -1,
                                                      filters if has_pk
                                                      else c * m)
    conv = dict(strides=strides, padding=cfg.pads, dilation=dilation)
    want = ref_nd.separable(x, dk, pk64, bias_, **conv)
    mag = ref_nd.separable(np.abs(x), np.abs(dk), np.abs(pk64),
                           np.abs(bias_), **conv)
    bound = tolerances.separable_bound(9, c * m, "highest")
    tolerances.assert_within(y, want, mag, bound,
                             f"{target} forward (pointwise={has_pk})")
    ct = np.random.default_rng(4).standard_normal(want.shape).astype(
        np.float32)
    need = (True,) * len(operands)
    grads = jax.jit(functools.partial(
        _pallas._backward_kernels, has_pk=has_pk, has_b=True, need=need,
        **form))(*operands[:2 + has_pk], ct)
    vjp = dict(strides=strides, padding=cfg.pads, dilation_rate=dilation)
    wants = ref.separable_conv2d_vjp(x, dk, pk64, ct, **vjp)
    mags = ref.separable_conv2d_vjp(np.abs(x), np.abs(dk), np.abs(pk64),
                                    np.abs(ct), **vjp)
    picked = [0, 1] + ([2] if has_pk else []) + [3]
    # A gradient sums once more over every output position.
    grad_bound = bound + 2 * ct.size * 2.0**-24
    for gr, i in zip(grads, picked, strict=True):
      w, mg = (wants[i][0, 0], mags[i][0, 0]) if i == 2 else (wants[i],
                                                              mags[i])
      tolerances.assert_within(gr, w, mg, grad_bound,
                               f"{target} gradient {i} (pointwise={has_pk})")


def test_policy_fits_every_target_limit():
  """The tiles of every kernel at the canonical shapes (batch 64) fit the
  smallest chip of each kind: Triton dots of at least 16 per side in
  power-of-2 blocks under the L4's shared memory budget; on TPU, channel
  tiles whole or multiples of 128 lanes, under v4's VMEM."""
  from sepconv_jax import _pallas_policy as policy
  for h, w, c, f, s in _CANONICAL:
    for itemsize in (4, 2):
      for kernel in policy.GPU_KERNELS:
        t = policy.gpu_tiles(kernel, channels=c, filters=f, multiplier=1,
                             taps=9, positions=64 * h * w // s // s,
                             itemsize=itemsize)
        for size in (t.pixels, t.channels, t.filters):
          assert size >= 16 and size & (size - 1) == 0, t
        assert t.stages in (1, 2) and t.warps in (4, 8), t
        assert t.stages * (t.pixels * t.channels + t.channels * t.filters
                           ) * itemsize <= policy.GPU_SHARED_BUDGET, t
        assert policy.GPU_SHARED_BUDGET <= 99 * 1024
      for kernel in policy.KERNELS:
        t = policy.tpu_tiles(kernel, out_hw=(-(-h // s), -(-w // s)),
                             channels=c, filters=f, itemsize=itemsize,
                             halo=(2, 2) if s == 1 else (1, 1), phases=s * s)
        assert t.channels == c or t.channels % 128 == 0, (c, t)
        assert t.filters == f or t.filters % 128 == 0, (f, t)
        assert 0 < t.vmem_limit <= 16 * 1024 * 1024, t
      # The TPU's layout-free forward kernel serves every canonical shape,
      # its filter blocks whole or multiples of 128 lanes dividing F.
      ho, wo = -(-h // s), -(-w // s)
      d = policy.direct_tiles(
          height=h, width=w, padded_width=max(w + 1, (wo - 1) * s + 3),
          out_hw=(ho, wo), channels=c, filters=f, itemsize=itemsize,
          taps=9, row_step=s, row_extent=2, strided=s > 1)
      assert d is not None and 1 <= d.rows <= ho, (h, w, c, f, d)
      assert d.filters == f or (d.filters % 128 == 0
                                and f % d.filters == 0), d


def test_reverse_mode_runs_the_kernels_and_forward_mode_runs_lax():
  x, dk, pk, b, _ = _arrays(2, (6, 5), 2, (3, 3), 1, 3)
  f = lambda *a: jnp.sum(sepconv_jax.separable_conv2d(
      *a, padding="same", implementation="pallas") ** 2)
  jaxpr = str(jax.make_jaxpr(jax.grad(f, argnums=(0, 1, 2, 3)))(
      x, dk, pk, b))
  assert "sepconv_pallas_forward" in jaxpr
  assert "sepconv_pallas_backward" in jaxpr
  assert "conv_general_dilated" not in jaxpr
  tangents = tuple(np.ones_like(a) for a in (x, dk, pk, b))
  jaxpr = str(jax.make_jaxpr(lambda p, t: jax.jvp(
      lambda *a: sepconv_jax.separable_conv2d(
          *a, padding="same", implementation="pallas"), p, t))(
              (x, dk, pk, b), tangents))
  assert "sepconv_pallas_linear" in jaxpr


def test_transforms_match_lax():
  x, dk, pk, b, _ = _arrays(4, (7, 6), 2, (3, 3), 2, 3)
  kw = dict(strides=(2, 1), padding="same")

  def f(impl):
    return lambda *a: sepconv_jax.separable_conv2d(*a, **kw,
                                                   implementation=impl)

  # eager == jit
  _close(f("pallas")(x, dk, pk, b), jax.jit(f("pallas"))(x, dk, pk, b),
         "eager vs jit", rtol=0)
  # jvp (forward mode)
  tangents = tuple(np.random.default_rng(7).standard_normal(a.shape).astype(
      np.float32) for a in (x, dk, pk, b))
  got = jax.jit(lambda *p: jax.jvp(f("pallas"), p, tangents))(x, dk, pk, b)
  want = jax.jit(lambda *p: jax.jvp(f("lax"), p, tangents))(x, dk, pk, b)
  # Tolerances (float32 at "highest" on both sides): first-order sums here
  # have at most 2 * 4 * 6 * 3 = 144 output terms plus the layer's 9 + 4;
  # `tolerances.contraction_bound(157, "highest", chained=2)` is 1.9e-5 of
  # the sums of absolute terms, and with the signs of sin and tanh mixed
  # the values are at most ~5x smaller than those sums: 1e-4. The second
  # order chains a third rounded contraction and the sign changes of tanh''
  # (values up to ~50x below their absolute sums): 1e-3.
  _close(got[1], want[1], "jvp", rtol=1e-4)

  # vmap over the input (the batch folds into the kernels' batch), and
  # per-example gradients (vmap of grad).
  vm = jax.jit(jax.vmap(f("pallas"), (0, None, None, None)))(
      x[:, None], dk, pk, b)
  _close(vm[:, 0], f("lax")(x, dk, pk, b), "vmap over inputs")

  def loss(impl):
    return lambda x, *w: jnp.sum(jnp.sin(f(impl)(x[None], *w)))

  per_example = lambda impl: jax.jit(jax.vmap(
      jax.grad(loss(impl), argnums=(0, 1, 2, 3)), (0, None, None, None)))
  for g, w in zip(per_example("pallas")(x, dk, pk, b),
                  per_example("lax")(x, dk, pk, b)):
    _close(g, w, "per-example gradients", rtol=1e-4)

  # Second order: reverse over reverse, and jax.hessian (forward over
  # reverse) of a small kernel.
  def tanh_loss(impl):
    return lambda dk: jnp.sum(jnp.tanh(f(impl)(x, dk, pk, b)))

  gg = lambda impl: jax.jit(jax.grad(
      lambda dk: jnp.sum(jax.grad(tanh_loss(impl))(dk) ** 2)))(dk)
  _close(gg("pallas"), gg("lax"), "grad of grad", rtol=1e-3)
  small = dk[:2, :2, :1, :1]
  h = lambda impl: jax.jit(jax.hessian(lambda k: jnp.sum(jnp.tanh(
      sepconv_jax.separable_conv2d(x[:, :, :, :1], k, pk[:, :, :1], b,
                                   implementation=impl)))))(small)
  _close(h("pallas"), h("lax"), "hessian", rtol=1e-3)


def test_low_precision_accumulates_in_float32(kernel_calls):
  """Within 2**-6 (bfloat16) or 2**-9 (float16) of the largest |output| of
  the float64 reference on the rounded inputs: the depthwise result is
  rounded once before the pointwise dot, the output once more. Gradients
  (bfloat16) within 4x that of "lax"'s."""
  f = lambda *a: sepconv_jax.separable_conv2d(
      *a, strides=2, padding="same", implementation="pallas")
  as64 = lambda a: np.asarray(jnp.asarray(a, jnp.float32), np.float64)
  for dtype, eps in ((jnp.bfloat16, 2.0**-6), (jnp.float16, 2.0**-9)):
    x, dk, pk, b, _ = (jnp.asarray(a, dtype) for a in
                       _arrays(6, (9, 9), 8, (3, 3), 2, 8))
    y = jax.jit(f)(x, dk, pk, b)
    assert y.dtype == dtype
    assert kernel_calls.pop() == "forward" and not kernel_calls
    want = ref_nd.separable(as64(x), as64(dk), as64(pk), as64(b), (2, 2),
                            "same", (1, 1))
    assert np.max(np.abs(as64(y) - want)) <= eps * np.max(np.abs(want))
  # bfloat16 gradients (x, dk, pk, b are float16 here: cast back).
  x, dk, pk, b = (a.astype(jnp.bfloat16) for a in (x, dk, pk, b))
  grads = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32)),
                           argnums=(0, 1, 2, 3)))(x, dk, pk, b)
  lax_grads = jax.jit(jax.grad(lambda *a: jnp.sum(
      sepconv_jax.separable_conv2d(*a, strides=2, padding="same",
                                   implementation="lax"
                                   ).astype(jnp.float32)),
      argnums=(0, 1, 2, 3)))(x, dk, pk, b)
  # (The loss is linear in y: its gradient needs no forward pass.)
  assert sorted(set(kernel_calls)) == ["input_grad", "param_grads"], (
      kernel_calls)
  for g, w in zip(grads, lax_grads):
    assert g.dtype == jnp.bfloat16
    assert np.max(np.abs(as64(g) - as64(w))) <= 4 * 2.0**-6 * np.max(
        np.abs(as64(w)))


def _kernel_dot_precisions(jaxpr):
  """The precision of every dot inside every pallas_call of `jaxpr`."""
  found = []

  def walk(jaxpr, inside):
    for eqn in jaxpr.eqns:
      if inside and eqn.primitive.name == "dot_general":
        found.append(eqn.params["precision"])
      for value in eqn.params.values():
        for sub in value if isinstance(value, (tuple, list)) else (value,):
          sub = getattr(sub, "jaxpr", sub)
          if hasattr(sub, "eqns"):
            walk(sub, inside or eqn.primitive.name == "pallas_call")
  walk(jaxpr.jaxpr, False)
  return found


@pytest.mark.parametrize("target", ["gpu", "tpu"])
def test_precision_reaches_every_kernel_dot(target):
  x, dk, pk, b, _ = _arrays(8, (6, 6), 3, (3, 3), 2, 4)
  pk2 = pk.reshape(6, 4)
  default = (None, (lax.Precision.DEFAULT,) * 2)
  for precision, expected in (("highest", ((lax.Precision.HIGHEST,) * 2,)),
                              (None, default)):
    with jax.default_matmul_precision("default"):
      cfg = _pallas_layout.Config((1, 1), (1, 1), ((1, 1), (1, 1)),
                                  _pallas._canonical_precision(precision))
      kw = dict(cfg=cfg, target=target, interpret=False, has_pk=True,
                has_b=True)
      forward = jax.make_jaxpr(functools.partial(_pallas._forward_kernels,
                                                 **kw))(x, dk, pk2, b)
      backward = jax.make_jaxpr(functools.partial(
          _pallas._backward_kernels, need=(True,) * 4, **kw))(
              x, dk, pk2, np.ones((2, 6, 6, 4), np.float32))
    for what, jaxpr in (("forward", forward), ("backward", backward)):
      found = _kernel_dot_precisions(jaxpr)
      assert found, (target, what)
      assert all(p in expected for p in found), (target, what, found)
  # And on CPU, interpreted: the lowered module's dots.
  text = lowered.lower(lambda *a: sepconv_jax.separable_conv2d(
      *a, precision="highest", implementation="pallas"), x, dk, pk, b)
  found = lowered.contractions(text)
  assert found and all(p == ("HIGHEST", "HIGHEST") for _, p in found)


_CANONICAL = [  # (H, W, C, F, stride), batch 2 here
    (112, 112, 32, 64, 1), (56, 56, 128, 128, 1), (28, 28, 256, 256, 1),
    (14, 14, 512, 512, 1), (7, 7, 1024, 1024, 1), (19, 19, 728, 728, 1),
    (112, 112, 64, 128, 2)]
_KERNEL_CALLS = {"cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}


# float32 at every canonical shape; bfloat16 (a dtype Mosaic and Triton
# lay out differently) at a stride-1 and the stride-2 shape.
_EXPORT_CASES = [pytest.param(shape, "float32", id=str(shape))
                 for shape in _CANONICAL] + [
                     pytest.param(_CANONICAL[i], "bfloat16",
                                  id=f"{_CANONICAL[i]}-bfloat16")
                     for i in (1, 6)]


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("shape,dtype", _EXPORT_CASES)
def test_export_calls_the_kernels_at_the_canonical_shapes(shape, dtype,
                                                          platform):
  h, w, c, f, s = shape
  x = jax.ShapeDtypeStruct((2, h, w, c), jnp.dtype(dtype))
  dk = jax.ShapeDtypeStruct((3, 3, c, 1), jnp.dtype(dtype))
  pk = jax.ShapeDtypeStruct((1, 1, c, f), jnp.dtype(dtype))
  sep = lambda *a: sepconv_jax.separable_conv2d(
      *a, strides=s, padding="same", implementation="pallas")
  step = jax.grad(lambda *a: jnp.sum(sep(*a).astype(jnp.float32) ** 2),
                  argnums=(0, 1, 2))
  for what, fn in (("forward", sep), ("training step", step)):
    text = lowered.lower(fn, x, dk, pk, platforms=(platform,))
    assert _KERNEL_CALLS[platform] in lowered.custom_calls(text), what
    assert dtype == "float32" or "xbf16>" in text, what  # the bf16 program
    # No fallback: XLA does no convolution, only layout work and the
    # reductions of the kernels' partial sums.
    assert "stablehlo.convolution" not in text, what
    calls = text.count(_KERNEL_CALLS[platform])
    # The training step: the forward pass, the input gradient and the
    # parameter gradients; on GPU also the backward GEMM and the parameter
    # gradients in two kernels (depthwise and pointwise). (TPU: the GEMM
    # is XLA's dot.)
    backward = {"cuda": 4, "tpu": 2}[platform]
    assert calls == (1 if what == "forward" else 1 + backward), (what, calls)
    if platform == "cuda":
      # No layout pass around the GPU kernels: padding is their masks,
      # strides their index arithmetic (reshapes are free).
      # And no XLA GEMM: the backward one is a kernel too.
      for op in ("stablehlo.pad", "stablehlo.transpose", "stablehlo.slice",
                 "stablehlo.gather", "stablehlo.dot_general"):
        assert op not in text, (what, op)


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_modules_export_with_the_kernels(platform):
  x = np.ones((2, 8, 8, 3), np.float32)
  layer = sepconv_jax.SeparableConv2D(4, 3, padding="same",
                                      implementation="pallas")
  variables = layer.init(jax.random.key(0), x)
  model = sepconv_jax.nnx.DepthwiseConv2D(3, 3, implementation="pallas",
                                          rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  for fn, args in ((layer.apply, (variables, x)),
                   (lambda s, x: nnx.merge(graphdef, s)(x), (state, x))):
    text = lowered.lower(fn, *args, platforms=(platform,))
    assert _KERNEL_CALLS[platform] in lowered.custom_calls(text)


def test_modules_match_lax(kernel_calls):
  x = np.random.default_rng(9).standard_normal((2, 7, 6, 3)).astype(
      np.float32)
  for impl_layer in (
      lambda impl: sepconv_jax.SeparableConv2D(4, 3, strides=2,
                                               padding="same",
                                               depth_multiplier=2,
                                               implementation=impl),
      lambda impl: sepconv_jax.DepthwiseConv2D(3, padding="same",
                                               implementation=impl)):
    layer = impl_layer("pallas")
    variables = layer.init(jax.random.key(0), x)
    _close(jax.jit(layer.apply)(variables, x),
           impl_layer("lax").apply(variables, x), "module")
    assert "forward" in kernel_calls, kernel_calls


def test_three_dimensions_are_refused_clearly():
  x = np.ones((1, 4, 4, 4, 2), np.float32)
  with pytest.raises(ValueError, match=r"`implementation` \(='pallas'\)"
                     r" supports 1-D and 2-D convolutions; this one is 3-D"):
    sepconv_jax.depthwise_conv(x, np.ones((2, 2, 2, 2, 1), np.float32),
                               implementation="pallas")


def test_three_dimensional_layers_refuse_pallas_at_construction():
  for make in (lambda: sepconv_jax.SeparableConv3D(4, 3,
                                                   implementation="pallas"),
               lambda: sepconv_jax.nnx.SeparableConv3D(
                   2, 4, 3, implementation="pallas", rngs=nnx.Rngs(0))):
    with pytest.raises(ValueError, match="supports 1-D and 2-D"):
      make()


_DIRECT = [  # (x shape, kernel, strides, dilation, pads, F, tiles or None)
    ((2, 8, 9, 24), (3, 3), (2, 2), (1, 1), ((0, 1), (1, 1)), 16, None),
    ((2, 9, 11, 8), (3, 3), (1, 1), (2, 2), ((2, 2), (2, 2)), 8, None),
    ((2, 1, 13, 8), (1, 3), (1, 1), (1, 1), ((0, 0), (1, 1)), 8, None),
    ((2, 3, 5, 8), (3, 3), (1, 2), (1, 1), ((1, 1), (1, 1)), 8, None),
    ((1, 7, 6, 40), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)), 256, (3, 128)),
]


@pytest.mark.parametrize("shape,window,strides,dilation,pads,f,tiles",
                         _DIRECT)
def test_tpu_direct_forward_matches_float64(shape, window, strides, dilation,
                                            pads, f, tiles, monkeypatch):
  """The TPU's layout-free forward kernel (`_pallas_tpu.forward_direct`),
  interpreted: strided loads (stride 2, and along W alone), dilation with
  odd sizes, a height-1 image (1-D), an image lower than the rows a block
  reads (its DMA clamped to the image), and blocks of 3 rows over 7 (the
  last partial) with 2 filter blocks. Against the float64 reference,
  within the float32 bound of its sums."""
  from sepconv_jax import _pallas_policy
  from sepconv_jax import _pallas_tpu
  if tiles is not None:
    monkeypatch.setattr(_pallas_policy, "direct_tiles", lambda **_: (
        _pallas_policy.DirectTiles(*tiles)))
  ran = []
  original = _pallas_tpu.forward_direct
  monkeypatch.setattr(_pallas_tpu, "forward_direct",
                      lambda *a, **k: ran.append(1) or original(*a, **k))
  rng = np.random.default_rng(11)
  c = shape[-1]
  x = rng.standard_normal(shape).astype(np.float32)
  dk = (rng.standard_normal((*window, c, 1)) / 3).astype(np.float32)
  pk = (rng.standard_normal((c, f)) / np.sqrt(c)).astype(np.float32)
  b = rng.standard_normal(f).astype(np.float32)
  cfg = _pallas_layout.Config(strides, dilation, pads,
                              (lax.Precision.HIGHEST, lax.Precision.HIGHEST))
  y = jax.jit(functools.partial(_pallas._forward_kernels, cfg=cfg,
                                has_pk=True, has_b=True, target="tpu",
                                interpret=True))(x, dk, pk, b)
  assert ran, "the direct kernel did not run"
  conv = dict(strides=strides, padding=pads, dilation=dilation)
  want = ref_nd.separable(x, dk, pk.reshape(1, 1, c, f), b, **conv)
  mag = ref_nd.separable(np.abs(x), np.abs(dk), np.abs(pk).reshape(1, 1, c, f),
                         np.abs(b), **conv)
  bound = tolerances.separable_bound(window[0] * window[1], c, "highest")
  tolerances.assert_within(y, want, mag, bound, "tpu direct forward")
