"""The "taps" implementation: shifted multiply-adds, then a matmul.

XLA:CPU runs a grouped convolution (``feature_group_count``) as a slow
generic loop, and differentiates its kernel through ``batch_group_count``,
which it expands into a dense ``C x C`` convolution. This module computes
the same depthwise-separable convolution from operations XLA:CPU compiles
well.

Forward pass
  The depthwise step is a sum over the ``prod(kernel_size)`` kernel taps.
  Each tap is a strided `lax.slice` of the input (the part of it the tap
  sees), zero-padded to the output grid, times that tap's ``(C, M)``
  weights. XLA fuses the whole sum into one loop, so neither a padded copy
  nor an im2col copy of the input is materialised: the only temporary of a
  separable forward pass is the depthwise result. Accumulation is in float32
  (or wider). The pointwise step is one `lax.dot_general` over the
  channels, which XLA:CPU hands to its matmul library.

Derivatives
  The depthwise step is a `jax.custom_jvp` function whose tangent map is
  built so that JAX's automatic *transposition* of it -- the backward
  pass -- is what XLA:CPU runs well, while forward mode (`jax.jvp`,
  `jax.hessian`) and derivatives of any order keep working:

  * the input gradient is the transposed taps: each tap's slice of the
    output cotangent times its weights, scattered back by `lax.pad` (edge
    padding for the offset, interior padding for the stride), summed in
    one fused loop;
  * the depthwise-kernel gradient ``sum(x_tap * g)`` is the part XLA:CPU
    handles worst (it hands each tap's reduction, with a materialised
    product, to a library call). `_kernel_tangent` makes its transpose sum
    each tap's product over chunks of rows with explicit adds in one fused
    loop per tap; the taps' partial sums meet in one concatenation and one
    reduction;
  * the pointwise step is a plain `lax.dot_general`, differentiated as is
    (see `pointwise`).

  Linearising saves only the inputs and the depthwise result for the
  backward pass (`_kernel_tangent` is rematerialised), as "lax" does.

Everything is written for any number of spatial dimensions and both data
formats; `_ops` reshapes every input to one batch axis first.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from sepconv_jax import _args

#: The depthwise-kernel gradient sums each tap's product over chunks of this
#: many output rows with explicit adds before its final reduction.
_ROW_CHUNK = 8


class _Tap(NamedTuple):
  """Where one kernel tap reads, along every spatial dimension.

  Output position ``q`` reads input ``q * stride + offset``; ``first`` and
  ``last`` bound the output positions whose input is not padding.
  """

  index: tuple[int, ...]   # the tap's position in the kernel window
  offset: tuple[int, ...]  # index * dilation - padding before
  first: tuple[int, ...]
  last: tuple[int, ...]


class _Layout(NamedTuple):
  """The static configuration of one call (hashable: a custom_jvp arg)."""

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


def _geometry(layout: _Layout, x_shape, kernel_shape):
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


def _weights(layout: _Layout, w, multiplier: int):
  """One tap's (C, M) weights, shaped to broadcast against the grid."""
  if multiplier == 1:
    w = w[:, 0]
  if layout.spec.channels_last:
    return w
  return w.reshape(w.shape + (1,) * layout.spec.rank)


def _with_multiplier(layout: _Layout, x, multiplier: int):
  """Adds the multiplier axis after the channel axis (when it is > 1)."""
  if multiplier == 1:
    return x
  return x[..., None] if layout.spec.channels_last else x[:, :, None]


def _merge_channels(layout: _Layout, y, batch, out, channels, multiplier):
  if layout.spec.channels_last:
    return y.reshape(batch, *out, channels * multiplier)
  return y.reshape(batch, channels * multiplier, *out)


def _tap_slice(layout: _Layout, x, tap: _Tap):
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


def _to_grid(layout: _Layout, term, tap: _Tap, out):
  """Zero-pads a tap's product from its valid outputs to the output grid."""
  config = layout.full(term.ndim, [(a, o - 1 - b, 0) for a, b, o in
                                   zip(tap.first, tap.last, out)], (0, 0, 0))
  if all(c == (0, 0, 0) for c in config):
    return term
  return lax.pad(term, jnp.zeros((), term.dtype), config)


def _forward(layout: _Layout, x, kernel):
  """The depthwise convolution as a sum of shifted taps (one fused loop).

  Each tap multiplies its strided slice of the input by its weights, then
  zero-pads the product to the output grid. (Padding the slice before the
  multiplication computes the same, but XLA:CPU's fused loop then runs
  about 3x slower.)
  """
  acc_dtype = _accumulation_dtype(x.dtype)
  *_, channels, multiplier = kernel.shape
  _, _, out, taps = _geometry(layout, x.shape, kernel.shape)
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


def _row_chunk(length: int) -> tuple[int, int, int]:
  """How the kernel gradient chunks `length` rows: (chunk, blocks, tail).

  A chunk of 5 to 14 rows that divides `length`, as near `_ROW_CHUNK` as
  possible; else `_ROW_CHUNK`-row chunks and a shorter tail chunk. (XLA:CPU
  stops fusing the product into the adds for much longer chunks, and
  shorter ones leave more partial sums to reduce.)
  """
  if length <= 14:
    return length, 1, 0
  divisors = [k for k in range(5, 15) if length % k == 0]
  if divisors:
    chunk = min(divisors, key=lambda k: (abs(k - _ROW_CHUNK), -k))
    return chunk, length // chunk, 0
  return _ROW_CHUNK, length // _ROW_CHUNK, length % _ROW_CHUNK


def _spread(piece, axis: int, chunk: int, blocks: int, tail: int):
  """Repeats each block of `piece` (along `axis`) over its chunk of rows.

  `piece` has ``blocks`` (+ 1 with a tail) blocks along `axis`; the result
  has ``blocks * chunk + tail`` rows. Built by stacking copies, so that its
  transpose sums every chunk with explicit adds.
  """
  def repeat(p, times):
    v = jnp.stack([p] * times, axis=axis + 1)
    return v.reshape(v.shape[:axis] + (-1,) + v.shape[axis + 2:])
  if not tail:
    return repeat(piece, chunk)
  main, last = lax.split(piece, (blocks, 1), axis=axis)
  return lax.concatenate([repeat(main, chunk), repeat(last, tail)], axis)


def _kernel_tangent(layout: _Layout, x, kernel_tangent):
  """``_forward(layout, x, kernel_tangent)``, assembled for transposition.

  The value is that of the plain taps, but the tangent of every tap is
  spread over the output grid by stacking copies of it along the rows (see
  `_spread`; channels-last grids chunk batch x rows as one axis), not by a
  broadcast, and the taps come out of one `lax.split`. JAX transposes a
  stack into slices whose cotangents add up, and a split into a
  concatenation, so the backward pass computes, for every tap, the product
  ``x_tap * g`` summed over chunks of rows by explicit adds -- one fused
  loop per tap -- then concatenates the taps' partial sums and reduces them
  at once. (A broadcast would transpose to one reduction per tap, which
  XLA:CPU hands to a library call together with a materialised product:
  several times slower.)
  """
  spec = layout.spec
  acc_dtype = _accumulation_dtype(x.dtype)
  *_, channels, multiplier = kernel_tangent.shape
  _, window, out, _ = _geometry(layout, x.shape, kernel_tangent.shape)
  batch = x.shape[0]
  # Pad the input once so that every tap is a plain strided slice of it
  # over the whole output grid (taps in the padding read zeros).
  xp = lax.pad(x.astype(acc_dtype), jnp.zeros((), acc_dtype),
               layout.full(x.ndim, [(lo, hi, 0) for lo, hi in layout.pads],
                           (0, 0, 0)))
  grid = layout.grid(batch, out, channels, multiplier)
  ch_axes = layout.channel_axes(len(grid), multiplier)
  axis = layout.spatial_axes(len(grid))[0]  # the chunked axis: rows
  if spec.channels_last:  # batch and rows are adjacent: chunk them as one
    grid = (grid[0] * grid[1],) + grid[2:]
    ch_axes = tuple(a - 1 for a in ch_axes)
    axis = 0
  chunk, blocks, tail = _row_chunk(grid[axis])
  block_grid = grid[:axis] + (blocks + (1 if tail else 0),) + grid[axis + 1:]
  indices = list(itertools.product(*(range(k) for k in window)))
  ch = (channels,) if multiplier == 1 else (channels, multiplier)
  kt = kernel_tangent.astype(acc_dtype).reshape(len(indices), *ch)
  spread = lax.broadcast_in_dim(kt, (len(indices), *block_grid),
                                (0, *(1 + a for a in ch_axes)))
  pieces = lax.split(spread, (1,) * len(indices), axis=0)
  x_axes = layout.spatial_axes(xp.ndim)
  total = None
  for piece, index in zip(pieces, indices):
    v = _spread(piece.reshape(block_grid), axis, chunk, blocks, tail)
    start, limit = [0] * xp.ndim, list(xp.shape)
    for ax, i, s, d, o in zip(x_axes, index, spec.strides,
                              spec.dilation_rate, out):
      start[ax] = i * d
      limit[ax] = i * d + (o - 1) * s + 1
    xs = lax.slice(xp, start, limit, layout.full(xp.ndim, spec.strides, 1))
    xs = _with_multiplier(layout, xs, multiplier)
    if spec.channels_last:
      xs = xs.reshape((-1,) + xs.shape[2:])
    term = xs * v
    total = term if total is None else total + term
  return _merge_channels(layout, total, batch, out, channels, multiplier)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _depthwise(layout: _Layout, x, kernel):
  return _forward(layout, x, kernel)


@functools.partial(_depthwise.defjvp, symbolic_zeros=True)
def _depthwise_jvp(layout, primals, tangents):
  x, kernel = primals
  x_dot, kernel_dot = tangents
  y = _forward(layout, x, kernel)
  acc_dtype = _accumulation_dtype(y.dtype)
  zero = jax.custom_derivatives.SymbolicZero
  y_dot = None
  if not isinstance(x_dot, zero):
    # Linear in x_dot; JAX transposes it into the input gradient: one fused
    # loop of pads (edge padding for the offset, interior for the stride).
    y_dot = _forward(layout, x_dot, kernel).astype(acc_dtype)
  if not isinstance(kernel_dot, zero):
    # Rematerialised: linearising must save `x` alone for the backward
    # pass, not the shifted taps of x that the tangent reads (one
    # activation per tap would outlive a jitted forward pass).
    tangent = jax.checkpoint(functools.partial(_kernel_tangent, layout),
                             prevent_cse=False)
    term = tangent(x, kernel_dot)
    y_dot = term if y_dot is None else y_dot + term
  if y_dot is None:
    y_dot = jnp.zeros(y.shape, acc_dtype)
  return y, y_dot.astype(y.dtype)


def depthwise(x, kernel, spec: _args.ConvSpec, pads, precision):
  """The depthwise step (see the module docstring)."""
  del precision  # elementwise products, exact in the accumulation dtype
  layout = _Layout(spec, tuple((int(lo), int(hi)) for lo, hi in pads))
  return _depthwise(layout, x, kernel)


def _dot(y, w, channels_last: bool, precision):
  """y's channels times w (K, F), accumulated in float32 or wider.

  Channels-last: one (positions, K) @ (K, F) product on a 2-D view of `y`.
  (On the N-D array XLA:CPU transposes the output cotangent before the
  kernel gradient's dot, which made a training step up to 5x slower.)
  Channels-first: per image, (F, K) @ (K, positions) as one batched
  product when an image has at least as many positions as channels, else a
  product over the channels followed by moving the filters forward.
  """
  preferred = _accumulation_dtype(y.dtype)
  channels, filters = w.shape
  if channels_last:
    out = lax.dot_general(y.reshape(-1, channels), w,
                          (((1,), (0,)), ((), ())), precision=precision,
                          preferred_element_type=preferred)
    return out.reshape(y.shape[:-1] + (filters,))
  batch, spatial = y.shape[0], y.shape[2:]
  if math.prod(spatial) >= channels:
    wt = jnp.broadcast_to(w.T, (batch, filters, channels))
    out = lax.dot_general(wt, y.reshape(batch, channels, -1),
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
