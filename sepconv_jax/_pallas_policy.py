"""The tile sizes of the "pallas" kernels: every tuning choice, here.

One function, `tiles`, picks each kernel's blocks, Triton warps and
pipeline stages, and Mosaic's VMEM limit from the shapes and the target's
limits. None of these were tuned for speed on hardware yet: no GPU or TPU
was at hand when the kernels were written, so the choices below follow each
compiler's constraints, and were checked to compile on every target of
``scripts/compile_matrix.py`` (TPU v4, v5e, v5p, v6e; A100, L4, H100, B200),
and ``"auto"`` does not pick the kernels (see ``docs/performance.md``).
Retune them here, with ``scripts/benchmark.py`` on the device, before
changing that.

Targets: "gpu" (Triton: every loaded block's size a power of 2, dots of at
least 16 per side) and "tpu" (Mosaic: the last two block dims multiples of
(8, 128) or the whole array dim; the output width is the whole row).

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

from typing import NamedTuple

#: Shared memory the GPU tiles may use per block (L4: 99 KiB, less margin
#: for Triton's own scratch).
GPU_SHARED_BUDGET = 72 * 1024
#: VMEM the TPU tiles may use (estimated) per kernel, and the scoped limit
#: Mosaic gets: TPU v4's 16 MiB per core.
TPU_VMEM_BUDGET = 11 * 1024 * 1024
TPU_VMEM_LIMIT = 16 * 1024 * 1024

KERNELS = ("forward", "input_grad", "param_grads")


class Tiles(NamedTuple):
  """The blocks of one kernel call."""

  rows: int       # output rows per block (input rows for the input grad)
  cols: int       # output columns per block
  channels: int   # input channels per inner step (or per block)
  filters: int    # output channels per block (pointwise kernels)
  groups: int     # parameter-gradient programs per channel-filter tile (GPU)
  warps: int      # Triton warps per program (GPU)
  stages: int = 1       # Triton pipeline stages (GPU)
  vmem_limit: int = 0   # Mosaic's scoped VMEM limit in bytes (TPU; 0: none)


def _pow2_at_least(n: int, low: int, high: int) -> int:
  p = low
  while p < n and p < high:
    p *= 2
  return p


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _gpu(kernel: str, *, width: int, channels: int, filters: int,
         positions: int, itemsize: int, taps: int, multiplier: int,
         exact: bool) -> Tiles:
  cols = _pow2_at_least(width, 16, 64)
  if kernel == "forward":
    # One output row segment of 16-64 pixels per program: each tap is a
    # (cols, channels) load, the pointwise step one Triton dot per chunk
    # of 16-64 channels, accumulated in registers over up to 128 filters.
    # Float32 chunks of 32 channels: 64 spilled at 28x28x256 (ptxas).
    chans = _pow2_at_least(channels, 16, 64 if itemsize < 4 else 32)
    filts = _pow2_at_least(filters, 16, 128)
  elif kernel == "input_grad":
    # `channels` is dx's channel tile, `filters` the chunk of the
    # cotangent each of the taps' dots contracts.
    # Exact float32 dots (precision "highest": FMA, no tensor cores) hold
    # far more in registers: chunks of 16 filters (64 spilled ~11 KB).
    chans = _pow2_at_least(channels, 16, 64)
    filts = _pow2_at_least(filters, 16, 16 if exact else 64)
  else:
    # The parameter gradient keeps a (channels, filters) float32 sum in
    # registers across its loop (32 x 64: 16 registers a thread) besides
    # the two dots' operands; blocks of 16 pixels compile without spills
    # (32 spilled ~0.5 KB on H100).
    cols = _pow2_at_least(width, 16, 16)
    chans = _pow2_at_least(channels, 16, 32)
    filts = _pow2_at_least(filters, 16, 64)
  # Operands of one dot (A, B), staged through shared memory; pipelining
  # keeps `stages` copies of each.
  per_stage = (cols * chans + chans * filts + cols * filts) * itemsize
  # Beyond 3x3 the forward loop's taps' loads are staged too (7x7 with 2
  # stages asked 218 KiB on A100 in bfloat16): 1 stage there.
  stages = 2 if (kernel == "forward" and taps <= 9
                 and 2 * per_stage <= GPU_SHARED_BUDGET) else 1
  groups = 1
  if kernel == "param_grads":
    # Enough programs to fill a large GPU (~132 SMs, two programs each)
    # without partial sums of more than ~16M floats.
    blocks = max(1, -(-channels // chans) * -(-filters // filts))
    tiles_total = max(1, positions // cols)
    groups = max(1, min(tiles_total, 264 // blocks,
                        (16 << 20) // max(1, channels * filters)))
  # Warps: 8 for the forward pass's larger float32 values ((cols, filters)
  # accumulator and (cols, channels) depthwise result), so that they fit
  # the registers without spilling; else 4. The input gradient: 8 with
  # (32+, 64) blocks (4 spilled 88 bytes at 28x28x256), 4 with 32 channels
  # (8 spilled 48 bytes at 112x112x32).
  if kernel == "forward":
    warps = 8 if cols * (filts + chans) >= 32 * 128 else 4
  else:  # input gradient: measured by ptxas's spills at the shapes
    warps = 8 if kernel == "input_grad" and chans >= 64 and cols >= 32 \
        else 4
  if kernel == "param_grads" and taps * multiplier > 9:
    # The taps x M depthwise-kernel sums are loop carries too.
    warps = 8
  return Tiles(rows=1, cols=cols, channels=chans, filters=filts,
               groups=groups, warps=warps, stages=stages)


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
               groups=1, warps=0, vmem_limit=TPU_VMEM_LIMIT)


def tiles(target: str, *, out_hw: tuple[int, int], channels: int,
          filters: int, positions: int, itemsize: int = 4,
          kernel: str = "forward", taps: int = 9, multiplier: int = 1,
          halo: tuple[int, int] = (2, 2), phases: int = 1,
          exact: bool = False) -> Tiles:
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
    kernel: "forward", "input_grad" or "param_grads".
    taps, multiplier, halo, phases: the kernel's taps, the depth
      multiplier, the extra rows and columns a block reads, and the stride
      phases of the input (for the TPU's VMEM estimate).
    exact: float32 dots at precision "highest" (Triton's exact form).

  Returns:
    The :class:`Tiles`.
  """
  if kernel not in KERNELS:
    raise ValueError(f"`kernel` (={kernel!r}) must be one of {KERNELS}")
  height, width = out_hw
  if target == "gpu":
    return _gpu(kernel, width=width, channels=channels, filters=filters,
                positions=positions, itemsize=itemsize, taps=taps,
                multiplier=multiplier, exact=exact)
  if target == "tpu":
    return _tpu(kernel, height=height, width=width, channels=channels,
                filters=filters, itemsize=itemsize, taps=taps,
                multiplier=multiplier, halo=halo, phases=phases)
  raise ValueError(f"`target` (={target!r}) must be 'gpu' or 'tpu'")
