"""The functional depthwise and separable convolutions.

The public functions validate once, bring the inputs to one batch axis and
the compute dtype, then hand plain arrays to an implementation. An
implementation is a pair of functions over those arrays:

* ``depthwise(x, kernel, spec, pads, precision)``
* ``pointwise(y, kernel, spec, precision)``

where ``x`` has shape ``(N, *spatial, C)`` (or ``(N, C, *spatial)``), ``pads``
holds explicit ``(before, after)`` pairs and ``spec`` is the normalised
:class:`~sepconv_jax._args.ConvSpec`. The functions are written for any
number of spatial dimensions; the public API fixes it at two.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from sepconv_jax import _args
from sepconv_jax import _taps

PrecisionLike = _args.PrecisionLike


class Implementation(NamedTuple):
  """How one implementation computes the two steps."""

  depthwise: Callable[..., jax.Array]
  pointwise: Callable[..., jax.Array]


def _dimension_numbers(spec: _args.ConvSpec) -> tuple[str, str, str]:
  spatial = "DHW"[-spec.rank:] if spec.rank <= 3 else None
  if spatial is None:
    raise ValueError(f"{spec.rank}-D convolutions are not supported")
  lhs = f"N{spatial}C" if spec.channels_last else f"NC{spatial}"
  return lhs, f"{spatial}IO", lhs


def _lax_depthwise(x, kernel, spec, pads, precision):
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


def _lax_pointwise(y, kernel, spec, precision):
  return lax.conv_general_dilated(
      y,
      kernel,
      window_strides=(1,) * spec.rank,
      padding="VALID",
      dimension_numbers=_dimension_numbers(spec),
      precision=precision,
  )


_IMPLEMENTATIONS: dict[str, Implementation] = {
    "lax": Implementation(_lax_depthwise, _lax_pointwise),
    # Shifted taps + matmul, with a custom VJP: see `sepconv_jax._taps`.
    "taps": Implementation(_taps.depthwise, _taps.pointwise),
}

#: The names accepted by every ``implementation=`` argument.
IMPLEMENTATIONS: tuple[str, ...] = _args.IMPLEMENTATIONS
assert set(IMPLEMENTATIONS) == {"auto", *_IMPLEMENTATIONS}, IMPLEMENTATIONS


def auto_implementation(backend: Optional[str] = None) -> str:
  """The implementation ``implementation="auto"`` runs on `backend`.

  The policy, from ``scripts/benchmark.py`` (results in
  ``scripts/benchmark_results/``):

  * CPU: ``"taps"``. XLA:CPU runs grouped convolutions as a slow generic
    loop and expands their kernel gradient into a dense ``C x C``
    convolution; the shifted taps were faster in the forward pass and the
    training step at every benchmarked shape, strided ones included.
  * GPU, TPU and anything else: ``"lax"``, whose grouped convolutions those
    backends implement natively (not measured here).

  Args:
    backend: a `jax.default_backend()` name; None reads the current one.
  """
  if backend is None:
    backend = jax.default_backend()
  return "taps" if backend == "cpu" else "lax"


def _choose(implementation: Any) -> Implementation:
  """Resolves an ``implementation=`` argument."""
  _args.check_implementation(implementation)
  if implementation == "auto":
    implementation = auto_implementation()
  return _IMPLEMENTATIONS[implementation]


def _compute_dtype(*arrays: Optional[jax.Array]) -> Any:
  """The promoted floating dtype of the operands; ints join as floats."""
  floats = [
      a.dtype for a in arrays
      if a is not None and jnp.issubdtype(a.dtype, jnp.floating)
  ]
  if floats:
    return jnp.result_type(*floats)
  return jnp.zeros((), float).dtype  # float32, or float64 under x64


_JNP_PAD_MODES = {"reflect": "reflect", "symmetric": "symmetric",
                  "circular": "wrap"}


def _pad_borders(x: jax.Array, spec: _args.ConvSpec,
                 pads: Sequence[tuple[int, int]]) -> jax.Array:
  """Pads the spatial dims by ``spec.padding_mode``, for the non-zero modes."""
  widths = ((0, 0), *pads, (0, 0)) if spec.channels_last else (
      (0, 0), (0, 0), *pads)
  return jnp.pad(x, widths, mode=_JNP_PAD_MODES[spec.padding_mode])


def _channel_bias_shape(spec: _args.ConvSpec, filters: int) -> tuple[int, ...]:
  return (filters,) if spec.channels_last else (filters,) + (1,) * spec.rank


def convolve(
    inputs: ArrayLike,
    depthwise_kernel: ArrayLike,
    pointwise_kernel: Optional[ArrayLike],
    bias: Optional[ArrayLike],
    spec: _args.ConvSpec,
    precision: PrecisionLike,
    implementation: str,
) -> jax.Array:
  """Validates the arrays, then runs the chosen implementation.

  Without `pointwise_kernel` this is the depthwise step alone; `bias`, if
  given, is added to whichever step comes last.
  """
  impl = _choose(implementation)
  _args.check_precision(precision)
  n = spec.rank
  x = _args.as_array(inputs, "inputs")
  dk = _args.as_array(depthwise_kernel, "depthwise_kernel")
  leading, spatial, channels = _args.split_shape(spec, x.shape)
  _args.check_channels(channels, shape=x.shape)
  _args.check_shape(
      "depthwise_kernel", dk.shape, (None,) * n + (channels, None),
      f"the kernel's {n} spatial sizes, the {channels} input channels of"
      f" `inputs` (shape={tuple(x.shape)}), then the depth multiplier",
  )
  if min(dk.shape) < 1:
    raise ValueError(
        f"`depthwise_kernel` (shape={tuple(dk.shape)}) must not have a"
        " size of 0"
    )
  kernel_size = dk.shape[:n]
  _args.output_spatial(spec, spatial, kernel_size, shape=x.shape)
  out_channels = dk.shape[-2] * dk.shape[-1]
  pk = b = None
  if pointwise_kernel is not None:
    pk = _args.as_array(pointwise_kernel, "pointwise_kernel")
    _args.check_shape(
        "pointwise_kernel", pk.shape, (1,) * n + (out_channels, None),
        f"1x1 with {out_channels} = channels * depth multiplier inputs, then"
        " the filters",
    )
    if pk.shape[-1] < 1:
      raise ValueError(
          f"`pointwise_kernel` (shape={tuple(pk.shape)}) must have at least"
          " one filter"
      )
    out_channels = pk.shape[-1]
  if bias is not None:
    b = _args.as_array(bias, "bias")
    _args.check_shape("bias", b.shape, (out_channels,),
                      f"one value per output channel ({out_channels})")

  dtype = _compute_dtype(x, dk, pk, b)
  batch = math.prod(leading)
  x = x.astype(dtype).reshape((batch,) + x.shape[len(leading):])
  pads = _args.explicit_pads(spec, spatial, kernel_size)
  if spec.padding_mode != "zeros":
    x = _pad_borders(x, spec, pads)
    pads = ((0, 0),) * n
  y = impl.depthwise(x, dk.astype(dtype), spec, pads, precision)
  if pk is not None:
    y = impl.pointwise(y, pk.astype(dtype), spec, precision)
  if b is not None:
    y = y + b.astype(dtype).reshape(_channel_bias_shape(spec, out_channels))
  return y.reshape(tuple(leading) + y.shape[1:])


def depthwise_conv(
    inputs, depthwise_kernel, bias=None, *, rank, strides, padding,
    data_format, dilation_rate, precision, implementation,
    padding_mode="zeros",
) -> jax.Array:
  """The rank-generic depthwise convolution behind the public functions."""
  spec = _args.conv_spec(rank, strides, padding, data_format, dilation_rate,
                         padding_mode)
  return convolve(inputs, depthwise_kernel, None, bias, spec, precision,
                  implementation)


def separable_conv(
    inputs, depthwise_kernel, pointwise_kernel, bias=None, *, rank, strides,
    padding, data_format, dilation_rate, precision, implementation,
    padding_mode="zeros",
) -> jax.Array:
  """The rank-generic separable convolution behind the public functions."""
  spec = _args.conv_spec(rank, strides, padding, data_format, dilation_rate,
                         padding_mode)
  if pointwise_kernel is None:
    raise TypeError("`pointwise_kernel` (=None) must be an array")
  return convolve(inputs, depthwise_kernel, pointwise_kernel, bias, spec,
                  precision, implementation)


def separable_conv2d(
    inputs: ArrayLike,
    depthwise_kernel: ArrayLike,
    pointwise_kernel: ArrayLike,
    bias: Optional[ArrayLike] = None,
    *,
    strides: int | Sequence[int] = 1,
    padding: str = "valid",
    data_format: Optional[str] = None,
    dilation_rate: int | Sequence[int] = 1,
    precision: PrecisionLike = None,
    implementation: str = "auto",
    padding_mode: str = "zeros",
) -> jax.Array:
  """A 2-D depthwise-separable convolution, as `keras.ops.separable_conv`.

  Each input channel is convolved with its own ``depth_multiplier`` filters
  (the depthwise step), a 1x1 convolution mixes the result into ``filters``
  channels (the pointwise step), and ``bias`` is added. No activation.

  Args:
    inputs: ``(N, H, W, C)`` images, or ``(N, C, H, W)`` for
      ``data_format="channels_first"``. Rank 3 is one unbatched image; more
      leading axes are extra batch axes. Integers are cast to the compute
      dtype, the promoted floating dtype of the operands.
    depthwise_kernel: ``(kh, kw, C, depth_multiplier)``.
    pointwise_kernel: ``(1, 1, C * depth_multiplier, filters)``.
    bias: ``(filters,)``, or None.
    strides: an int or a pair; cannot exceed 1 together with
      ``dilation_rate``.
    padding: ``"valid"`` or ``"same"``, in any case. ``"same"`` pads as
      TensorFlow does: an odd total puts the extra row or column at the end.
      Beyond Keras: explicit ``((top, bottom), (left, right))`` pairs.
    data_format: ``"channels_last"``, ``"channels_first"``, or None for the
      ``image_data_format`` of ``keras.json`` (``"channels_last"`` without
      one).
    dilation_rate: an int or a pair.
    precision: passed to the `jax.lax` calls.
    implementation: one of :data:`IMPLEMENTATIONS`; ``"auto"`` picks by
      backend and shape, ``"lax"`` is the reference built on
      `jax.lax.conv_general_dilated` with ``feature_group_count``.
    padding_mode: beyond Keras, how the padded border is filled: one of
      ``"zeros"`` (Keras), ``"reflect"``, ``"symmetric"`` or ``"circular"``.

  Returns:
    ``(N, H', W', filters)`` (or channels-first) in the compute dtype.

  Raises:
    ValueError: for a bad argument value, arrays whose shapes do not fit one
      another, or a ``"valid"`` output with no rows or columns.
    TypeError: for arguments of the wrong type.

  Example:
    >>> import jax.numpy as jnp
    >>> import sepconv_jax
    >>> x = jnp.ones((1, 5, 5, 2))
    >>> dk = jnp.ones((3, 3, 2, 1))
    >>> pk = jnp.ones((1, 1, 2, 4))
    >>> y = sepconv_jax.separable_conv2d(x, dk, pk)
    >>> y.shape, float(y[0, 0, 0, 0])
    ((1, 3, 3, 4), 18.0)
  """
  return separable_conv(
      inputs, depthwise_kernel, pointwise_kernel, bias, rank=2,
      strides=strides, padding=padding, data_format=data_format,
      dilation_rate=dilation_rate, precision=precision,
      implementation=implementation, padding_mode=padding_mode,
  )


def depthwise_conv2d(
    inputs: ArrayLike,
    depthwise_kernel: ArrayLike,
    *,
    strides: int | Sequence[int] = 1,
    padding: str = "valid",
    data_format: Optional[str] = None,
    dilation_rate: int | Sequence[int] = 1,
    precision: PrecisionLike = None,
    implementation: str = "auto",
    padding_mode: str = "zeros",
) -> jax.Array:
  """The depthwise step of :func:`separable_conv2d` alone.

  Output channel ``c * depth_multiplier + m`` is input channel ``c``
  convolved with ``depthwise_kernel[:, :, c, m]``, as in Keras. The arguments
  are those of :func:`separable_conv2d`.

  Returns:
    ``(N, H', W', C * depth_multiplier)`` (or channels-first).

  Raises:
    ValueError: as :func:`separable_conv2d`.
    TypeError: as :func:`separable_conv2d`.

  Example:
    >>> import jax.numpy as jnp
    >>> import sepconv_jax
    >>> x = jnp.ones((1, 4, 4, 3))
    >>> y = sepconv_jax.depthwise_conv2d(x, jnp.ones((2, 2, 3, 2)))
    >>> y.shape
    (1, 3, 3, 6)
  """
  return depthwise_conv(
      inputs, depthwise_kernel, rank=2, strides=strides, padding=padding,
      data_format=data_format, dilation_rate=dilation_rate,
      precision=precision, implementation=implementation,
      padding_mode=padding_mode,
  )
