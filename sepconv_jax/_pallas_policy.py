"""The tile sizes of the "pallas" kernels: every tuning choice, here.

One function per kernel family picks the tiles from the shapes and the
target. None of these were tuned on hardware yet: no GPU or TPU was at
hand when the kernels were written, so the choices below follow each
compiler's constraints and common practice, and ``"auto"`` does not pick
the kernels (see ``docs/performance.md``). Retune them here, with
``scripts/benchmark.py`` on the device, before changing that.

Targets: "gpu" (Triton: every loaded block's size a power of 2, dots of at
least 16 per side) and "tpu" (Mosaic: the last two block dims multiples of
(8, 128) or the whole array dim; the output width is the whole row).
"""

from __future__ import annotations

from typing import NamedTuple


class Tiles(NamedTuple):
  """The blocks of one kernel call."""

  rows: int       # output rows per block (input rows for the input grad)
  cols: int       # output columns per block
  channels: int   # input channels per inner step (or per block)
  filters: int    # output channels per block (pointwise kernels)
  groups: int     # parameter-gradient programs per channel-filter tile (GPU)
  warps: int      # Triton warps per program (GPU)


def _pow2_at_least(n: int, low: int, high: int) -> int:
  p = low
  while p < n and p < high:
    p *= 2
  return p


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def tiles(target: str, *, out_hw: tuple[int, int], channels: int,
          filters: int, positions: int, itemsize: int = 4) -> Tiles:
  """The tiles of a forward, input-gradient or parameter-gradient call.

  Args:
    target: "gpu" or "tpu".
    out_hw: the grid the kernel writes (for the input gradient: the input's
      spatial size).
    channels: the input channels C (the contraction of the pointwise step).
    filters: the output channels F, or C * M for the depthwise step alone.
    positions: N * H' * W' output positions (for the parameter gradient's
      split into groups).
    itemsize: bytes per element of the compute dtype.

  Returns:
    The :class:`Tiles`.
  """
  height, width = out_hw
  if target == "gpu":
    # One output row segment of 16-64 pixels per program: each tap is a
    # (cols, channels) load, the pointwise step one Triton dot per chunk of
    # 16-64 channels, accumulated in registers over up to 128 filters.
    cols = _pow2_at_least(width, 16, 64)
    chans = _pow2_at_least(channels, 16, 64)
    filts = _pow2_at_least(filters, 16, 128)
    # The parameter gradient: enough programs to fill a large GPU (~132
    # SMs, two programs each) without partial sums of more than ~16M floats.
    blocks = max(1, -(-channels // chans) * -(-filters // filts))
    tiles_total = max(1, positions // cols)
    groups = max(1, min(tiles_total, 264 // blocks,
                        (16 << 20) // max(1, channels * filters)))
    return Tiles(rows=1, cols=cols, channels=chans, filters=filts,
                 groups=groups, warps=4)
  if target == "tpu":
    # The whole row width per block, padded to whole sublane tiles (8 rows
    # of 32-bit values, 16 of 16-bit ones), and the most rows that divide
    # the height for at most ~512 pixels, the MXU's preferred height;
    # channels whole up to 2048 (in VMEM with their halo), else 512-lane
    # chunks; filters whole up to 512, else 256-lane blocks.
    cols = _round_up(width, 8 * max(1, 4 // itemsize))
    rows = max([r for r in range(1, height + 1)
                if height % r == 0 and r * cols <= max(512, cols)])
    chans = channels if channels <= 2048 else 512
    filts = filters if filters <= 512 else 256
    return Tiles(rows=rows, cols=cols, channels=chans, filters=filts,
                 groups=1, warps=0)
  raise ValueError(f"`target` (={target!r}) must be 'gpu' or 'tpu'")
