"""The tuning policy of the "taps" implementation: every threshold, here.

The algorithm (`_taps`) computes the same numbers whatever this says; the
policy only decides how XLA:CPU gets to them fastest. Each threshold was
measured with ``scripts/benchmark.py`` and interleaved side scripts on a
2-core AMD EPYC (Zen 5 class, AVX-512), float32, jax 0.10.2; the figures
are in ``scripts/benchmark_results/taps_policy.md``.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence


class TapsPolicy(NamedTuple):
  """How one call of the depthwise step and its kernel gradient run."""

  #: Compute the output's interior (where no tap reads padding) in a loop of
  #: its own, and the border slabs in small loops (`_taps.split_forward`).
  split_forward: bool
  #: Sum the kernel gradient over the same boxes, so that the interior
  #: needs no padded copy of the input (`_taps.split_kernel_grad`).
  split_kernel_grad: bool
  #: The kernel gradient sums each tap's product over chunks of rows: a
  #: chunk size in `row_chunk_range` that divides the rows, nearest
  #: `row_chunk`, else `row_chunk`-row chunks and a shorter tail.
  row_chunk: int
  row_chunk_range: tuple[int, int]
  #: ... for at most this many taps in one pass over its inputs.
  taps_per_pass: int


def policy(strides: Sequence[int], window: Sequence[int],
           out: Sequence[int], input_elements: int) -> TapsPolicy:
  """The policy for one call.

  Args:
    strides: the convolution's strides.
    window: the kernel's spatial size.
    out: the output's spatial size.
    input_elements: the input's size (all axes).

  Returns:
    The :class:`TapsPolicy`.
  """
  taps, positions = math.prod(window), math.prod(out)
  # Forward split: stride 1, and a kernel of 25+ taps (5x5 and 7x7 at
  # 10x10 to 28x28: 1.06-2.2x forward) or 56x56+ outputs (3x3 at 56x56 and
  # 112x112: 1.05-1.18x). 3x3 at 40x40 and below, and stride 2, measured
  # 0.8-1.0x: the border loops cost more than the padding checks saved.
  large = positions >= 56 * 56
  split_forward = all(s == 1 for s in strides) and (taps >= 25 or large)
  # Kernel-gradient split, at every stride: it saves a padded copy of the
  # input (stride 2 at 8x112x112x64: training temporaries 38 -> 13 MiB, 8%
  # slower with a tuned allocator, far faster with glibc's default one),
  # which pays only for large inputs (2^20+ elements) and outputs (56x56+;
  # on small ones the extra ops cost more than the copy), and for kernels
  # under 25 taps (5x5 split was 1.4x slower: thicker slabs, more taps).
  split_kernel_grad = taps < 25 and large and input_elements >= 1 << 20
  # Kernel gradient: 8-row chunks let XLA:CPU vectorise the chunk sums
  # (whole-grid variadic reductions were 5x slower, longer chunks 2x);
  # one variadic reduction for up to 9 taps is one pass over the input and
  # the cotangent (2x faster than one pass per tap).
  return TapsPolicy(split_forward=split_forward,
                    split_kernel_grad=split_kernel_grad, row_chunk=8,
                    row_chunk_range=(5, 14), taps_per_pass=9)
