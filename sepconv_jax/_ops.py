"""The functional depthwise and separable convolutions.

The public functions validate once (`_args`), bring the inputs to one batch
axis and the compute dtype, then hand plain arrays to an implementation
(`_implementations`). The rank-generic `separable_conv` and
`depthwise_conv` take the number of spatial dimensions from the kernel; the
``*2d`` functions fix it at two.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from sepconv_jax import _args
from sepconv_jax import _implementations

PrecisionLike = _args.PrecisionLike

#: The names accepted by every ``implementation=`` argument.
IMPLEMENTATIONS: tuple[str, ...] = _args.IMPLEMENTATIONS

auto_implementation = _implementations.auto_implementation


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
  _args.check_implementation(implementation, spec.rank)
  _args.check_precision(precision)
  n = spec.rank
  x = _args.as_array(inputs, "inputs")
  dk = _args.as_array(depthwise_kernel, "depthwise_kernel")
  leading, spatial, channels = _args.split_shape(spec, x.shape)
  _args.check_channels(channels, shape=x.shape)
  # A kernel in another library's layout is read as a wrong but valid
  # Keras kernel, and a later array gets the blame: each message says how
  # the kernel was read, when its shape suggests that.
  layout_hint = _args.kernel_layout_hint("depthwise_kernel", dk.shape, n,
                                         channels)
  kernel_channels = dk.shape[-2] if dk.ndim == n + 2 else None
  _args.check_shape(
      "depthwise_kernel", dk.shape, (None,) * n + (channels, None),
      f"the kernel's {n} spatial sizes, the {channels} input channels of"
      f" `inputs` (shape={tuple(x.shape)}), then the depth multiplier",
      hint=(_args.data_format_hint(spec, x.shape, kernel_channels)
            or layout_hint),
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
        " the filters", hint=layout_hint,
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
                      f"one value per output channel ({out_channels})",
                      hint=layout_hint)

  dtype = _compute_dtype(x, dk, pk, b)
  batch = math.prod(leading)
  x = x.astype(dtype).reshape((batch,) + x.shape[len(leading):])
  pads = _args.explicit_pads(spec, spatial, kernel_size)
  if spec.padding_mode != "zeros":
    x = _pad_borders(x, spec, pads)
    pads = ((0, 0),) * n
  cast = lambda a: None if a is None else a.astype(dtype)
  y = _implementations.run(implementation, x, cast(dk), cast(pk), cast(b),
                           spec, pads, precision)
  return y.reshape(tuple(leading) + y.shape[1:])


def _conv(inputs, depthwise_kernel, pointwise_kernel, bias, rank, strides,
          padding, data_format, dilation_rate, precision, implementation,
          padding_mode) -> jax.Array:
  """Both public forms: `rank` None takes it from the depthwise kernel."""
  if rank is None:
    rank = _args.kernel_rank(_args.as_array(depthwise_kernel,
                                            "depthwise_kernel"))
  spec = _args.conv_spec(rank, strides, padding, data_format, dilation_rate,
                         padding_mode)
  return convolve(inputs, depthwise_kernel, pointwise_kernel, bias, spec,
                  precision, implementation)


def separable_conv(
    inputs: ArrayLike,
    depthwise_kernel: ArrayLike,
    pointwise_kernel: ArrayLike,
    bias: Optional[ArrayLike] = None,
    *,
    strides: int | Sequence[int] = 1,
    padding: _args.PaddingLike = "valid",
    data_format: Optional[str] = None,
    dilation_rate: int | Sequence[int] = 1,
    precision: PrecisionLike = None,
    implementation: str = "auto",
    padding_mode: str = "zeros",
) -> jax.Array:
  """A depthwise-separable convolution of 1, 2 or 3 spatial dimensions.

  :func:`separable_conv2d` for any rank: the depthwise kernel's rank sets
  it, ``(k, C, M)`` for 1-D, ``(kh, kw, C, M)`` for 2-D and ``(kd, kh, kw,
  C, M)`` for 3-D; `strides`, `dilation_rate` and explicit `padding` pairs
  then have one entry per spatial dim, and 1-D also accepts
  ``padding="causal"``. The other arguments are those of
  :func:`separable_conv2d`.

  Returns:
    ``(N, *spatial_out, filters)`` (or channels-first).

  Raises:
    ValueError: as :func:`separable_conv2d`, and for a depthwise kernel
      whose rank is not 3, 4 or 5.
    TypeError: as :func:`separable_conv2d`.

  Example:
    >>> import jax.numpy as jnp
    >>> import sepconv_jax
    >>> x = jnp.ones((2, 10, 3))                      # (N, steps, C)
    >>> y = sepconv_jax.separable_conv(x, jnp.ones((3, 3, 2)),
    ...                                jnp.ones((1, 6, 4)), padding="causal")
    >>> y.shape, float(y[0, -1, 0])
    ((2, 10, 4), 18.0)
  """
  if pointwise_kernel is None:
    raise TypeError("`pointwise_kernel` (=None) must be an array")
  return _conv(inputs, depthwise_kernel, pointwise_kernel, bias, None,
               strides, padding, data_format, dilation_rate, precision,
               implementation, padding_mode)


def depthwise_conv(
    inputs: ArrayLike,
    depthwise_kernel: ArrayLike,
    bias: Optional[ArrayLike] = None,
    *,
    strides: int | Sequence[int] = 1,
    padding: _args.PaddingLike = "valid",
    data_format: Optional[str] = None,
    dilation_rate: int | Sequence[int] = 1,
    precision: PrecisionLike = None,
    implementation: str = "auto",
    padding_mode: str = "zeros",
) -> jax.Array:
  """The depthwise step of :func:`separable_conv` alone, of any rank.

  The depthwise kernel's rank sets the number of spatial dims, as in
  :func:`separable_conv`; `bias` has ``C * M`` entries.

  Returns:
    ``(N, *spatial_out, C * depth_multiplier)`` (or channels-first).

  Raises:
    ValueError: as :func:`separable_conv`.
    TypeError: as :func:`separable_conv`.

  Example:
    >>> import jax.numpy as jnp
    >>> import sepconv_jax
    >>> x = jnp.ones((1, 4, 4, 4, 2))                 # (N, D, H, W, C)
    >>> sepconv_jax.depthwise_conv(x, jnp.ones((2, 2, 2, 2, 1))).shape
    (1, 3, 3, 3, 2)
  """
  return _conv(inputs, depthwise_kernel, None, bias, None, strides, padding,
               data_format, dilation_rate, precision, implementation,
               padding_mode)


def separable_conv2d(
    inputs: ArrayLike,
    depthwise_kernel: ArrayLike,
    pointwise_kernel: ArrayLike,
    bias: Optional[ArrayLike] = None,
    *,
    strides: int | Sequence[int] = 1,
    padding: _args.PaddingLike = "valid",
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
    precision: the precision of every convolution and dot, forward and
      backward: None for the backend's default (TF32 for float32 on recent
      NVIDIA GPUs, one bfloat16 pass on TPU, exact on CPU), ``"highest"``
      for exact float32 everywhere; a `jax.lax.Precision`, its name, or a
      pair of them.
    implementation: one of :data:`IMPLEMENTATIONS`. ``"auto"`` picks per
      platform the program is lowered for (``"taps"`` on CPU, ``"lax"`` on
      GPU and TPU; `auto_implementation`); ``"lax"`` is the reference built
      on `jax.lax.conv_general_dilated` with ``feature_group_count``;
      ``"taps"`` the fast CPU path; ``"pallas"`` the fused Pallas kernels
      (1-D and 2-D; Triton on GPU, Mosaic on TPU). On a CPU ``"pallas"``
      runs its kernels in Pallas's interpreter: correct but slow (seconds
      to compile each shape), meant for tests.
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
  if pointwise_kernel is None:
    raise TypeError("`pointwise_kernel` (=None) must be an array")
  return _conv(inputs, depthwise_kernel, pointwise_kernel, bias, 2, strides,
               padding, data_format, dilation_rate, precision,
               implementation, padding_mode)


def depthwise_conv2d(
    inputs: ArrayLike,
    depthwise_kernel: ArrayLike,
    bias: Optional[ArrayLike] = None,
    *,
    strides: int | Sequence[int] = 1,
    padding: _args.PaddingLike = "valid",
    data_format: Optional[str] = None,
    dilation_rate: int | Sequence[int] = 1,
    precision: PrecisionLike = None,
    implementation: str = "auto",
    padding_mode: str = "zeros",
) -> jax.Array:
  """The depthwise step of :func:`separable_conv2d` alone.

  Output channel ``c * depth_multiplier + m`` is input channel ``c``
  convolved with ``depthwise_kernel[:, :, c, m]``, as in Keras. `bias`, if
  given, has ``C * depth_multiplier`` entries; the other arguments are
  those of :func:`separable_conv2d`.

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
  return _conv(inputs, depthwise_kernel, None, bias, 2, strides, padding,
               data_format, dilation_rate, precision, implementation,
               padding_mode)
