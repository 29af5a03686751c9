"""The reference implementation, "lax": XLA's grouped convolution.

The depthwise step is one `lax.conv_general_dilated` with
``feature_group_count`` equal to the input channels, the pointwise step a
1x1 `lax.conv_general_dilated`: what Keras 3 on JAX and `flax.linen.Conv`
run, and what GPU and TPU backends implement natively. Written for any
number of spatial dimensions.
"""

from __future__ import annotations

from jax import lax

from sepconv_jax import _args


def _dimension_numbers(spec: _args.ConvSpec) -> tuple[str, str, str]:
  spatial = "DHW"[-spec.rank:]
  lhs = f"N{spatial}C" if spec.channels_last else f"NC{spatial}"
  return lhs, f"{spatial}IO", lhs


def depthwise(x, kernel, spec: _args.ConvSpec, pads, precision):
  """The depthwise step: a grouped convolution, one group per channel."""
  *window, channels, multiplier = kernel.shape
  return lax.conv_general_dilated(
      x,
      kernel.reshape(*window, 1, channels * multiplier),
      window_strides=spec.strides,
      padding=pads,
      rhs_dilation=spec.dilation_rate,
      dimension_numbers=_dimension_numbers(spec),
      feature_group_count=channels,
      precision=precision,
  )


def pointwise(y, kernel, spec: _args.ConvSpec, precision):
  """The pointwise step: a 1x1 convolution."""
  return lax.conv_general_dilated(
      y,
      kernel,
      window_strides=(1,) * spec.rank,
      padding="VALID",
      dimension_numbers=_dimension_numbers(spec),
      precision=precision,
  )
