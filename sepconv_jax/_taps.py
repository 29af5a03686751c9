"""The "taps" algorithm: shifted multiply-adds, then a matmul.

XLA:CPU runs a grouped convolution (``feature_group_count``) as a slow
generic loop, and differentiates its kernel through ``batch_group_count``,
which it expands into a dense ``C x C`` convolution. These functions compute
the same depthwise-separable convolution from operations XLA:CPU compiles
well. They are plain JAX; `_taps_primitives` wraps them in primitives with
their own derivatives, and `_taps_policy` decides which variant runs.

Depthwise step (`forward`, `split_forward`)
  A sum over the ``prod(kernel_size)`` kernel taps. Each tap is a strided
  `lax.slice` of the input (the part of it the tap sees), times that tap's
  ``(C, M)`` weights, zero-padded to the output grid. XLA fuses the sum
  into one loop, so neither a padded copy nor an im2col copy of the input
  is made: the only temporary of a separable forward pass is the depthwise
  result. `split_forward` computes the interior, where no tap reads
  padding, in a loop of its own, free of per-output padding checks.
  Accumulation is in float32 (or wider).

Input gradient (`input_grad`)
  The transposed taps: each tap's slice of the output cotangent times its
  weights, scattered back by `lax.pad` (edge padding for the offset,
  interior padding for the stride), summed in one fused loop.

Depthwise-kernel gradient (`kernel_grad`, `split_kernel_grad`)
  ``sum(x_tap * ct)`` for every tap: what autodiff does worst (one
  reduction per tap, each a separate pass over the input and the
  cotangent). `kernel_grad` sums the taps' products over chunks of rows in
  one variadic reduction, a single pass for several taps, then reduces the
  partial sums. `split_kernel_grad` sums the interior box from the input
  itself and each border slab on its own, so that no padded copy of the
  input is made.

Pointwise step (`pointwise`)
  One `lax.dot_general` over the channels, on a 2-D view, which XLA:CPU
  hands to its matmul library; differentiated by plain autodiff.

Everything is written for any number of spatial dimensions and both data
formats; `_ops` reshapes every input to one batch axis first.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from sepconv_jax import _args
from sepconv_jax import _taps_policy


class _Tap(NamedTuple):
  """Where one kernel tap reads, along every spatial dimension.

  Output position ``q`` reads input ``q * stride + offset``; ``first`` and
  ``last`` bound the output positions whose input is not padding.
  """

  index: tuple[int, ...]   # the tap's position in the kernel window
  offset: tuple[int, ...]  # index * dilation - padding before
  first: tuple[int, ...]
  last: tuple[int, ...]


class Layout(NamedTuple):
  """The static configuration of one call (hashable: a primitive param)."""

  spec: _args.ConvSpec
  pads: tuple[tuple[int, int], ...]

  def spatial_axes(self, ndim: int) -> tuple[int, ...]:
    """The spatial axes of an (N, *spatial, ...) or (N, ..., *spatial)."""
    rank = self.spec.rank
    if self.spec.channels_last:
      return tuple(range(1, 1 + rank))
    return tuple(range(ndim - rank, ndim))

  def full(self, ndim: int, spatial_values, other) -> list:
    """A per-axis list: `spatial_values` on spatial axes, else `other`."""
    values = [other] * ndim
    for axis, v in zip(self.spatial_axes(ndim), spatial_values):
      values[axis] = v
    return values

  def grid(self, batch: int, out: Sequence[int], channels: int,
           multiplier: int) -> tuple[int, ...]:
    """The depthwise result with the multiplier axis split off (if > 1)."""
    ch = (channels,) if multiplier == 1 else (channels, multiplier)
    if self.spec.channels_last:
      return (batch, *out, *ch)
    return (batch, *ch, *out)

  def channel_axes(self, ndim: int, multiplier: int) -> tuple[int, ...]:
    count = 1 if multiplier == 1 else 2
    if self.spec.channels_last:
      return tuple(range(ndim - count, ndim))
    return tuple(range(1, 1 + count))


def _accumulation_dtype(dtype) -> jnp.dtype:
  return jnp.promote_types(dtype, jnp.float32)


def geometry(layout: Layout, x_shape, kernel_shape):
  """(spatial size, window, output size, taps that see the input)."""
  spec = layout.spec
  spatial = tuple(x_shape[a] for a in layout.spatial_axes(len(x_shape)))
  window = tuple(kernel_shape[:spec.rank])
  out = tuple(
      (n + lo + hi - (k - 1) * d - 1) // s + 1
      for n, (lo, hi), k, s, d in zip(spatial, layout.pads, window,
                                      spec.strides, spec.dilation_rate))
  taps = []
  for index in itertools.product(*(range(k) for k in window)):
    offset, first, last = [], [], []
    for i, n, s, d, (lo, _), o in zip(index, spatial, spec.strides,
                                      spec.dilation_rate, layout.pads, out):
      off = i * d - lo
      offset.append(off)
      first.append(0 if off >= 0 else (-off + s - 1) // s)  # ceil(-off / s)
      last.append(min(o - 1, (n - 1 - off) // s))  # < first: sees nothing
    if all(a <= b for a, b in zip(first, last)):
      taps.append(_Tap(index, tuple(offset), tuple(first), tuple(last)))
  return spatial, window, out, taps


def _weights(layout: Layout, w, multiplier: int):
  """One tap's (C, M) weights, shaped to broadcast against the grid."""
  if multiplier == 1:
    w = w[:, 0]
  if layout.spec.channels_last:
    return w
  return w.reshape(w.shape + (1,) * layout.spec.rank)


def _with_multiplier(layout: Layout, x, multiplier: int):
  """Adds the multiplier axis after the channel axis (when it is > 1)."""
  if multiplier == 1:
    return x
  return x[..., None] if layout.spec.channels_last else x[:, :, None]


def _merge_channels(layout: Layout, y, batch, out, channels, multiplier):
  if layout.spec.channels_last:
    return y.reshape(batch, *out, channels * multiplier)
  return y.reshape(batch, channels * multiplier, *out)


def _tap_slice(layout: Layout, x, tap: _Tap):
  """The strided slice of `x` that tap `tap` reads (its valid outputs)."""
  strides = layout.spec.strides
  ndim = x.ndim
  start = layout.full(ndim, [o + a * s for o, a, s in
                             zip(tap.offset, tap.first, strides)], 0)
  limit = list(x.shape)
  for axis, o, b, s in zip(layout.spatial_axes(ndim), tap.offset, tap.last,
                           strides):
    limit[axis] = o + b * s + 1
  return lax.slice(x, start, limit, layout.full(ndim, strides, 1))


def _to_grid(layout: Layout, term, tap: _Tap, out):
  """Zero-pads a tap's product from its valid outputs to the output grid."""
  config = layout.full(term.ndim, [(a, o - 1 - b, 0) for a, b, o in
                                   zip(tap.first, tap.last, out)], (0, 0, 0))
  if all(c == (0, 0, 0) for c in config):
    return term
  return lax.pad(term, jnp.zeros((), term.dtype), config)


def forward(layout: Layout, x, kernel):
  """The depthwise convolution as a sum of shifted taps (one fused loop).

  Each tap multiplies its strided slice of the input by its weights, then
  zero-pads the product to the output grid. (Padding the slice before the
  multiplication computes the same, but XLA:CPU's fused loop then runs
  several times slower.)
  """
  acc_dtype = _accumulation_dtype(x.dtype)
  *_, channels, multiplier = kernel.shape
  _, _, out, taps = geometry(layout, x.shape, kernel.shape)
  batch = x.shape[0]
  xa = x.astype(acc_dtype)
  ka = kernel.astype(acc_dtype)
  total = None
  for tap in taps:
    term = _with_multiplier(layout, _tap_slice(layout, xa, tap), multiplier)
    term = _to_grid(layout, term * _weights(layout, ka[tap.index], multiplier),
                    tap, out)
    total = term if total is None else total + term
  if total is None:  # every tap reads nothing but padding
    total = jnp.zeros(layout.grid(batch, out, channels, multiplier),
                      acc_dtype)
  return _merge_channels(layout, total, batch, out, channels,
                         multiplier).astype(x.dtype)


def _interior(window, out, taps):
  """The output box ``(lo, hi)`` where no tap reads padding, or None."""
  if not taps or len(taps) < math.prod(window):
    return None
  lo = tuple(max(t.first[d] for t in taps) for d in range(len(out)))
  hi = tuple(min(t.last[d] for t in taps) + 1 for d in range(len(out)))
  if any(b <= a for a, b in zip(lo, hi)):
    return None
  return lo, hi


def _crop(layout: Layout, x, lo, hi, window):
  """The outputs ``lo <= q < hi`` alone, as their own convolution.

  Crops the input to what those outputs read and turns the rest into
  padding, so a box that reads no padding needs none. Returns the layout
  (with the new padding) and the cropped input.
  """
  spec = layout.spec
  axes = layout.spatial_axes(x.ndim)
  start, limit, pads = [0] * x.ndim, list(x.shape), []
  for ax, a, b, k, s, d, (before, _) in zip(
      axes, lo, hi, window, spec.strides, spec.dilation_rate, layout.pads):
    first = a * s - before                   # read by output a, first tap
    end = (b - 1) * s + (k - 1) * d - before + 1  # past output b-1, last tap
    start[ax] = min(max(first, 0), x.shape[ax])
    limit[ax] = max(min(end, x.shape[ax]), start[ax])
    pads.append((start[ax] - first, end - limit[ax]))  # < 0: cropped
  return layout._replace(pads=tuple(pads)), lax.slice(x, start, limit)


def _box(layout: Layout, x, kernel, lo, hi):
  """`forward` for the output positions ``lo <= q < hi`` alone."""
  return forward(*_crop(layout, x, lo, hi, kernel.shape[:layout.spec.rank]),
                  kernel)


def _split(layout: Layout, x_shape, kernel_shape, *, kernel_grad: bool):
  """The output size, and the interior box and border slabs tiling it.

  The boxes are ``(lo, hi)`` pairs, the interior first; a slab spans the
  interior along the dims before its own and the whole output along those
  after. None where the policy says the split does not pay, or there is
  no interior.
  """
  _, window, out, taps = geometry(layout, x_shape, kernel_shape)
  plan = _taps_policy.policy(layout.spec.strides, window, out,
                             math.prod(x_shape))
  split = plan.split_kernel_grad if kernel_grad else plan.split_forward
  box = _interior(window, out, taps) if split else None
  if box is None:
    return None
  lo, hi = box
  boxes = [box]
  for d in range(len(out)):
    for a, b in ((0, lo[d]), (hi[d], out[d])):
      if a < b:
        boxes.append((lo[:d] + (a,) + (0,) * (len(out) - d - 1),
                      hi[:d] + (b,) + out[d + 1:]))
  return out, boxes


def split_forward(layout: Layout, x, kernel):
  """`forward` as an interior box plus border slabs, each its own loop.

  XLA:CPU fuses `forward` into one loop that checks, at every output,
  which taps read padding. Here the interior (no padding read) is a loop
  of plain slices, written into its place in the output by a `lax.pad`,
  and the borders are small `forward` loops written over it in place by
  `lax.dynamic_update_slice`.
  """
  split = _split(layout, x.shape, kernel.shape, kernel_grad=False)
  if split is None:
    return forward(layout, x, kernel)
  out, ((lo, hi), *slabs) = split
  y = _box(layout, x, kernel, lo, hi)
  y = lax.pad(y, jnp.zeros((), y.dtype), layout.full(
      y.ndim, [(a, o - b, 0) for a, b, o in zip(lo, hi, out)], (0, 0, 0)))
  for start, limit in slabs:
    y = lax.dynamic_update_slice(y, _box(layout, x, kernel, start, limit),
                                 layout.full(y.ndim, start, 0))
  return y


def split_kernel_grad(layout: Layout, x, ct, **params):
  """`kernel_grad` summed over the boxes of `_split`.

  The interior box reads no padding, so no padded copy of the input is
  made. The border slabs are summed unchunked.
  """
  split = _split(layout, x.shape, params["kernel_shape"], kernel_grad=True)
  if split is None:
    return kernel_grad(layout, x, ct, **params)
  window = params["kernel_shape"][:layout.spec.rank]
  summed = dict(params, kernel_dtype=_accumulation_dtype(x.dtype))
  total = None
  for lo, hi in split[1]:
    limit = list(ct.shape)
    for ax, b in zip(layout.spatial_axes(ct.ndim), hi):
      limit[ax] = b
    g = kernel_grad(*_crop(layout, x, lo, hi, window),
                     lax.slice(ct, layout.full(ct.ndim, lo, 0), limit),
                     **summed, chunked=total is None)
    total = g if total is None else total + g
  return total.astype(params["kernel_dtype"])  # rounded once


def _row_chunk(length: int, plan: _taps_policy.TapsPolicy
               ) -> tuple[int, int, int]:
  """How the kernel gradient chunks `length` rows: (chunk, blocks, tail).

  A chunk in ``plan.row_chunk_range`` that divides `length`, as near
  ``plan.row_chunk`` as possible; else ``plan.row_chunk``-row chunks and a
  shorter tail chunk.
  """
  low, high = plan.row_chunk_range
  if length <= high:
    return length, 1, 0
  divisors = [k for k in range(low, high + 1) if length % k == 0]
  if divisors:
    chunk = min(divisors, key=lambda k: (abs(k - plan.row_chunk), -k))
    return chunk, length // chunk, 0
  return plan.row_chunk, length // plan.row_chunk, length % plan.row_chunk


def _sum_together(terms, axis: int):
  """Sums every array of `terms` over `axis` in one variadic `lax.reduce`.

  XLA:CPU fuses the products that make the terms into this one loop, so
  the taps share one pass over their inputs.
  """
  zeros = [jnp.zeros((), t.dtype) for t in terms]
  return lax.reduce(list(terms), zeros,
                    lambda a, b: tuple(u + v for u, v in zip(a, b)), (axis,))


def kernel_grad(layout: Layout, x, ct, *, kernel_shape, kernel_dtype,
                chunked=True):
  """The depthwise kernel's cotangent: ``sum(x_tap * ct)`` for every tap.

  The input is padded once, so that every tap is a plain strided slice of
  it over the whole output grid. The taps' products are summed over chunks
  of rows (batch x rows for channels-last) by variadic reductions of up to
  the policy's ``taps_per_pass`` taps, each one pass over the input and
  the cotangent, and the partial sums are then reduced per tap. With
  `chunked` False, the taps' products are stacked and summed by one
  reduction: two ops instead of about ten, for the small border slabs of
  `_split`.
  """
  spec = layout.spec
  acc_dtype = _accumulation_dtype(x.dtype)
  *window, channels, multiplier = kernel_shape
  _, _, out, _ = geometry(layout, x.shape, kernel_shape)
  batch = x.shape[0]
  xp = lax.pad(x.astype(acc_dtype), jnp.zeros((), acc_dtype),
               layout.full(x.ndim, [(lo, hi, 0) for lo, hi in layout.pads],
                           (0, 0, 0)))
  grid = layout.grid(batch, out, channels, multiplier)
  g = ct.astype(acc_dtype).reshape(grid)
  ch_axes = layout.channel_axes(len(grid), multiplier)
  axis = layout.spatial_axes(len(grid))[0]  # the chunked axis: rows
  if spec.channels_last:  # batch and rows are adjacent: chunk them as one
    grid = (grid[0] * grid[1],) + grid[2:]
    g = g.reshape(grid)
    ch_axes = tuple(a - 1 for a in ch_axes)
    axis = 0
  plan = _taps_policy.policy(spec.strides, window, out, math.prod(x.shape))
  chunk, blocks, tail = _row_chunk(grid[axis], plan)
  x_axes = layout.spatial_axes(xp.ndim)
  x_grid = list(grid)  # the input broadcasts along the multiplier axis
  if multiplier > 1:
    x_grid[ch_axes[1]] = 1

  def tap_product(index):
    start, limit = [0] * xp.ndim, list(xp.shape)
    for ax, i, s, d, o in zip(x_axes, index, spec.strides,
                              spec.dilation_rate, out):
      start[ax] = i * d
      limit[ax] = i * d + (o - 1) * s + 1
    xs = lax.slice(xp, start, limit, layout.full(xp.ndim, spec.strides, 1))
    xs = _with_multiplier(layout, xs, multiplier)
    return xs.reshape(x_grid) * g

  def per_tap_sum(partial):
    keep = set(ch_axes)
    return jnp.sum(partial, axis=tuple(a for a in range(partial.ndim)
                                       if a not in keep))

  def chunked(products, begin, count, size):
    """Rows [begin, begin + count * size) of each, split into chunks."""
    return [lax.slice_in_dim(p, begin, begin + count * size, axis=axis)
            .reshape(p.shape[:axis] + (count, size) + p.shape[axis + 1:])
            for p in products]

  indices = list(itertools.product(*(range(k) for k in window)))
  if not chunked:
    stacked = jnp.stack([tap_product(i) for i in indices])
    keep = {0} | {a + 1 for a in ch_axes}
    return jnp.sum(stacked, axis=tuple(a for a in range(stacked.ndim)
                                       if a not in keep)
                   ).reshape(kernel_shape).astype(kernel_dtype)
  sums = []
  for first in range(0, len(indices), plan.taps_per_pass):
    products = [tap_product(i)
                for i in indices[first:first + plan.taps_per_pass]]
    partials = _sum_together(chunked(products, 0, blocks, chunk), axis + 1)
    if tail:
      rest = _sum_together(chunked(products, blocks * chunk, 1, tail),
                           axis + 1)
      sums += [per_tap_sum(a) + per_tap_sum(b)
               for a, b in zip(partials, rest)]
    else:
      sums += [per_tap_sum(a) for a in partials]
  return jnp.stack(sums).reshape(kernel_shape).astype(kernel_dtype)


def input_grad(layout: Layout, x_aval, ct, kernel):
  """The input's cotangent: `forward` transposed in `x` (plain JAX).

  The transposed taps: each tap's slice of ``ct`` times its weights,
  scattered back by `lax.pad` (edge padding for the offset, interior
  padding for the stride), summed in one fused loop.
  """
  shape = jax.ShapeDtypeStruct(x_aval.shape, x_aval.dtype)
  transpose = jax.linear_transpose(
      lambda v: forward(layout, v, kernel), shape)
  return transpose(ct)[0]


def _dot(y, w, channels_last: bool, precision):
  """y's channels times w (K, F), accumulated in float32 or wider.

  Channels-last: one (positions, K) @ (K, F) product on a 2-D view of `y`.
  (On the N-D array XLA:CPU transposes the output cotangent before the
  kernel gradient's dot.)
  Channels-first: per image, (F, K) @ (K, positions) as one batched
  product when an image has at least as many positions as channels, else a
  product over the channels followed by moving the filters forward.
  """
  preferred = _accumulation_dtype(y.dtype)
  channels, filters = w.shape
  if channels_last:
    rows = math.prod(y.shape[:-1])
    out = lax.dot_general(y.reshape(rows, channels), w,
                          (((1,), (0,)), ((), ())), precision=precision,
                          preferred_element_type=preferred)
    return out.reshape(y.shape[:-1] + (filters,))
  batch, spatial = y.shape[0], y.shape[2:]
  if math.prod(spatial) >= channels:
    wt = jnp.broadcast_to(w.T, (batch, filters, channels))
    out = lax.dot_general(wt, y.reshape(batch, channels, math.prod(spatial)),
                          (((2,), (1,)), ((0,), (0,))), precision=precision,
                          preferred_element_type=preferred)
    return out.reshape((batch, filters) + spatial)
  out = lax.dot_general(y, w, (((1,), (0,)), ((), ())), precision=precision,
                        preferred_element_type=preferred)
  return jnp.moveaxis(out, -1, 1)


def pointwise(y, kernel, spec: _args.ConvSpec, precision):
  """The pointwise (1x1) step as one matrix product over the channels.

  Plain `lax.dot_general` (see `_dot` for its shape) and plain autodiff:
  XLA:CPU runs the forward product, the input gradient ``g w^T`` and the
  kernel gradient ``y^T g`` in its matmul library.
  """
  channels, filters = kernel.shape[-2:]
  w = kernel.reshape(channels, filters)
  return _dot(y, w, spec.channels_last, precision).astype(y.dtype)
