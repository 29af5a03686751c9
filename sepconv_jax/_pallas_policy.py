"""The tile sizes of the "pallas" kernels: every tuning choice, here.

Three functions pick each kernel's blocks, Triton warps and pipeline
stages, and Mosaic's VMEM limit from the shapes and the target's limits:
`gpu_tiles` (the Triton kernels of `_pallas_gpu`), `direct_tiles` (the
TPU's layout-free forward kernel) and `tpu_tiles` (the TPU's layout form). None of these were tuned for speed on hardware yet: no GPU or TPU
was at hand when the kernels were written, so the choices below follow each
compiler's constraints, and were checked to compile on every target of
``scripts/compile_matrix.py`` (TPU v4, v5e, v5p, v6e; A100, L4, H100, B200),
and ``"auto"`` does not pick the kernels (see ``docs/performance.md``).
Retune them here, with ``scripts/benchmark.py`` on the device, before
changing that.

Targets: "gpu" (Triton: every loaded block's size a power of 2, dots of at
least 16 per side; registers hold the gathers' pointers, so ptxas's spill
report, in the compile matrix, sized the blocks) and "tpu" (Mosaic: the
last two block dims multiples of (8, 128) or the whole array dim; the
output width is the whole row).

The kernels learn only "gpu" or "tpu", not the chip, so each form is sized
for the smallest chip of its kind that the project targets:

* GPU: shared memory per block. L4 has 99 KiB (A100 163 KiB, H100 and B200
  227 KiB); the tiles and stages below keep every kernel's operands of its
  dots, pipelined, under `GPU_SHARED_BUDGET`.
* TPU: VMEM. v4 has 16 MiB per core (v5p 64 MiB, v5e and v6e 128 MiB);
  each kernel's blocks (double-buffered) and its live values are estimated
  and kept under `TPU_VMEM_BUDGET`, and Mosaic is told the limit
  (`Tiles.vmem_limit`). Channel tiles are either the whole C or multiples
  of 128 lanes, so that every lane offset a kernel computes is provably
  aligned (Mosaic refuses unaligned dynamic lane offsets).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

#: Shared memory the GPU tiles may use per block (L4: 99 KiB, less margin
#: for Triton's own scratch).
GPU_SHARED_BUDGET = 72 * 1024
#: VMEM the TPU tiles may use (estimated) per kernel, and the scoped limit
#: Mosaic gets: TPU v4's 16 MiB per core.
TPU_VMEM_BUDGET = 11 * 1024 * 1024
TPU_VMEM_LIMIT = 16 * 1024 * 1024

KERNELS = ("forward", "input_grad", "param_grads")


class Tiles(NamedTuple):
  """The blocks of one TPU kernel call."""

  rows: int         # output rows per block (input rows for the input grad)
  cols: int         # output columns per block
  channels: int     # input channels per inner step (or per block)
  filters: int      # output channels per block (pointwise kernels)
  vmem_limit: int   # Mosaic's scoped VMEM limit in bytes


def _pow2_at_least(n: int, low: int, high: int) -> int:
  p = low
  while p < n and p < high:
    p *= 2
  return p


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


class GpuTiles(NamedTuple):
  """The tiles of one GPU (Triton) kernel call."""

  pixels: int     # positions per tile, flattened over (n, h, w)
  channels: int   # channels per chunk (per block: input grad, depthwise)
  filters: int    # filters per block (pointwise kernels)
  groups: int     # partial sums of the parameter gradients
  warps: int      # Triton warps per program
  stages: int     # Triton pipeline stages


GPU_KERNELS = ("forward", "cotangent", "input_grad", "param_grads",
               "pointwise_grads")


def gpu_tiles(kernel: str, *, channels: int, filters: Optional[int],
              multiplier: int, taps: int, positions: int, itemsize: int = 4,
              exact: bool = False) -> GpuTiles:
  """The tiles of a GPU kernel (`_pallas_gpu`).

  Args:
    kernel: "forward", "cotangent" (``ct @ pointwise^T``), "input_grad"
      (the transposed depthwise step), "param_grads" (the depthwise
      kernel's gradient) or "pointwise_grads".
    channels: C.
    filters: F, or None for the depthwise step alone.
    multiplier: M.
    taps: kh * kw.
    positions: the positions the kernel's tiles cover (output positions;
      input positions for "input_grad").
    itemsize: bytes per element of the compute dtype.
    exact: float32 dots at precision "highest" (Triton's exact form).

  Returns:
    The :class:`GpuTiles`.
  """
  if kernel not in GPU_KERNELS:
    raise ValueError(f"`kernel` (={kernel!r}) must be one of {GPU_KERNELS}")
  # Tiles of 64 positions: every tile is full but the last whatever the
  # width, and a (64, 128) float32 accumulator is 32 registers a thread
  # at 8 warps.
  pixels = 64
  if kernel == "forward" and filters is not None:
    # The pointwise dot: chunks of channels (the contraction) by blocks of
    # up to 128 filters. Exact float32 dots run on FMA units and hold
    # their operands in registers: smaller blocks.
    # Chunks of 32 channels: each tap's gathered load is a (pixels,
    # chunk) tensor of 64-bit pointers in registers (64 bfloat16 channels
    # spilled up to 812 bytes on L4).
    # Beyond 9 taps x M (7x7, or multipliers: one depthwise result and
    # one pointwise block per m live) chunks of 16 and blocks of 64
    # (M = 3 spilled 13 KB with 32 x 128 on L4).
    small = taps * multiplier > 9
    chans = _pow2_at_least(channels, 16, 16 if small else 32)
    filts = _pow2_at_least(filters, 16, 64 if exact or multiplier > 1
                           else 128)
    # 8 warps: the gathers' pointers and the accumulator share the
    # registers (4 spilled up to 636 bytes on L4 in bfloat16).
    warps = 8
  elif kernel == "cotangent":
    # A GEMM: blocks of 64 of the C * M outputs, chunks of 32 filters
    # (the contraction; 16 for exact float32 dots).
    chans = _pow2_at_least(channels * multiplier, 16, 64)
    filts = _pow2_at_least(filters, 16, 16 if exact else 32)
    warps = 4
  elif kernel == "pointwise_grads":
    # ``depthwise(x)^T @ ct``: a (channels, filters) float32 sum per m.
    chans = _pow2_at_least(channels, 16, 32)
    filts = _pow2_at_least(filters, 16, 32 if exact or multiplier > 1
                           else 64)
    if taps * multiplier > 9:
      # Beyond 9 taps x M the unrolled recomputation of the depthwise
      # result holds more: tiles of 32 positions, 16 channels (7x7 with
      # 64 x 32 spilled 6-13 KB on L4 and H100).
      pixels, chans = 32, 16
    # With 4 warps, bfloat16 spilled ~800 bytes (H100, L4).
    warps = 8
  else:
    # Element-wise over (positions, channels): the depthwise step alone,
    # the transposed depthwise step, the depthwise kernel's gradient (its
    # taps x M sums of `chans` are loop carries: smaller chunks there).
    wide = 32 if kernel == "param_grads" and taps * multiplier > 9 else 64
    chans = _pow2_at_least(channels, 16, wide)
    filts = 16
    warps = 4
  # Operands of the dots staged through shared memory (one pointwise
  # block per m), `stages` copies.
  per_stage = (pixels * chans + multiplier * chans * filts) * itemsize
  stages = 2 if 2 * per_stage <= GPU_SHARED_BUDGET and taps <= 9 else 1

  groups = 1
  if kernel in ("param_grads", "pointwise_grads"):
    # Enough programs to fill a large GPU (~132 SMs, two programs each)
    # with partial sums of at most ~16M floats.
    blocks = _cdiv(channels, chans) * (
        _cdiv(filters, filts) if kernel == "pointwise_grads" else 1)
    tiles_total = _cdiv(positions, pixels)
    size = channels * (filters or 1) * multiplier if kernel == \
        "pointwise_grads" else channels * multiplier * taps
    groups = max(1, min(tiles_total, 264 // blocks, (16 << 20) // size))
  return GpuTiles(pixels=pixels, channels=chans, filters=filts,
                  groups=groups, warps=warps, stages=stages)


def _cdiv(a: int, b: int) -> int:
  return -(-a // b)


def _tpu_vmem(kernel: str, rows: int, cols: int, tc: int, cp: int, tf: int,
              fp: int, *, itemsize: int, taps: int, multiplier: int,
              halo: tuple[int, int], phases: int) -> int:
  """Estimated VMEM bytes of a TPU kernel: its blocks, double-buffered,
  and its largest live float32 values."""
  eh, ew = halo
  pix, hpix = rows * cols, (rows + eh) * (cols + ew)
  f32 = 4
  if kernel == "forward":
    blocks = (phases * hpix * cp + taps * multiplier * cp
              + multiplier * cp * tf + pix * tf) * itemsize
    live = pix * (tf + (multiplier + 2) * tc) * f32
  elif kernel == "input_grad":
    blocks = (hpix * fp + taps * fp * tc + pix * tc) * itemsize
    live = pix * (tc + 2 * tf) * f32
  else:
    blocks = (phases * hpix * tc + taps * multiplier * tc
              + multiplier * tc * tf + pix * tf) * itemsize
    blocks += (multiplier * tc * tf + taps * multiplier * tc + tf) * f32
    live = (pix * ((multiplier + 2) * tc + 2 * tf)
            + multiplier * tc * tf) * f32
  return 2 * blocks + live


def _tpu(kernel: str, *, height: int, width: int, channels: int,
         filters: int, itemsize: int, taps: int, multiplier: int,
         halo: tuple[int, int], phases: int) -> Tiles:
  # The whole row width per block, padded to whole sublane tiles (8 rows
  # of 32-bit values, 16 of 16-bit ones), and the most rows that divide
  # the height for at most ~512 pixels, the MXU's preferred height.
  cols = _round_up(width, 8 * max(1, 4 // itemsize))
  row_choices = sorted((r for r in range(1, height + 1)
                        if height % r == 0 and r * cols <= max(512, cols)),
                       reverse=True)
  # Filters whole up to 512, else 256-lane blocks (input gradient: chunks).
  filts = filters if filters <= 512 else 256
  fp = _round_up(filters, filts)
  # Channels whole, or tiles of a multiple of 128 lanes (C padded to 128).
  c128 = _round_up(channels, 128)
  chan_choices = [channels] + [
      k * 128 for k in range(c128 // 128, 0, -1)
      if (c128 // 128) % k == 0 and k * 128 < channels]
  if kernel == "forward":
    chan_choices = [c for c in chan_choices if c <= 2048] or [512]
  vmem = lambda r, c: _tpu_vmem(
      kernel, r, cols, c, channels if c == channels else c128, filts, fp,
      itemsize=itemsize, taps=taps, multiplier=multiplier, halo=halo,
      phases=phases)
  choice = None
  for rows in row_choices:
    for chans in chan_choices:
      if vmem(rows, chans) <= TPU_VMEM_BUDGET:
        choice = rows, chans
        break
    if choice is not None:
      break
  if choice is None:  # the smallest blocks; Mosaic decides
    choice = row_choices[-1], chan_choices[-1]
  rows, chans = choice
  return Tiles(rows=rows, cols=cols, channels=chans, filters=filts,
               vmem_limit=TPU_VMEM_LIMIT)


class DirectTiles(NamedTuple):
  """The blocks of the TPU's direct forward kernel."""

  rows: int      # output rows per block
  filters: int   # filters per block


def direct_tiles(*, height: int, width: int, padded_width: int,
                 out_hw: tuple[int, int], channels: int, filters: int,
                 itemsize: int, taps: int, row_step: int, row_extent: int,
                 strided: bool) -> Optional[DirectTiles]:
  """The blocks of `_pallas_tpu.forward_direct`, or None where its VMEM
  (estimated) exceeds `TPU_VMEM_BUDGET` even with one output row per
  block and the smallest filter block: then the layout form serves.

  Args:
    height, width: the input's H and W.
    padded_width: a row's width with its zero columns.
    out_hw: the output's H' and W'.
    channels, filters: C and F.
    itemsize: bytes per element of the compute dtype.
    taps: kh * kw.
    row_step, row_extent: the stride along H and ``(kh - 1) * d_h``.
    strided: a stride along W (the padded rows are then float32: Mosaic's
      strided loads take 32-bit values only).
  """
  ho, wo = out_hw
  f32 = 4
  # Filters whole (one block, the depthwise result used once), else the
  # largest multiple of 128 lanes that divides F.
  choices = [filters] + [k for k in range(filters - filters % 128, 127, -128)
                         if k < filters and filters % k == 0]

  def vmem(rows: int, tf: int) -> int:
    rows_in = min(height, (rows - 1) * row_step + row_extent + 1)
    scratch = (rows_in * width * channels * itemsize
               + rows_in * padded_width * channels * (f32 if strided
                                                      else itemsize)
               + rows * wo * channels * itemsize)
    blocks = 2 * (taps * channels + channels * tf + tf
                  + rows * wo * tf) * itemsize
    live = wo * (2 * channels + tf) * f32
    return scratch + blocks + live

  # About 512 output pixels per block (the MXU's preferred height).
  most = max(1, min(ho, 512 // max(1, wo)))
  for tf in choices:
    for rows in range(most, 0, -1):
      if vmem(rows, tf) <= TPU_VMEM_BUDGET:
        return DirectTiles(rows=rows, filters=tf)
  return None


def tpu_tiles(kernel: str, *, out_hw: tuple[int, int], channels: int,
              filters: int, itemsize: int = 4, taps: int = 9,
              multiplier: int = 1, halo: tuple[int, int] = (2, 2),
              phases: int = 1) -> Tiles:
  """The tiles of a TPU (Mosaic) kernel (`_pallas_tpu`).

  Args:
    kernel: "forward", "input_grad" or "param_grads".
    out_hw: the grid the kernel writes (for the input gradient: the input's
      spatial size).
    channels: the input channels C (the contraction of the pointwise step).
    filters: the output channels F, or C * M for the depthwise step alone.
    itemsize: bytes per element of the compute dtype.
    taps, multiplier, halo, phases: the kernel's taps, the depth
      multiplier, the extra rows and columns a block reads, and the stride
      phases of the input (for the VMEM estimate).

  Returns:
    The :class:`Tiles`.
  """
  if kernel not in KERNELS:
    raise ValueError(f"`kernel` (={kernel!r}) must be one of {KERNELS}")
  height, width = out_hw
  return _tpu(kernel, height=height, width=width, channels=channels,
              filters=filters, itemsize=itemsize, taps=taps,
              multiplier=multiplier, halo=halo, phases=phases)
