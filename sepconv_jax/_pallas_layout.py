"""The layouts the "pallas" kernels read, made by XLA around the kernels.

The kernels see only in-bounds, contiguous blocks: XLA pads every input
once (spatial padding, the tile grid's remainder, channels and filters to
whole tiles), and turns strides into phases, so that each kernel tap is a
plain window at a static offset:

* `phased_input`: ``x`` padded, as ``(N, s_h, s_w, H_q, W_q, C_p)``, where
  padded row ``R = q * s_h + a`` sits at ``[a, q]``; output row ``r``'s tap
  ``i`` reads ``R = r * s_h + i * d_h``, i.e. phase ``(i * d_h) % s_h`` at
  ``q = r + (i * d_h) // s_h``.
* `dilated_cotangent`: the output cotangent with ``s - 1`` zeros between
  rows and columns, padded so that the input gradient is a stride-1
  correlation with the flipped kernel.
* the weights as ``(taps, M, C_p)``, ``(M, C_p, F_p)`` and the flipped
  products ``(taps, F_p, C_p)`` of the input gradient.

All sizes are static: `Geometry` holds them.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from sepconv_jax import _pallas_policy


def _cdiv(a: int, b: int) -> int:
  return -(-a // b)


class Config(NamedTuple):
  """The static configuration of one call (a primitive param)."""

  strides: tuple[int, int]
  dilation: tuple[int, int]
  pads: tuple[tuple[int, int], tuple[int, int]]
  precision: Optional[tuple[lax.Precision, lax.Precision]]

  def out_hw(self, hw: tuple[int, int],
             kernel: tuple[int, int]) -> tuple[int, int]:
    """The output's (H', W') for an input of (H, W) and a (kh, kw) kernel."""
    return tuple(
        (size + lo + hi - (k - 1) * d - 1) // s + 1
        for size, (lo, hi), k, s, d in zip(hw, self.pads, kernel,
                                           self.strides, self.dilation))


class Geometry(NamedTuple):
  """Every static size of one call, for one target's tiles."""

  batch: int
  size: tuple[int, int]         # H, W
  channels: int                 # C
  multiplier: int               # M
  filters: int                  # F; C * M for the depthwise step alone
  kernel: tuple[int, int]       # kh, kw
  out: tuple[int, int]          # H', W'
  cfg: Config
  tiles: _pallas_policy.Tiles

  @property
  def taps(self) -> tuple[tuple[int, int, int, int], ...]:
    """Each tap's (phase_h, phase_w, row offset, column offset)."""
    (sh, sw), (dh, dw) = self.cfg.strides, self.cfg.dilation
    kh, kw = self.kernel
    return tuple(((i * dh) % sh, (j * dw) % sw, (i * dh) // sh,
                  (j * dw) // sw) for i in range(kh) for j in range(kw))

  @property
  def halo(self) -> tuple[int, int]:
    """Extra phased rows and columns a block of outputs reads."""
    (sh, sw), (dh, dw) = self.cfg.strides, self.cfg.dilation
    kh, kw = self.kernel
    return ((kh - 1) * dh) // sh, ((kw - 1) * dw) // sw

  @property
  def blocks(self) -> tuple[int, int]:
    """Row and column blocks of the output grid."""
    return (_cdiv(self.out[0], self.tiles.rows),
            _cdiv(self.out[1], self.tiles.cols))

  @property
  def padded_out(self) -> tuple[int, int]:
    rb, cb = self.blocks
    return rb * self.tiles.rows, cb * self.tiles.cols

  @property
  def padded_channels(self) -> int:
    return _cdiv(self.channels, self.tiles.channels) * self.tiles.channels

  @property
  def padded_filters(self) -> int:
    return _cdiv(self.filters, self.tiles.filters) * self.tiles.filters

  @property
  def input_blocks(self) -> tuple[int, int]:
    """Row and column blocks of the input grid (for the input gradient)."""
    return (_cdiv(self.size[0], self.tiles.rows),
            _cdiv(self.size[1], self.tiles.cols))


def geometry(x_shape, kernel_shape, filters: Optional[int], cfg: Config,
             *, kernel: str = "forward", itemsize: int = 4) -> Geometry:
  """The `Geometry` of a call, with the tiles of `kernel` ("forward",
  "input_grad", whose grid is the input's, or "param_grads")."""
  n, h, w, c = x_shape
  kh, kw, _, m = kernel_shape
  out = cfg.out_hw((h, w), (kh, kw))
  f = c * m if filters is None else filters
  (sh, sw), (dh, dw) = cfg.strides, cfg.dilation
  if kernel == "input_grad":
    tiled, halo, phases = (h, w), ((kh - 1) * dh, (kw - 1) * dw), 1
  else:
    tiled, phases = out, sh * sw
    halo = ((kh - 1) * dh) // sh, ((kw - 1) * dw) // sw
  tiles = _pallas_policy.tpu_tiles(kernel, out_hw=tiled, channels=c,
                                   filters=f, itemsize=itemsize, taps=kh * kw,
                                   multiplier=m, halo=halo, phases=phases)
  return Geometry(n, (h, w), c, m, f, (kh, kw), out, cfg, tiles)


def phased_input(x: jax.Array, g: Geometry) -> jax.Array:
  """``x`` padded and split into stride phases (see the module docstring)."""
  n, (h, w), c = g.batch, g.size, g.channels
  (sh, sw), ((pt, _), (pl, _)) = g.cfg.strides, g.cfg.pads
  (ho, wo), (eh, ew) = g.padded_out, g.halo
  hq, wq, cp = ho + eh, wo + ew, g.padded_channels
  zero = jnp.zeros((), x.dtype)
  # Negative high padding crops rows and columns no output reads.
  xp = lax.pad(x, zero, ((0, 0, 0), (pt, hq * sh - h - pt, 0),
                         (pl, wq * sw - w - pl, 0), (0, cp - c, 0)))
  xp = xp.reshape(n, hq, sh, wq, sw, cp)
  if sh == sw == 1:
    return xp.reshape(n, 1, 1, hq, wq, cp)
  return xp.transpose(0, 2, 4, 1, 3, 5)


def depthwise_weights(dk: jax.Array, g: Geometry) -> jax.Array:
  """``(kh, kw, C, M)`` -> ``(taps, M, C_p)``."""
  kh, kw, c, m = dk.shape
  dk = jnp.pad(dk, ((0, 0), (0, 0), (0, g.padded_channels - c), (0, 0)))
  return dk.reshape(kh * kw, g.padded_channels, m).transpose(0, 2, 1)


def pointwise_weights(pk: jax.Array, g: Geometry) -> jax.Array:
  """``(C * M, F)`` -> ``(M, C_p, F_p)``: row ``c * M + m`` at ``[m, c]``."""
  c, m, f = g.channels, g.multiplier, g.filters
  pk = pk.reshape(c, m, f).transpose(1, 0, 2)
  return jnp.pad(pk, ((0, 0), (0, g.padded_channels - c),
                      (0, g.padded_filters - f)))


def bias(b: jax.Array, g: Geometry, depthwise_only: bool) -> jax.Array:
  """``(F,)`` -> ``(1, F_p)``; for the depthwise step ``(C * M,)`` ->
  ``(M, C_p)``."""
  if depthwise_only:
    b = b.reshape(g.channels, g.multiplier).T
    return jnp.pad(b, ((0, 0), (0, g.padded_channels - g.channels)))
  return jnp.pad(b, (0, g.padded_filters - g.filters)).reshape(1, -1)


def output_cotangent(ct: jax.Array, g: Geometry,
                     depthwise_only: bool) -> jax.Array:
  """The output cotangent padded to the tile grid: ``(N, H'_p, W'_p, F_p)``;
  for the depthwise step alone ``(N, M, H'_p, W'_p, C_p)``."""
  (ho, wo), (hp, wp) = g.out, g.padded_out
  if depthwise_only:
    n, c, m = g.batch, g.channels, g.multiplier
    ct = ct.reshape(n, ho, wo, c, m).transpose(0, 4, 1, 2, 3)
    return jnp.pad(ct, ((0, 0), (0, 0), (0, hp - ho), (0, wp - wo),
                        (0, g.padded_channels - c)))
  return jnp.pad(ct, ((0, 0), (0, hp - ho), (0, wp - wo),
                      (0, g.padded_filters - g.filters)))


def dilated_cotangent(ct: jax.Array, g: Geometry,
                      depthwise_only: bool) -> jax.Array:
  """The output cotangent laid out for the input gradient.

  Rows and columns get ``s - 1`` zeros between them and are shifted so
  that input position ``h`` gets ``sum_i ct_q[h + i * d] * w[kh - 1 - i]``
  (a stride-1 correlation with the flipped kernel). The input gradient's
  tiles (``g`` made with ``kernel="input_grad"``) set the padded size. Shape
  ``(N, H_p + e_h, W_p + e_w, F_p)``, or ``(N, M, ..., C_p)`` for the
  depthwise step alone.
  """
  (sh, sw), (dh, dw) = g.cfg.strides, g.cfg.dilation
  (pt, _), (pl, _) = g.cfg.pads
  (kh, kw), (ho, wo) = g.kernel, g.out
  eh, ew = (kh - 1) * dh, (kw - 1) * dw
  rb, cb = g.input_blocks
  hg, wg = rb * g.tiles.rows + eh, cb * g.tiles.cols + ew
  zero = jnp.zeros((), ct.dtype)
  rows = (eh - pt, hg - (eh - pt) - ((ho - 1) * sh + 1), sh - 1)
  cols = (ew - pl, wg - (ew - pl) - ((wo - 1) * sw + 1), sw - 1)
  if depthwise_only:
    n, c, m = g.batch, g.channels, g.multiplier
    ct = ct.reshape(n, ho, wo, c, m).transpose(0, 4, 1, 2, 3)
    return lax.pad(ct, zero, ((0, 0, 0), (0, 0, 0), rows, cols,
                              (0, g.padded_channels - c, 0)))
  return lax.pad(ct, zero, ((0, 0, 0), rows, cols,
                            (0, g.padded_filters - g.filters, 0)))


def flipped_products(dk: jax.Array, pk: jax.Array, g: Geometry) -> jax.Array:
  """``pkw[t, f, c] = sum_m pk[c * M + m, f] * dk[flip(t), c, m]``.

  The input gradient's weights: tap ``t`` of the flipped kernel times the
  pointwise kernel, so that ``dx = sum_t window_t(ct) @ pkw[t]``. Computed
  in float32 and stored in the compute dtype. Shape ``(taps, F_p, C_p)``.
  """
  kh, kw, c, m = dk.shape
  flipped = dk[::-1, ::-1].reshape(kh * kw, c, m).astype(jnp.float32)
  pkr = pk.reshape(c, m, -1).astype(jnp.float32)
  pkw = jnp.einsum("tcm,cmf->tfc", flipped, pkr, precision=g.cfg.precision)
  pkw = jnp.pad(pkw, ((0, 0), (0, g.padded_filters - g.filters),
                      (0, g.padded_channels - c)))
  return pkw.astype(dk.dtype)


def flipped_depthwise_weights(dk: jax.Array, g: Geometry) -> jax.Array:
  """The flipped kernel as ``(taps, M, C_p)`` (depthwise step alone)."""
  return depthwise_weights(dk[::-1, ::-1], g)
