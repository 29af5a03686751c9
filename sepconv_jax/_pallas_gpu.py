"""The GPU (Triton) kernels of the "pallas" implementation.

They read the layer's arrays as they are: no padded, phased or transposed
copy is made around them. Every array is seen as a 2-D (or 3-D) view that
costs nothing (a reshape of a contiguous array): the input ``x`` as
``(N * H * W, C)``, the output and its cotangent as ``(N * H' * W', F)``,
the depthwise kernel as ``(taps, C, M)``, the pointwise kernel as
``(C, M, F)``.

A program works on a tile of `Tiles.pixels` consecutive output (or input)
positions, flattened over ``(n, h, w)``, so that every tile is full except
the very last one, whatever the image's width. Each tap of a tile is a
gathered load: the input position of output position ``(h', w')`` at tap
``(i, j)`` is ``(h' * s_h + i * d_h - pad_top, w' * s_w + j * d_w -
pad_left)``, and positions in the padding, channels beyond C and filters
beyond F are masked (loaded as zero, never stored). Strides and dilation
are index arithmetic; "same" padding is the mask.

* `forward`: per tile and filter block, the depthwise result of one chunk
  of channels at a time in registers, times the pointwise kernel on the
  tensor cores (float32 accumulation), plus the bias. The filter block is
  the fastest grid axis, so the programs that share a tile of ``x`` run
  together. Without a pointwise kernel it writes the depthwise result.
* `depthwise_cotangent`: ``g = ct @ pointwise^T``, the cotangent of the
  depthwise result, once per tile of positions (the backward pass's one
  pointwise GEMM; for the depthwise step alone ``g`` is the output
  cotangent itself).
* `input_grad`: the transposed depthwise convolution of ``g``. Memory-bound: it reads
  ``g`` and writes ``dx``, one input position per row of the tile.
* `param_grads`: partial sums, one per group of tiles, that XLA adds up:
  the depthwise kernel's gradient ``sum x_tap * g`` (one tap's window live
  at a time) and, with a pointwise kernel, ``depthwise(x)^T @ ct`` (the
  depthwise result recomputed from ``x``) and the bias's ``sum ct``.

``interpret=True`` runs them in Pallas's interpreter, on any backend.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from sepconv_jax import _pallas_policy

_F32 = jnp.float32
_I32 = jnp.int32


class Geometry(NamedTuple):
  """The static sizes of one call and one kernel's tiles."""

  batch: int
  size: tuple[int, int]       # H, W
  channels: int               # C
  multiplier: int             # M
  filters: int                # F (C * M for the depthwise step alone)
  kernel: tuple[int, int]     # kh, kw
  out: tuple[int, int]        # H', W'
  strides: tuple[int, int]
  dilation: tuple[int, int]
  pads: tuple[tuple[int, int], tuple[int, int]]
  precision: object
  tiles: _pallas_policy.GpuTiles

  @property
  def taps(self) -> tuple[tuple[int, int], ...]:
    kh, kw = self.kernel
    return tuple((i, j) for i in range(kh) for j in range(kw))

  @property
  def out_positions(self) -> int:
    return self.batch * self.out[0] * self.out[1]

  @property
  def in_positions(self) -> int:
    return self.batch * self.size[0] * self.size[1]


def geometry(x_shape, dk_shape, filters: Optional[int], cfg,
             kernel: str, itemsize: int) -> Geometry:
  """The `Geometry` of a call (`cfg` a `_pallas_layout.Config`) with the
  tiles of `kernel` ("forward", "input_grad" or "param_grads")."""
  n, h, w, c = x_shape
  kh, kw, _, m = dk_shape
  out = cfg.out_hw((h, w), (kh, kw))
  exact = itemsize == 4 and any(p == lax.Precision.HIGHEST
                                for p in cfg.precision or ())
  positions = n * (h * w if kernel == "input_grad" else out[0] * out[1])
  tiles = _pallas_policy.gpu_tiles(
      kernel, channels=c, filters=filters, multiplier=m, taps=kh * kw,
      positions=positions, itemsize=itemsize, exact=exact)
  return Geometry(n, (h, w), c, m, c * m if filters is None else filters,
                  (kh, kw), out, cfg.strides, cfg.dilation, cfg.pads,
                  cfg.precision, tiles)


def _cdiv(a: int, b: int) -> int:
  return -(-a // b)


def _iota(size: int):
  return lax.broadcasted_iota(_I32, (size,), 0)


def _at(i: int):
  """A static index as an int32 scalar (the interpreter's loads and
  stores take shaped indices)."""
  return jnp.asarray(i, _I32)


def _params(g: Geometry, interpret: bool):
  if interpret:
    return None
  return plgpu.CompilerParams(num_warps=g.tiles.warps,
                              num_stages=g.tiles.stages)


def _whole(a) -> pl.BlockSpec:
  """The whole array: the program indexes it itself."""
  return pl.BlockSpec(a.shape, lambda *_: (0,) * len(a.shape))


def _cost(flops: int, *arrays) -> pl.CostEstimate:
  """The kernel's flops and the bytes of its operands and results."""
  total = sum(a.size * jnp.dtype(a.dtype).itemsize for a in arrays)
  return pl.CostEstimate(flops=int(flops), transcendentals=0,
                         bytes_accessed=int(total))


def _channels(c0, g: Geometry):
  """A chunk of `Tiles.channels` channel indices from `c0`, clamped into
  range, and which of them are real."""
  idx = c0 + _iota(g.tiles.channels)
  ok = idx < g.channels
  return jnp.where(ok, idx, 0), ok


def _positions(first, count: int, g: Geometry):
  """Output positions ``first .. first + count - 1`` as (n, h', w', valid).
  """
  r = first + _iota(count)
  valid = r < g.out_positions
  r = jnp.where(valid, r, 0)
  per_image = g.out[0] * g.out[1]
  n, rest = lax.div(r, per_image), lax.rem(r, per_image)
  return n, lax.div(rest, g.out[1]), lax.rem(rest, g.out[1]), valid


def _tap_rows(pos, tap, g: Geometry):
  """The rows of ``x`` (as ``(N * H * W, C)``) that tap ``(i, j)`` of the
  output positions `pos` reads, and which are inside the image."""
  n, ho, wo, valid = pos
  (i, j), (sh, sw), (dh, dw) = tap, g.strides, g.dilation
  (pt, _), (pw, _) = g.pads
  h, w = g.size
  hi = ho * sh + (i * dh - pt)
  wi = wo * sw + (j * dw - pw)
  ok = valid & (hi >= 0) & (hi < h) & (wi >= 0) & (wi < w)
  return jnp.where(ok, (n * h + hi) * w + wi, 0), ok


def _gather(x_ref, rows, ok, chans, chans_ok):
  """``x[rows, chans]`` as float32, zero where masked: ``(P, TC)``."""
  block = plgpu.load(x_ref.at[rows[:, None], chans[None, :]],
                     mask=ok[:, None] & chans_ok[None, :], other=0)
  return block.astype(_F32)


def _depthwise_weights(dk_ref, t: int, m: int, c0, chans_ok, g: Geometry):
  w = plgpu.load(dk_ref.at[_at(t), pl.ds(c0, g.tiles.channels), _at(m)],
                 mask=chans_ok, other=0)
  return w.astype(_F32)


def _depthwise(x_ref, dk_ref, pos, c0, g: Geometry):
  """The depthwise result of a tile for one chunk of channels: one
  float32 ``(P, TC)`` per m; each tap's window is loaded once for all M."""
  chans, chans_ok = _channels(c0, g)
  d = [jnp.zeros((g.tiles.pixels, g.tiles.channels), _F32)
       for _ in range(g.multiplier)]
  for t, tap in enumerate(g.taps):
    rows, ok = _tap_rows(pos, tap, g)
    xt = _gather(x_ref, rows, ok, chans, chans_ok)
    for m in range(g.multiplier):
      d[m] = d[m] + xt * _depthwise_weights(dk_ref, t, m, c0, chans_ok,
                                            g)[None, :]
  return d


def _dot(a, b, precision, contract=((1,), (0,))):
  return lax.dot_general(a, b, (contract, ((), ())), precision=precision,
                         preferred_element_type=_F32)


def _channel_chunks(g: Geometry, body, init):
  """``body(c0, carry)`` over the chunks of C (one: a static offset)."""
  size = g.tiles.channels
  count = _cdiv(g.channels, size)
  if count == 1:
    return body(0, init)
  return lax.fori_loop(
      0, count, lambda k, carry: body(pl.multiple_of(k * size, size), carry),
      init)


# ---------------------------------------------------------------------------
# Forward.


def _forward_kernel(x_ref, dk_ref, *refs, g: Geometry, has_pk: bool,
                    has_bias: bool, out_dtype):
  t_ = g.tiles
  refs = list(refs)
  y_ref = refs.pop()
  pk_ref = refs.pop(0) if has_pk else None
  b_ref = refs.pop(0) if has_bias else None
  block, tile = pl.program_id(0), pl.program_id(1)
  first = tile * t_.pixels
  pos = _positions(first, t_.pixels, g)
  valid = pos[3]
  if not has_pk:
    # `block` is the channel block; y is ``(N * H' * W', C, M)``.
    c0 = block * t_.channels
    _, chans_ok = _channels(c0, g)
    d = _depthwise(x_ref, dk_ref, pos, c0, g)
    for m in range(g.multiplier):
      if has_bias:
        d[m] = d[m] + plgpu.load(b_ref.at[pl.ds(c0, t_.channels), _at(m)],
                                 mask=chans_ok, other=0).astype(_F32)[None]
      plgpu.store(y_ref.at[pl.ds(first, t_.pixels), pl.ds(c0, t_.channels),
                           _at(m)],
                  d[m].astype(out_dtype),
                  mask=valid[:, None] & chans_ok[None, :])
    return
  f0 = block * t_.filters
  filts_ok = f0 + _iota(t_.filters) < g.filters

  def chunk(c0, acc):
    _, chans_ok = _channels(c0, g)
    d = _depthwise(x_ref, dk_ref, pos, c0, g)
    for m in range(g.multiplier):
      pk = plgpu.load(pk_ref.at[pl.ds(c0, t_.channels), _at(m),
                                pl.ds(f0, t_.filters)],
                      mask=chans_ok[:, None] & filts_ok[None, :], other=0)
      acc = acc + _dot(d[m].astype(pk.dtype), pk, g.precision)
    return acc

  acc = _channel_chunks(g, chunk, jnp.zeros((t_.pixels, t_.filters), _F32))
  if has_bias:
    acc = acc + plgpu.load(b_ref.at[pl.ds(f0, t_.filters)], mask=filts_ok,
                           other=0).astype(_F32)[None, :]
  plgpu.store(y_ref.at[pl.ds(first, t_.pixels), pl.ds(f0, t_.filters)],
              acc.astype(out_dtype), mask=valid[:, None] & filts_ok[None, :])


def forward(x, dk, pk, b, g: Geometry, *, interpret: bool) -> jax.Array:
  """The separable (or, with `pk` None, depthwise) forward pass.

  Args:
    x: ``(N, H, W, C)``.
    dk: ``(kh, kw, C, M)``.
    pk: ``(C * M, F)``, or None (the depthwise step alone).
    b: ``(F,)`` (``(C * M,)`` for the depthwise step alone), or None.
    g: the geometry, with the forward kernel's tiles.
    interpret: run it in Pallas's interpreter (any backend).

  Returns:
    ``(N, H', W', F)``, or ``(N, H', W', C * M)``, in ``x``'s dtype.
  """
  t_ = g.tiles
  c, m = g.channels, g.multiplier
  x2 = x.reshape(g.in_positions, c)
  dk3 = dk.reshape(len(g.taps), c, m)
  operands = [x2, dk3]
  if pk is not None:
    operands.append(pk.reshape(c, m, g.filters))
    blocks = _cdiv(g.filters, t_.filters)
    out = jax.ShapeDtypeStruct((g.out_positions, g.filters), x.dtype)
  else:
    blocks = _cdiv(c, t_.channels)
    out = jax.ShapeDtypeStruct((g.out_positions, c, m), x.dtype)
  if b is not None:
    operands.append(b if pk is not None else b.reshape(c, m))
  kernel = functools.partial(_forward_kernel, g=g, has_pk=pk is not None,
                             has_bias=b is not None,
                             out_dtype=jnp.dtype(x.dtype))
  flops = 2 * g.out_positions * c * m * (
      len(g.taps) + (g.filters if pk is not None else 0))
  y = pl.pallas_call(
      kernel, out_shape=out,
      grid=(blocks, _cdiv(g.out_positions, t_.pixels)),
      in_specs=[_whole(a) for a in operands], out_specs=_whole(out),
      interpret=interpret, name="sepconv_forward",
      compiler_params=_params(g, interpret),
      cost_estimate=_cost(flops, *operands, out),
  )(*operands)
  return y.reshape(g.batch, *g.out, -1)


# ---------------------------------------------------------------------------
# The backward GEMM: g = ct @ pointwise^T, once per tile.


def _cotangent_kernel(ct_ref, pk_ref, g_ref, *, g: Geometry, out_dtype):
  t_ = g.tiles
  cb, tile = pl.program_id(0), pl.program_id(1)
  c0, first = cb * t_.channels, tile * t_.pixels
  rows_ok = first + _iota(t_.pixels) < g.out_positions
  cm = g.channels * g.multiplier
  cols_ok = c0 + _iota(t_.channels) < cm
  size = t_.filters

  def chunk(k, acc):
    f0 = pl.multiple_of(k * size, size)
    f_ok = f0 + _iota(size) < g.filters
    ct = plgpu.load(ct_ref.at[pl.ds(first, t_.pixels), pl.ds(f0, size)],
                    mask=rows_ok[:, None] & f_ok[None, :], other=0)
    pk = plgpu.load(pk_ref.at[pl.ds(c0, t_.channels), pl.ds(f0, size)],
                    mask=cols_ok[:, None] & f_ok[None, :], other=0)
    return acc + _dot(ct, pk, g.precision, ((1,), (1,)))

  acc = lax.fori_loop(0, _cdiv(g.filters, size), chunk,
                      jnp.zeros((t_.pixels, t_.channels), _F32))
  plgpu.store(g_ref.at[pl.ds(first, t_.pixels), pl.ds(c0, t_.channels)],
              acc.astype(out_dtype), mask=rows_ok[:, None] & cols_ok[None, :])


def depthwise_cotangent(ct, pk, g: Geometry, *, interpret: bool) -> jax.Array:
  """``g = ct @ pk^T``, the depthwise result's cotangent, in ``ct``'s dtype
  (float32 accumulation).

  Args:
    ct: ``(N, H', W', F)``: the output cotangent.
    pk: ``(C * M, F)``.
    g: the geometry, with the GEMM's tiles (``"cotangent"``).
    interpret: as for `forward`.

  Returns:
    ``(N, H', W', C * M)``.
  """
  t_ = g.tiles
  cm = g.channels * g.multiplier
  ct2 = ct.reshape(g.out_positions, g.filters)
  out = jax.ShapeDtypeStruct((g.out_positions, cm), ct.dtype)
  gd = pl.pallas_call(
      functools.partial(_cotangent_kernel, g=g, out_dtype=jnp.dtype(ct.dtype)),
      out_shape=out,
      grid=(_cdiv(cm, t_.channels), _cdiv(g.out_positions, t_.pixels)),
      in_specs=[_whole(ct2), _whole(pk)], out_specs=_whole(out),
      interpret=interpret, name="sepconv_depthwise_cotangent",
      compiler_params=_params(g, interpret),
      cost_estimate=_cost(2 * g.out_positions * cm * g.filters, ct2, pk, out),
  )(ct2, pk)
  return gd.reshape(g.batch, *g.out, cm)


# ---------------------------------------------------------------------------
# The input gradient: the transposed depthwise convolution of g.


def _input_grad_kernel(g_ref, dk_ref, dx_ref, *, g: Geometry, out_dtype):
  t_ = g.tiles
  cb, tile = pl.program_id(0), pl.program_id(1)
  c0, first = cb * t_.channels, tile * t_.pixels
  chans, chans_ok = _channels(c0, g)
  (h, w), (ho, wo) = g.size, g.out
  (sh, sw), (dh, dw) = g.strides, g.dilation
  (pt, _), (pw, _) = g.pads
  r = first + _iota(t_.pixels)
  valid = r < g.in_positions
  r = jnp.where(valid, r, 0)
  n, rest = lax.div(r, h * w), lax.rem(r, h * w)
  hi, wi = lax.div(rest, w), lax.rem(rest, w)
  acc = jnp.zeros((t_.pixels, t_.channels), _F32)
  for t, (i, j) in enumerate(g.taps):
    # Output position (q_h / s_h, q_w / s_w) read input (h, w) at this tap.
    qh, qw = hi + (pt - i * dh), wi + (pw - j * dw)
    ok = valid & (qh >= 0) & (qw >= 0)
    qh, qw = jnp.where(ok, qh, 0), jnp.where(ok, qw, 0)
    if sh > 1:
      ok = ok & (lax.rem(qh, sh) == 0)
      qh = lax.div(qh, sh)
    if sw > 1:
      ok = ok & (lax.rem(qw, sw) == 0)
      qw = lax.div(qw, sw)
    ok = ok & (qh < ho) & (qw < wo)
    rows = jnp.where(ok, (n * ho + qh) * wo + qw, 0)
    mask = ok[:, None] & chans_ok[None, :]
    for m in range(g.multiplier):
      gv = plgpu.load(g_ref.at[rows[:, None], chans[None, :], _at(m)], mask=mask,
                      other=0).astype(_F32)
      acc = acc + gv * _depthwise_weights(dk_ref, t, m, c0, chans_ok,
                                          g)[None, :]
  plgpu.store(dx_ref.at[pl.ds(first, t_.pixels), pl.ds(c0, t_.channels)],
              acc.astype(out_dtype), mask=valid[:, None] & chans_ok[None, :])


def input_grad(gd, dk, g: Geometry, *, interpret: bool,
               out_dtype) -> jax.Array:
  """The input's cotangent from the depthwise result's.

  Args:
    gd: ``(N, H', W', C * M)``: the cotangent of the depthwise result.
    dk: ``(kh, kw, C, M)``.
    g: the geometry, with the input-gradient kernel's tiles.
    interpret: as for `forward`.
    out_dtype: the input's dtype.

  Returns:
    ``(N, H, W, C)``.
  """
  t_ = g.tiles
  c, m = g.channels, g.multiplier
  g3 = gd.reshape(g.out_positions, c, m)
  dk3 = dk.reshape(len(g.taps), c, m)
  out = jax.ShapeDtypeStruct((g.in_positions, c), out_dtype)
  kernel = functools.partial(_input_grad_kernel, g=g,
                             out_dtype=jnp.dtype(out_dtype))
  flops = 2 * g.in_positions * len(g.taps) * c * m
  dx = pl.pallas_call(
      kernel, out_shape=out,
      grid=(_cdiv(c, t_.channels), _cdiv(g.in_positions, t_.pixels)),
      in_specs=[_whole(g3), _whole(dk3)], out_specs=_whole(out),
      interpret=interpret, name="sepconv_input_grad",
      compiler_params=_params(g, interpret),
      cost_estimate=_cost(flops, g3, dk3, out),
  )(g3, dk3)
  return dx.reshape(g.batch, *g.size, c)


# ---------------------------------------------------------------------------
# The parameter gradients.


def _group_tiles(g: Geometry):
  """(tiles per group, groups): the split of the output positions."""
  tiles = _cdiv(g.out_positions, g.tiles.pixels)
  per = _cdiv(tiles, g.tiles.groups)
  return per, _cdiv(tiles, per)


def _depthwise_grads_kernel(x_ref, g_ref, ddk_ref, *db_ref, g: Geometry):
  """``ddk[t, c, m] = sum_p x_tap[p, c] * g[p, c, m]`` (and the depthwise
  step's bias, ``sum_p g``) over one group of tiles and one channel chunk.
  """
  t_ = g.tiles
  cb, group = pl.program_id(0), pl.program_id(1)
  c0 = cb * t_.channels
  chans, chans_ok = _channels(c0, g)
  per, _ = _group_tiles(g)
  vec = lambda: jnp.zeros((t_.channels,), _F32)

  def body(k, sums):
    ddk, db = sums
    first = (group * per + k) * t_.pixels
    pos = _positions(first, t_.pixels, g)
    valid = pos[3]
    gm = [plgpu.load(g_ref.at[pl.ds(first, t_.pixels), pl.ds(c0, t_.channels),
                              _at(m)],
                     mask=valid[:, None] & chans_ok[None, :],
                     other=0).astype(_F32) for m in range(g.multiplier)]
    db = [s + jnp.sum(v, axis=0) for s, v in zip(db, gm)]
    new = []
    for tap, sums_t in zip(g.taps, ddk):
      rows, ok = _tap_rows(pos, tap, g)
      xt = _gather(x_ref, rows, ok, chans, chans_ok)
      new.append([s + jnp.sum(xt * v, axis=0) for s, v in zip(sums_t, gm)])
    return new, db

  init = ([[vec() for _ in range(g.multiplier)] for _ in g.taps],
          [vec() for _ in range(g.multiplier)])
  ddk, db = lax.fori_loop(0, per, body, init)
  for t in range(len(g.taps)):
    for m in range(g.multiplier):
      plgpu.store(ddk_ref.at[group, _at(t), pl.ds(c0, t_.channels), _at(m)], ddk[t][m],
                  mask=chans_ok)
  for ref in db_ref:  # the depthwise step's bias
    for m in range(g.multiplier):
      plgpu.store(ref.at[group, pl.ds(c0, t_.channels), _at(m)], db[m],
                  mask=chans_ok)


def _pointwise_grads_kernel(x_ref, dk_ref, ct_ref, dpk_ref, db_ref, *,
                            g: Geometry):
  """``dpk[c, m, f] = sum_p depthwise(x)[p, c, m] * ct[p, f]`` and the
  bias's ``sum_p ct[p, f]`` over one group of tiles, one channel chunk and
  one filter block."""
  t_ = g.tiles
  fb, cb, group = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  c0, f0 = cb * t_.channels, fb * t_.filters
  _, chans_ok = _channels(c0, g)
  filts_ok = f0 + _iota(t_.filters) < g.filters
  per, _ = _group_tiles(g)

  def body(k, sums):
    dpk, db = sums
    first = (group * per + k) * t_.pixels
    pos = _positions(first, t_.pixels, g)
    ct = plgpu.load(ct_ref.at[pl.ds(first, t_.pixels), pl.ds(f0, t_.filters)],
                    mask=pos[3][:, None] & filts_ok[None, :], other=0)
    d = _depthwise(x_ref, dk_ref, pos, c0, g)
    dpk = [s + _dot(v.astype(ct.dtype), ct, g.precision, ((0,), (0,)))
           for s, v in zip(dpk, d)]
    return dpk, db + jnp.sum(ct.astype(_F32), axis=0)

  init = ([jnp.zeros((t_.channels, t_.filters), _F32)
           for _ in range(g.multiplier)], jnp.zeros((t_.filters,), _F32))
  dpk, db = lax.fori_loop(0, per, body, init)
  for m in range(g.multiplier):
    plgpu.store(dpk_ref.at[group, pl.ds(c0, t_.channels), _at(m),
                           pl.ds(f0, t_.filters)], dpk[m],
                mask=chans_ok[:, None] & filts_ok[None, :])
  # Every channel chunk sums the same cotangent: the first one stores it.
  plgpu.store(db_ref.at[group, pl.ds(f0, t_.filters)], db,
              mask=filts_ok & (cb == 0))


def param_grads(x, dk, ct, gd, g: Geometry, gp: Optional[Geometry], *,
                interpret: bool):
  """Partial sums of the kernels' and the bias's cotangents.

  Args:
    x: ``(N, H, W, C)``.
    dk: ``(kh, kw, C, M)``.
    ct: ``(N, H', W', F)``: the output cotangent, or None for the depthwise
      step alone.
    gd: ``(N, H', W', C * M)``: the depthwise result's cotangent.
    g: the geometry with the depthwise-gradient tiles (``"param_grads"``).
    gp: the geometry with the pointwise-gradient tiles
      (``"pointwise_grads"``), or None for the depthwise step alone.
    interpret: as for `forward`.

  Returns:
    ``(dpk, ddk, db)``, float32 partial sums to be summed over their first
    axis: ``dpk`` ``(groups, C, M, F)`` (None for the depthwise step alone),
    ``ddk`` ``(groups, taps, C, M)``, ``db`` ``(groups, F)``, or
    ``(groups, C, M)`` for the depthwise step alone.
  """
  c, m, taps = g.channels, g.multiplier, len(g.taps)
  x2 = x.reshape(g.in_positions, c)
  g3 = gd.reshape(g.out_positions, c, m)
  _, groups = _group_tiles(g)
  shapes = [jax.ShapeDtypeStruct((groups, taps, c, m), _F32)]
  if ct is None:
    shapes.append(jax.ShapeDtypeStruct((groups, c, m), _F32))
  ddk, *db = pl.pallas_call(
      functools.partial(_depthwise_grads_kernel, g=g),
      out_shape=shapes, grid=(_cdiv(c, g.tiles.channels), groups),
      in_specs=[_whole(x2), _whole(g3)],
      out_specs=[_whole(s) for s in shapes], interpret=interpret,
      name="sepconv_depthwise_grads", compiler_params=_params(g, interpret),
      cost_estimate=_cost(2 * g.out_positions * taps * c * m, x2, g3,
                          *shapes),
  )(x2, g3)
  if ct is None:
    return None, ddk, db[0]
  t_ = gp.tiles
  ct2 = ct.reshape(gp.out_positions, gp.filters)
  dk3 = dk.reshape(taps, c, m)
  _, groups = _group_tiles(gp)
  shapes = [jax.ShapeDtypeStruct((groups, c, m, gp.filters), _F32),
            jax.ShapeDtypeStruct((groups, gp.filters), _F32)]
  blocks = _cdiv(gp.filters, t_.filters)
  flops = 2 * gp.out_positions * c * m * (taps * blocks + gp.filters)
  dpk, db = pl.pallas_call(
      functools.partial(_pointwise_grads_kernel, g=gp),
      out_shape=shapes,
      grid=(blocks, _cdiv(c, t_.channels), groups),
      in_specs=[_whole(x2), _whole(dk3), _whole(ct2)],
      out_specs=[_whole(s) for s in shapes], interpret=interpret,
      name="sepconv_pointwise_grads", compiler_params=_params(gp, interpret),
      cost_estimate=_cost(flops, x2, dk3, ct2, *shapes),
  )(x2, dk3, ct2)
  return dpk, ddk, db
