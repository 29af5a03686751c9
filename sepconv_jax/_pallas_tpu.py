"""The TPU (Mosaic) kernels of the "pallas" implementation.

Mosaic loads whole, aligned blocks: it has no masked or gathered loads
from device memory. So the TPU form reads inputs that XLA lays out around
it (`_pallas_layout`: padded, split into stride phases, channels padded to
whole tiles), and writes whole blocks of a padded output that XLA slices.
Those copies are the layout passes the GPU form (`_pallas_gpu`) does
without; doing without them here needs manual DMAs of each block's rows
with the edges zeroed in VMEM, which is not written yet.

* `forward`: for a block of output rows it reads the input block with its
  halo once, computes the depthwise result for every channel in VMEM,
  multiplies it by the pointwise kernel on the MXU (float32
  accumulation), adds the bias and writes ``y``. The depthwise result
  never goes to device memory. Without a pointwise kernel it writes the
  depthwise result (plus bias) instead.
* `input_grad`: the transposed depthwise step: for a block of input rows,
  ``dx = sum_t sum_m window_t(g_m) * w[t, m]`` over the (zero-dilated,
  `_pallas_layout.dilated_cotangent`) cotangent of the depthwise result,
  which `_pallas` computes with one GEMM, ``ct @ pointwise^T``.
* `param_grads`: for blocks of output pixels it recomputes the depthwise
  result and sums the pointwise-kernel gradient ``depthwise(x)^T @ ct``,
  the depthwise-kernel gradient ``sum x_tap * (ct @ pointwise^T)`` and the
  bias gradient; the pixel blocks are the innermost grid axis and the sums
  accumulate in the output block.

``interpret=True`` runs them in Pallas's interpreter, on any backend.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from sepconv_jax import _pallas_layout
from sepconv_jax import _pallas_policy

_F32 = jnp.float32
Geometry = _pallas_layout.Geometry


def _params(g: Geometry, semantics: tuple[str, ...], interpret: bool):
  if interpret:
    return None
  return pltpu.CompilerParams(dimension_semantics=semantics,
                              vmem_limit_bytes=g.tiles.vmem_limit or None)


def _chunks(total: int, size: int, body, init):
  """``body(offset, carry)`` over the chunks of ``range(total)``: a static
  offset when there is one chunk (Mosaic proves nothing of a dynamic lane
  offset that is not a multiple of 128), else a `lax.fori_loop`."""
  if total == size:
    return body(0, init)
  return lax.fori_loop(
      0, total // size,
      lambda i, carry: body(pl.multiple_of(i * size, size), carry), init)


def _ch(c, g: Geometry):
  """The element offset of channel block `c`: a static 0 when there is one
  block (Mosaic proves a block offset only a multiple of its lane tiling)."""
  if g.padded_channels == g.tiles.channels:
    return 0
  return c * g.tiles.channels


def _cost(flops: int, *arrays_and_shapes) -> pl.CostEstimate:
  """XLA's view of a kernel: its flops and the bytes of its operands and
  results (each read or written once)."""
  total = 0
  for a in arrays_and_shapes:
    size = 1
    for d in a.shape:
      size *= d
    total += size * jnp.dtype(a.dtype).itemsize
  return pl.CostEstimate(flops=int(flops), transcendentals=0,
                         bytes_accessed=int(total))


def _window(ref, lead, row, col, rows, cols, ch, chans):
  """A ``(rows * cols, chans)`` window of ``ref[*lead, row:, col:, ch:]``."""
  if rows == 1:
    return ref[(*lead, row, pl.ds(col, cols), pl.ds(ch, chans))]
  block = ref[(*lead, pl.ds(row, rows), pl.ds(col, cols), pl.ds(ch, chans))]
  return block.reshape(rows * cols, chans)


def _depthwise(x_ref, w_ref, ch, w_ch, g: Geometry, chans: int):
  """The depthwise result of a block, one ``(P, chans)`` float32 per m.

  Reads each tap's window of the (phased) input block once, for all M.
  """
  t_ = g.tiles
  d = [jnp.zeros((t_.rows * t_.cols, chans), _F32)
       for _ in range(g.multiplier)]
  for t, (a, b, oi, oj) in enumerate(g.taps):
    xt = _window(x_ref, (a, b), oi, oj, t_.rows, t_.cols, ch,
                 chans).astype(_F32)
    for m in range(g.multiplier):
      w = w_ref[t, m, pl.ds(w_ch, chans)].astype(_F32)
      d[m] = d[m] + xt * w[None, :]
  return d


def _dot(a, b, precision, contract=((1,), (0,))):
  return lax.dot_general(a, b, (contract, ((), ())), precision=precision,
                         preferred_element_type=_F32)


def _x_spec(g: Geometry, index):
  """The (phased) input block with its halo, at the element offsets that
  ``index(*program_ids)`` gives as (n, row, col, channel)."""
  (sh, sw), (eh, ew) = g.cfg.strides, g.halo
  t_ = g.tiles

  def index_map(*ids):
    n, row, col, ch = index(*ids)
    return n, 0, 0, row, col, ch

  return pl.BlockSpec(
      (None, pl.Element(sh), pl.Element(sw), pl.Element(t_.rows + eh),
       pl.Element(t_.cols + ew), pl.Element(g.padded_channels)), index_map)


# ---------------------------------------------------------------------------
# Forward.


def _forward_kernel(*refs, g: Geometry, depthwise_only: bool,
                    has_bias: bool, precision, out_dtype):
  t_ = g.tiles
  rows, cols = t_.rows, t_.cols
  x_ref, w_ref, *rest = refs
  y_ref = rest.pop()
  b_ref = rest.pop() if has_bias else None
  if depthwise_only:
    # The x and weights blocks are the channel block itself.
    d = _depthwise(x_ref, w_ref, 0, 0, g, t_.channels)
    for m in range(g.multiplier):
      if has_bias:
        d[m] = d[m] + b_ref[m, :].astype(_F32)[None, :]
      y_ref[pl.ds(m, 1)] = d[m].astype(out_dtype).reshape(1, rows, cols,
                                                           t_.channels)
    return
  (pk_ref,) = rest

  def chunk(ch, acc):
    d = _depthwise(x_ref, w_ref, ch, ch, g, t_.channels)
    for m in range(g.multiplier):
      pk = pk_ref[m, pl.ds(ch, t_.channels), :]
      acc = acc + _dot(d[m].astype(pk.dtype), pk, precision)
    return acc

  acc = _chunks(g.padded_channels, t_.channels, chunk,
                jnp.zeros((rows * cols, t_.filters), _F32))
  if has_bias:
    acc = acc + b_ref[0, :].astype(_F32)[None, :]
  y_ref[...] = acc.astype(out_dtype).reshape(rows, cols, t_.filters)


def forward(xs, w, pk, b, g: Geometry, *, interpret: bool,
            out_dtype) -> jax.Array:
  """The separable (or, with `pk` None, depthwise) forward pass.

  Args:
    xs: `_pallas_layout.phased_input`.
    w: `_pallas_layout.depthwise_weights`.
    pk: `_pallas_layout.pointwise_weights`, or None.
    b: `_pallas_layout.bias`, or None.
    g: the geometry, with the forward kernel's tiles.
    interpret: run it in Pallas's interpreter (any backend).
    out_dtype: the output's dtype.

  Returns:
    ``(N, H'_p, W'_p, F_p)``; for the depthwise step alone
    ``(N, M, H'_p, W'_p, C_p)``: padded to the tiles.
  """
  t_ = g.tiles
  depthwise_only = pk is None
  rb_count, cb_count = g.blocks
  n = g.batch
  if depthwise_only:
    last = g.padded_channels // t_.channels
    x_spec = pl.BlockSpec(
        _x_spec(g, None).block_shape[:-1] + (pl.Element(t_.channels),),
        lambda i, tile, c: (i, 0, 0, lax.div(tile, cb_count) * t_.rows,
                            lax.rem(tile, cb_count) * t_.cols,
                            _ch(c, g)))
    specs = [x_spec, pl.BlockSpec((len(g.taps), g.multiplier, t_.channels),
                                  lambda i, tile, c: (0, 0, c))]
    if b is not None:
      specs.append(pl.BlockSpec((g.multiplier, t_.channels),
                                lambda i, tile, c: (0, c)))
    out_shape = (n, g.multiplier, *g.padded_out, g.padded_channels)
    out_spec = pl.BlockSpec(
        (None, g.multiplier, t_.rows, t_.cols, t_.channels),
        lambda i, tile, c: (i, 0, lax.div(tile, cb_count),
                            lax.rem(tile, cb_count), c))
    operands = [xs, w] + ([b] if b is not None else [])
  else:
    last = g.padded_filters // t_.filters
    specs = [
        _x_spec(g, lambda i, tile, f: (i, lax.div(tile, cb_count) * t_.rows,
                                       lax.rem(tile, cb_count) * t_.cols, 0)),
        pl.BlockSpec((len(g.taps), g.multiplier, g.padded_channels),
                     lambda i, tile, f: (0, 0, 0)),
        pl.BlockSpec((g.multiplier, g.padded_channels, t_.filters),
                     lambda i, tile, f: (0, 0, f)),
    ]
    if b is not None:
      specs.append(pl.BlockSpec((1, t_.filters), lambda i, tile, f: (0, f)))
    out_shape = (n, *g.padded_out, g.padded_filters)
    out_spec = pl.BlockSpec(
        (None, t_.rows, t_.cols, t_.filters),
        lambda i, tile, f: (i, lax.div(tile, cb_count),
                            lax.rem(tile, cb_count), f))
    operands = [xs, w, pk] + ([b] if b is not None else [])
  kernel = functools.partial(
      _forward_kernel, g=g, depthwise_only=depthwise_only,
      has_bias=b is not None, precision=g.cfg.precision,
      out_dtype=jnp.dtype(out_dtype))
  out = jax.ShapeDtypeStruct(out_shape, out_dtype)
  pixels = n * g.out[0] * g.out[1]
  work = g.channels * g.multiplier
  flops = 2 * pixels * work * (len(g.taps) + (0 if depthwise_only
                                                else g.filters))
  return pl.pallas_call(
      kernel, out_shape=out,
      grid=(n, rb_count * cb_count, last), in_specs=specs,
      out_specs=out_spec, interpret=interpret, name="sepconv_forward",
      compiler_params=_params(g, ("parallel",) * 3, interpret),
      cost_estimate=_cost(flops, *operands, out),
  )(*operands)


# ---------------------------------------------------------------------------
# Forward, reading x where it lies.


class Direct(NamedTuple):
  """The static sizes of `forward_direct`."""

  batch: int
  size: tuple[int, int]         # H, W
  channels: int                 # C
  filters: int                  # F
  kernel: tuple[int, int]       # kh, kw
  out: tuple[int, int]          # H', W'
  cfg: object                   # _pallas_layout.Config
  tiles: _pallas_policy.DirectTiles

  @property
  def rows_in(self) -> int:
    """Input rows a block of `tiles.rows` output rows reads (at most H)."""
    (sh, _), (dh, _) = self.cfg.strides, self.cfg.dilation
    return min(self.size[0], (self.tiles.rows - 1) * sh
               + (self.kernel[0] - 1) * dh + 1)

  @property
  def padded_width(self) -> int:
    """The width of a row with its zero columns on both sides."""
    (_, sw), (_, dw) = self.cfg.strides, self.cfg.dilation
    (_, (pl_, _)) = self.cfg.pads
    return max(pl_ + self.size[1],
               (self.out[1] - 1) * sw + (self.kernel[1] - 1) * dw + 1)


def direct(x_shape, dk_shape, filters: int, cfg,
           itemsize: int) -> Optional[Direct]:
  """The `Direct` sizes of a call, or None where `forward_direct` does not
  serve it (see `_pallas_policy.direct_tiles`)."""
  n, h, w, c = x_shape
  kh, kw, _, m = dk_shape
  if m != 1:
    return None
  out = cfg.out_hw((h, w), (kh, kw))
  (sh, sw), (dh, dw) = cfg.strides, cfg.dilation
  (_, (pl_, _)) = cfg.pads
  width = max(pl_ + w, (out[1] - 1) * sw + (kw - 1) * dw + 1)
  tiles = _pallas_policy.direct_tiles(
      height=h, width=w, padded_width=width, out_hw=out, channels=c,
      filters=filters, itemsize=itemsize, taps=kh * kw,
      row_step=sh, row_extent=(kh - 1) * dh, strided=sw > 1)
  if tiles is None:
    return None
  return Direct(n, (h, w), c, filters, (kh, kw), out, cfg, tiles)


def _forward_direct_kernel(x_hbm, dk_ref, pk_ref, *refs, g: Direct,
                           has_bias: bool, precision):
  """One block of output rows, one block of filters. At the first filter
  block it copies the block's input rows from device memory (a DMA),
  zero-pads their columns in VMEM and computes the depthwise result into
  VMEM; every filter block multiplies it by its pointwise block."""
  t_ = g.tiles
  b_ref = refs[0] if has_bias else None
  y_ref, rows_ref, padded_ref, d_ref, sem = refs[1 if has_bias else 0:]
  n, rb, fb = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  (h, w), (kh, kw), (_, wo) = g.size, g.kernel, g.out
  (sh, sw), (dh, dw) = g.cfg.strides, g.cfg.dilation
  ((pt, _), (pl_, _)) = g.cfg.pads
  rows_in = g.rows_in

  @pl.when(fb == 0)
  def _():
    # The input rows this block reads, clamped into the image: rows
    # outside it are masked below.
    first = rb * t_.rows * sh - pt
    start = jnp.clip(first, 0, h - rows_in)
    copy = pltpu.make_async_copy(x_hbm.at[n, pl.ds(start, rows_in)],
                                 rows_ref, sem)
    copy.start()
    copy.wait()
    padded_ref[...] = jnp.zeros(padded_ref.shape, padded_ref.dtype)
    padded_ref[:, pl.ds(pl_, w), :] = rows_ref[...].astype(padded_ref.dtype)

    @pl.loop(0, t_.rows)
    def _(r):
      acc = jnp.zeros((wo, g.channels), _F32)
      for i in range(kh):
        row = (rb * t_.rows + r) * sh + i * dh - pt
        inside = (row >= 0) & (row < h)
        local = jnp.clip(row - start, 0, rows_in - 1)
        for j in range(kw):
          cols = pl.ds(j * dw, wo) if sw == 1 else pl.ds(j * dw, wo,
                                                         stride=sw)
          window = padded_ref[local, cols, :].astype(_F32)
          weight = dk_ref[i * kw + j, :].astype(_F32)
          acc = acc + jnp.where(inside, window, 0.0) * weight[None, :]
      d_ref[r] = acc.astype(d_ref.dtype)

  @pl.loop(0, t_.rows)
  def _(r):
    y = _dot(d_ref[r], pk_ref[...], precision)
    if has_bias:
      y = y + b_ref[...].astype(_F32)
    y_ref[r] = y.astype(y_ref.dtype)


def forward_direct(x, dk, pk, b, g: Direct, *, interpret: bool) -> jax.Array:
  """The separable forward pass, reading ``x`` as it is.

  No layout pass: each block of output rows copies its input rows from
  device memory itself, and the padding is zero columns in VMEM and masked
  rows; strides are strided loads from VMEM.

  Args:
    x: ``(N, H, W, C)``.
    dk: ``(kh, kw, C, 1)``.
    pk: ``(C, F)``.
    b: ``(F,)`` or None.
    g: `direct`'s sizes.
    interpret: run it in Pallas's interpreter (any backend).

  Returns:
    ``(N, H', W', F)``.
  """
  t_ = g.tiles
  (kh, kw), (ho, wo), c, f = g.kernel, g.out, g.channels, g.filters
  operands = [x, dk.reshape(kh * kw, c), pk]
  specs = [pl.BlockSpec(memory_space=pl.ANY),
           pl.BlockSpec((kh * kw, c), lambda n, r, fb: (0, 0)),
           pl.BlockSpec((c, t_.filters), lambda n, r, fb: (0, fb))]
  if b is not None:
    operands.append(b.reshape(1, f))
    specs.append(pl.BlockSpec((1, t_.filters), lambda n, r, fb: (0, fb)))
  strided = g.cfg.strides[1] > 1
  # Mosaic's strided loads take 32-bit values only.
  padded_dtype = _F32 if strided else x.dtype
  out = jax.ShapeDtypeStruct((g.batch, ho, wo, f), x.dtype)
  flops = 2 * g.batch * ho * wo * c * (kh * kw + f)
  return pl.pallas_call(
      functools.partial(_forward_direct_kernel, g=g, has_bias=b is not None,
                        precision=g.cfg.precision),
      out_shape=out,
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=0,
          grid=(g.batch, -(-ho // t_.rows), -(-f // t_.filters)),
          in_specs=specs,
          out_specs=pl.BlockSpec((None, t_.rows, wo, t_.filters),
                                 lambda n, r, fb: (n, r, 0, fb)),
          scratch_shapes=[
              pltpu.VMEM((g.rows_in, g.size[1], c), x.dtype),
              pltpu.VMEM((g.rows_in, g.padded_width, c), padded_dtype),
              pltpu.VMEM((t_.rows, wo, c), x.dtype),
              pltpu.SemaphoreType.DMA]),
      interpret=interpret, name="sepconv_forward",
      compiler_params=None if interpret else pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary"),
          vmem_limit_bytes=_pallas_policy.TPU_VMEM_LIMIT),
      cost_estimate=_cost(flops, *operands, out),
  )(*operands)


# ---------------------------------------------------------------------------
# The input gradient: the transposed depthwise step.


def _input_grad_kernel(ct_ref, w_ref, dx_ref, *, g: Geometry, out_dtype):
  t_ = g.tiles
  rows, cols = t_.rows, t_.cols
  (dh, dw), (kh, kw) = g.cfg.dilation, g.kernel
  acc = jnp.zeros((rows * cols, t_.channels), _F32)
  for t, (oi, oj) in enumerate((i * dh, j * dw) for i in range(kh)
                               for j in range(kw)):
    for m in range(g.multiplier):
      window = _window(ct_ref, (m,), oi, oj, rows, cols, 0, t_.channels)
      acc = acc + window.astype(_F32) * w_ref[t, m, :].astype(_F32)[None]
  dx_ref[...] = acc.astype(out_dtype).reshape(rows, cols, t_.channels)


def input_grad(ctq, w, g: Geometry, *, interpret: bool,
               out_dtype) -> jax.Array:
  """The input's cotangent from the depthwise result's.

  Args:
    ctq: `_pallas_layout.dilated_cotangent` of the depthwise result's
      cotangent, ``(N, M, H_p + e_h, W_p + e_w, C_p)``.
    w: `_pallas_layout.flipped_depthwise_weights`.
    g: the geometry, with the input-gradient tiles (``kernel="input_grad"``).
    interpret, out_dtype: as for `forward`.

  Returns:
    ``(N, H_p, W_p, C_p)``: padded to the tiles.
  """
  t_ = g.tiles
  rb_count, cb_count = g.input_blocks
  (kh, kw), (dh, dw) = g.kernel, g.cfg.dilation
  eh, ew = (kh - 1) * dh, (kw - 1) * dw
  n = g.batch
  ct_spec = pl.BlockSpec(
      (None, pl.Element(g.multiplier), pl.Element(t_.rows + eh),
       pl.Element(t_.cols + ew), pl.Element(t_.channels)),
      lambda i, tile, c: (i, 0, lax.div(tile, cb_count) * t_.rows,
                          lax.rem(tile, cb_count) * t_.cols, _ch(c, g)))
  w_spec = pl.BlockSpec((kh * kw, g.multiplier, t_.channels),
                        lambda i, tile, c: (0, 0, c))
  out_shape = (n, rb_count * t_.rows, cb_count * t_.cols, g.padded_channels)
  out_spec = pl.BlockSpec(
      (None, t_.rows, t_.cols, t_.channels),
      lambda i, tile, c: (i, lax.div(tile, cb_count),
                          lax.rem(tile, cb_count), c))
  kernel = functools.partial(_input_grad_kernel, g=g,
                             out_dtype=jnp.dtype(out_dtype))
  out = jax.ShapeDtypeStruct(out_shape, out_dtype)
  flops = 2 * n * g.size[0] * g.size[1] * kh * kw * g.multiplier * g.channels
  return pl.pallas_call(
      kernel, out_shape=out,
      grid=(n, rb_count * cb_count, g.padded_channels // t_.channels),
      in_specs=[ct_spec, w_spec], out_specs=out_spec, interpret=interpret,
      name="sepconv_input_grad",
      compiler_params=_params(g, ("parallel",) * 3, interpret),
      cost_estimate=_cost(flops, ctq, w, out),
  )(ctq, w)


# ---------------------------------------------------------------------------
# The parameter gradients.


def _block_sums(x_ref, x_lead, w_ref, pk_ref, ct, row, col, ch, f, sums, *,
                g: Geometry, depthwise_only: bool, precision):
  """Adds one block of output pixels to the running sums.

  `ct` is the block's cotangent: ``(P, TF)``, or per m ``(P, TC)`` for the
  depthwise step alone. `sums` is ``(dpk[m], ddk[t][m], db)``.
  """
  t_ = g.tiles
  dpk, ddk, db = sums

  def window(t):
    a, b, oi, oj = g.taps[t]
    return _window(x_ref, (*x_lead, a, b), row + oi, col + oj, t_.rows,
                   t_.cols, ch, t_.channels).astype(_F32)

  # The taps stream: one window is live at a time (each is read twice, for
  # the depthwise result and for its kernel's gradient), which keeps the
  # VMEM small.
  if depthwise_only:
    gd = [c.astype(_F32) for c in ct]
    db = [s + jnp.sum(c, axis=0) for s, c in zip(db, gd)]
  else:
    db = db + jnp.sum(ct.astype(_F32), axis=0)
    d = [jnp.zeros((t_.rows * t_.cols, t_.channels), _F32)
         for _ in range(g.multiplier)]
    for t in range(len(g.taps)):
      xt = window(t)
      for m in range(g.multiplier):
        w = w_ref[t, m, pl.ds(ch, t_.channels)].astype(_F32)
        d[m] = d[m] + xt * w[None, :]
    gd, new_dpk = [], []
    for m in range(g.multiplier):
      pk = pk_ref[m, pl.ds(ch, t_.channels), pl.ds(f, t_.filters)]
      new_dpk.append(dpk[m] + _dot(d[m].astype(ct.dtype), ct, precision,
                                   ((0,), (0,))))
      gd.append(_dot(ct, pk, precision, ((1,), (1,))))
    dpk = new_dpk
  new_ddk = []
  for t in range(len(g.taps)):
    xt = window(t)
    new_ddk.append([ddk[t][m] + jnp.sum(xt * gd[m], axis=0)
                    for m in range(g.multiplier)])
  return dpk, new_ddk, db


def _zero_sums(g: Geometry, depthwise_only: bool):
  t_ = g.tiles
  vec = lambda size: jnp.zeros((size,), _F32)
  dpk = [jnp.zeros((t_.channels, t_.filters), _F32)
         for _ in range(0 if depthwise_only else g.multiplier)]
  ddk = [[vec(t_.channels) for _ in range(g.multiplier)] for _ in g.taps]
  db = ([vec(t_.channels) for _ in range(g.multiplier)] if depthwise_only
        else vec(t_.filters))
  return dpk, ddk, db


def _param_grads_kernel(x_ref, w_ref, *refs, g: Geometry,
                            depthwise_only: bool, precision):
  """One pixel block of one channel tile and filter tile; the sums
  accumulate over the innermost grid axis, the pixel blocks."""
  t_ = g.tiles
  if depthwise_only:
    ct_ref, ddk_ref, db_ref = refs
    pk_ref = dpk_ref = None
  else:
    pk_ref, ct_ref, dpk_ref, ddk_ref, db_ref = refs
  tile = pl.program_id(2)
  # The x, weights and pointwise blocks are the channel tile itself.
  ch = 0

  @pl.when(tile == 0)
  def _():
    for ref in (dpk_ref, ddk_ref, db_ref):
      if ref is not None:
        ref[...] = jnp.zeros(ref.shape, ref.dtype)

  if depthwise_only:
    ct = [_window(ct_ref, (m,), 0, 0, t_.rows, t_.cols, 0, t_.channels)
          for m in range(g.multiplier)]
  else:
    ct = _window(ct_ref, (), 0, 0, t_.rows, t_.cols, 0, t_.filters)
  dpk, ddk, db = _block_sums(
      x_ref, (), w_ref, pk_ref, ct, 0, 0, ch, 0,
      _zero_sums(g, depthwise_only), g=g, depthwise_only=depthwise_only,
      precision=precision)
  for m in range(g.multiplier):
    if not depthwise_only:
      dpk_ref[m] += dpk[m]
    for t in range(len(g.taps)):
      ddk_ref[t, pl.ds(m, 1), :] += ddk[t][m][None, :]
    if depthwise_only:
      db_ref[pl.ds(m, 1), :] += db[m][None, :]
  if not depthwise_only:
    db_ref[...] += db[None, :]


def param_grads(xs, w, pk, ctp, g: Geometry, *, interpret: bool):
  """Partial sums of the kernels' and the bias's cotangents.

  Args:
    xs: `_pallas_layout.phased_input`.
    w: `_pallas_layout.depthwise_weights`.
    pk: `_pallas_layout.pointwise_weights`, or None (depthwise step alone).
    ctp: `_pallas_layout.output_cotangent`.
    g: the geometry, with the parameter-gradient tiles.
    interpret: as for `forward`.

  Returns:
    ``(dpk, ddk, db)`` float32 sums, to be summed over their leading axes:
    ``dpk`` ``(1, M, C_p, F_p)`` (None for the depthwise step alone),
    ``ddk`` ``(1, filter blocks, taps, M, C_p)``, ``db`` ``(1, channel
    blocks, F_p)`` (every channel block holds the same sum), or ``(1, M,
    C_p)`` for the depthwise step alone.
  """
  t_ = g.tiles
  depthwise_only = pk is None
  cblocks = g.padded_channels // t_.channels
  fblocks = 1 if depthwise_only else g.padded_filters // t_.filters
  taps, m = len(g.taps), g.multiplier
  rb_count, cb_count = g.blocks
  total = g.batch * rb_count * cb_count

  def block(tile):
    n = lax.div(tile, rb_count * cb_count)
    rest = lax.rem(tile, rb_count * cb_count)
    return n, lax.div(rest, cb_count), lax.rem(rest, cb_count)

  def x_index(c, f, tile):
    n, rb, cb = block(tile)
    return n, 0, 0, rb * t_.rows, cb * t_.cols, _ch(c, g)

  # The channel block selects the x and weights blocks.
  specs = [pl.BlockSpec(
      _x_spec(g, None).block_shape[:-1] + (pl.Element(t_.channels),),
      x_index),
           pl.BlockSpec((taps, m, t_.channels), lambda c, f, tile: (0, 0, c))]
  if not depthwise_only:
    specs.append(pl.BlockSpec((m, t_.channels, t_.filters),
                              lambda c, f, tile: (0, c, f)))
    specs.append(pl.BlockSpec((None, t_.rows, t_.cols, t_.filters),
                              lambda c, f, tile: (*block(tile), f)))
  else:
    specs.append(pl.BlockSpec((None, m, t_.rows, t_.cols, t_.channels),
                              lambda c, f, tile: (block(tile)[0], 0,
                                                  *block(tile)[1:], c)))
  shapes = [] if depthwise_only else [(1, m, g.padded_channels,
                                       g.padded_filters)]
  out_specs = [] if depthwise_only else [pl.BlockSpec(
      (None, m, t_.channels, t_.filters), lambda c, f, tile: (0, 0, c, f))]
  shapes.append((1, fblocks, taps, m, g.padded_channels))
  out_specs.append(pl.BlockSpec((None, None, taps, m, t_.channels),
                                lambda c, f, tile: (0, f, 0, 0, c)))
  if depthwise_only:
    shapes.append((1, m, g.padded_channels))
    out_specs.append(pl.BlockSpec((None, m, t_.channels),
                                  lambda c, f, tile: (0, 0, c)))
  else:
    shapes.append((1, cblocks, 1, g.padded_filters))
    out_specs.append(pl.BlockSpec((None, None, 1, t_.filters),
                                  lambda c, f, tile: (0, c, 0, f)))
  operands = [xs, w] + ([] if depthwise_only else [pk]) + [ctp]
  out_shapes = [jax.ShapeDtypeStruct(s, _F32) for s in shapes]
  # The depthwise result recomputed and each tap's product with the
  # cotangent (2 x taps), and the two pointwise dots (dpk, g).
  work = g.channels * g.multiplier
  flops = 2 * g.batch * g.out[0] * g.out[1] * work * (
      2 * taps + (0 if depthwise_only else 2 * g.filters))
  outs = pl.pallas_call(
      functools.partial(_param_grads_kernel, g=g,
                        depthwise_only=depthwise_only,
                        precision=g.cfg.precision),
      out_shape=out_shapes, grid=(cblocks, fblocks, total), in_specs=specs,
      out_specs=out_specs, interpret=interpret, name="sepconv_param_grads",
      compiler_params=_params(g, ("parallel", "parallel", "arbitrary"),
                              interpret),
      cost_estimate=_cost(flops, *operands, *out_shapes),
  )(*operands)
  if depthwise_only:
    ddk, db = outs
    return None, ddk, db
  dpk, ddk, db = outs
  return dpk, ddk, db[:, :, 0]
