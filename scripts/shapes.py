"""The shapes the benchmark and the compile matrix run: one place for both.

`CANONICAL` are MobileNet/Xception layers (3x3, "same"): five stride-1
stages, Xception's 19x19x728 middle flow and a stride-2 downsampling
layer. Their batch is the benchmark's CPU batch; other runs take
``shape._replace(batch=...)``.
"""

from __future__ import annotations

from typing import NamedTuple


class Shape(NamedTuple):
  batch: int
  height: int
  width: int
  channels: int
  filters: int
  stride: int
  kernel: int = 3

  @property
  def label(self) -> str:
    s = f"{self.height}x{self.width}x{self.channels}->{self.filters}"
    return s + (f" /{self.stride}" if self.stride > 1 else "")

  @property
  def out_hw(self) -> tuple[int, int]:
    return (-(-self.height // self.stride), -(-self.width // self.stride))

  @property
  def output_bytes(self) -> int:
    oh, ow = self.out_hw
    return 4 * self.batch * oh * ow * self.filters

  def flops(self) -> int:
    """Multiply-adds x 2 of the forward pass (depthwise + pointwise)."""
    oh, ow = self.out_hw
    pixels = self.batch * oh * ow
    return 2 * pixels * self.channels * (self.kernel ** 2 + self.filters)

  def min_bytes(self) -> int:
    """Bytes the forward pass must at least read and write (float32)."""
    return 4 * (self.batch * self.height * self.width * self.channels
                + self.kernel ** 2 * self.channels
                + self.channels * self.filters) + self.output_bytes


CANONICAL = [
    Shape(8, 112, 112, 32, 64, 1),
    Shape(8, 56, 56, 128, 128, 1),
    Shape(8, 28, 28, 256, 256, 1),
    Shape(8, 14, 14, 512, 512, 1),
    Shape(8, 7, 7, 1024, 1024, 1),
    Shape(8, 19, 19, 728, 728, 1),
    Shape(8, 112, 112, 64, 128, 2),
]

QUICK = [
    Shape(2, 8, 8, 4, 8, 1),
    Shape(2, 9, 9, 4, 4, 2),
]
