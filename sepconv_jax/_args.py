"""Argument normalisation and validation, in one place.

Every public entry point (the functions and the modules) funnels its
configuration through :func:`conv_spec` (plus :func:`check_precision`,
:func:`check_implementation` and :func:`check_dtypes`) and its arrays
through :func:`as_array`, :func:`check_shape` and :func:`output_spatial`,
so each rule and each error message lives here once. Messages follow one
pattern: the argument in backticks, then its value.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax

CHANNELS_LAST = "channels_last"
CHANNELS_FIRST = "channels_first"
_PADDINGS = ("valid", "same")

#: How padded borders are filled: Keras's zeros, or `jnp.pad`'s reflect,
#: symmetric and wrap ("circular") modes.
PADDING_MODES = ("zeros", "reflect", "symmetric", "circular")

#: The names accepted by every ``implementation=`` argument: "auto" picks
#: one of the others per platform (`sepconv_jax._ops.auto_implementation`).
IMPLEMENTATIONS = ("auto", "lax", "taps", "pallas")

# The spatial ranks of the implementations that do not take every rank.
_RANKS = {"pallas": (1, 2)}

#: What ``precision=`` accepts: None, a `jax.lax.Precision`, its name, or a
#: pair of them.
PrecisionLike = Any

#: What ``padding=`` accepts: a name ("valid", "same", "causal" for 1-D, in
#: any case) or one explicit ``(before, after)`` pair per spatial dim.
PaddingLike = str | Sequence[tuple[int, int]]

# Sizes, strides and counts beyond int32 would only reach XLA as overflows.
_MAX_SIZE = 2**31 - 1


def is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(value: Any, name: str) -> int:
  """Returns `value` as an int, or raises if it is not a positive int."""
  if not is_int(value):
    raise TypeError(
        f"`{name}` (={value!r}) must be a positive int, not"
        f" {type(value).__name__}"
    )
  if value < 1:
    raise ValueError(f"`{name}` (={value!r}) must be a positive int")
  if value > _MAX_SIZE:
    raise ValueError(f"`{name}` (={value!r}) must be at most {_MAX_SIZE}")
  return int(value)


def normalize_tuple(value: Any, rank: int, name: str) -> tuple[int, ...]:
  """Normalises an int or a sequence of `rank` positive ints to a tuple."""
  what = "a positive int" if rank == 1 else f"a positive int or {rank} of them"
  if is_int(value):
    values = (value,) * rank
  elif isinstance(value, (tuple, list)):
    if len(value) != rank:
      raise ValueError(
          f"`{name}` (={value!r}) must be {what}; got length {len(value)}"
      )
    if not all(is_int(v) for v in value):
      raise TypeError(f"`{name}` (={value!r}) must be {what}")
    values = tuple(value)
  else:
    raise TypeError(
        f"`{name}` (={value!r}) must be {what}, not {type(value).__name__}"
    )
  if any(v < 1 for v in values):
    raise ValueError(f"`{name}` (={value!r}) must be {what}")
  if any(v > _MAX_SIZE for v in values):
    raise ValueError(f"`{name}` (={value!r}) must be at most {_MAX_SIZE}")
  return tuple(int(v) for v in values)


def _explicit_padding(padding: Any, rank: int) -> tuple[tuple[int, int], ...]:
  """Validates explicit ``((before, after), ...)`` pairs, one per dim."""
  what = (f"'valid', 'same' or {rank} (before, after) pairs of non-negative"
          " ints")
  if len(padding) != rank or not all(
      isinstance(p, (tuple, list)) and len(p) == 2 for p in padding):
    raise ValueError(f"`padding` (={padding!r}) must be {what}")
  if not all(is_int(v) for p in padding for v in p):
    raise TypeError(f"`padding` (={padding!r}) must be {what}")
  if any(v < 0 for p in padding for v in p):
    raise ValueError(f"`padding` (={padding!r}) must be {what}")
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def normalize_padding(padding: Any, rank: int) -> str | tuple:
  """Returns 'valid', 'same', 'causal' (1-D only) or explicit pairs."""
  named = "'valid', 'same' or 'causal'" if rank == 1 else "'valid' or 'same'"
  if isinstance(padding, (tuple, list)):
    return _explicit_padding(padding, rank)
  if not isinstance(padding, str):
    raise TypeError(
        f"`padding` (={padding!r}) must be {named} or explicit (before,"
        f" after) pairs, not {type(padding).__name__}"
    )
  lowered = padding.lower()
  if lowered == "causal" and rank != 1:
    raise ValueError(
        f"`padding` (={padding!r}) is only defined for 1-D convolutions;"
        " use 'valid' or 'same'"
    )
  if lowered not in _PADDINGS + ("causal",):
    pairs = ", ".join(["(before, after)"] * rank)
    raise ValueError(
        f"`padding` (={padding!r}) must be {named}, or explicit pairs, one"
        f" per spatial dim: (({pairs}))" if rank > 1 else
        f"`padding` (={padding!r}) must be {named}, or explicit pairs, one"
        f" per spatial dim: ({pairs},)"
    )
  return lowered


def normalize_padding_mode(padding_mode: Any) -> str:
  """Returns one of :data:`PADDING_MODES`."""
  if not isinstance(padding_mode, str):
    raise TypeError(
        f"`padding_mode` (={padding_mode!r}) must be one of {PADDING_MODES},"
        f" not {type(padding_mode).__name__}"
    )
  if padding_mode.lower() not in PADDING_MODES:
    raise ValueError(
        f"`padding_mode` (={padding_mode!r}) must be one of {PADDING_MODES}"
    )
  return padding_mode.lower()


def keras_config_path() -> str:
  """The path of `keras.json`, found as Keras finds it."""
  if "KERAS_HOME" in os.environ:
    keras_dir = os.environ["KERAS_HOME"]
  else:
    base = os.path.expanduser("~")
    if not os.access(base, os.W_OK):
      base = "/tmp"
    keras_dir = os.path.join(base, ".keras")
  return os.path.expanduser(os.path.join(keras_dir, "keras.json"))


def image_data_format() -> str:
  """The `image_data_format` of `keras.json`, or 'channels_last' without one.

  The file is read the way Keras reads it, without importing Keras. As in
  Keras, a file that is not valid JSON is ignored.

  Raises:
    ValueError: if the file names a format other than the two Keras knows.
  """
  path = keras_config_path()
  try:
    with open(path) as f:
      config = json.load(f)
  except (OSError, ValueError):
    return CHANNELS_LAST
  value = config.get("image_data_format", CHANNELS_LAST) if isinstance(
      config, dict) else CHANNELS_LAST
  if value not in (CHANNELS_LAST, CHANNELS_FIRST):
    raise ValueError(
        f"`data_format` is None, and the `image_data_format` (={value!r}) in"
        f" {path} must be 'channels_last' or 'channels_first'"
    )
  return value


def normalize_data_format(data_format: Any) -> str:
  """Returns 'channels_last' or 'channels_first'; None reads keras.json."""
  if data_format is None:
    return image_data_format()
  if not isinstance(data_format, str):
    raise TypeError(
        f"`data_format` (={data_format!r}) must be 'channels_last',"
        f" 'channels_first' or None, not {type(data_format).__name__}"
    )
  lowered = data_format.lower()
  if lowered not in (CHANNELS_LAST, CHANNELS_FIRST):
    raise ValueError(
        f"`data_format` (={data_format!r}) must be 'channels_last',"
        " 'channels_first' or None"
    )
  return lowered


class ConvSpec(NamedTuple):
  """A validated, normalised convolution configuration."""

  rank: int
  strides: tuple[int, ...]
  padding: str | tuple[tuple[int, int], ...]
  channels_last: bool
  dilation_rate: tuple[int, ...]
  padding_mode: str = "zeros"

  @property
  def channel_axis(self) -> int:
    """The channel axis, counted from the end of the input's shape."""
    return -1 if self.channels_last else -(self.rank + 1)


def conv_spec(
    rank: int,
    strides: Any,
    padding: Any,
    data_format: Any,
    dilation_rate: Any,
    padding_mode: Any = "zeros",
) -> ConvSpec:
  """Validates and normalises the configuration shared by every entry point.

  Raises:
    TypeError: for arguments of the wrong type.
    ValueError: for bad values, and for `strides` and `dilation_rate` both
      above 1 (the tf.keras rule).
  """
  norm_strides = normalize_tuple(strides, rank, "strides")
  norm_dilation = normalize_tuple(dilation_rate, rank, "dilation_rate")
  if max(norm_strides) > 1 and max(norm_dilation) > 1:
    raise ValueError(
        f"`strides` (={strides!r}) and `dilation_rate` (={dilation_rate!r})"
        " cannot both exceed 1"
    )
  return ConvSpec(
      rank=rank,
      strides=norm_strides,
      padding=normalize_padding(padding, rank),
      channels_last=normalize_data_format(data_format) == CHANNELS_LAST,
      dilation_rate=norm_dilation,
      padding_mode=normalize_padding_mode(padding_mode),
  )


def kernel_rank(depthwise_kernel: Any) -> int:
  """The number of spatial dims a depthwise kernel ``(*window, C, M)`` has.

  Raises:
    ValueError: unless the kernel's rank is 3, 4 or 5 (1-, 2- or 3-D).
  """
  ndim = len(depthwise_kernel.shape)
  if not 3 <= ndim <= 5:
    raise ValueError(
        f"`depthwise_kernel` (shape={tuple(depthwise_kernel.shape)}) has rank"
        f" {ndim}; it must be (*kernel_size, channels, depth_multiplier) of"
        " rank 3, 4 or 5, for a 1-, 2- or 3-D convolution"
    )
  return ndim - 2


def same_pads(size: int, kernel: int, stride: int,
              dilation: int) -> tuple[int, int]:
  """TensorFlow's SAME padding: an odd total puts the extra at the end."""
  effective = (kernel - 1) * dilation + 1
  total = max((-(-size // stride) - 1) * stride + effective - size, 0)
  return total // 2, total - total // 2


def _pads(spec: ConvSpec, dim: int, size: int, kernel: int) -> tuple[int, int]:
  """The (before, after) padding of spatial dim `dim`."""
  stride, dilation = spec.strides[dim], spec.dilation_rate[dim]
  if spec.padding == "same":
    return same_pads(size, kernel, stride, dilation)
  if spec.padding == "causal":
    return (kernel - 1) * dilation, 0
  if spec.padding == "valid":
    return 0, 0
  return spec.padding[dim]


def explicit_pads(spec: ConvSpec, spatial: Sequence[int],
                  kernel: Sequence[int]) -> tuple[tuple[int, int], ...]:
  """The (before, after) padding of each spatial dimension."""
  return tuple(_pads(spec, i, n, k)
               for i, (n, k) in enumerate(zip(spatial, kernel)))


def split_shape(spec: ConvSpec, shape: Sequence[Any],
                name: str = "inputs") -> tuple[tuple, tuple, Any]:
  """Splits an input shape into (leading batch dims, spatial dims, channels).

  Raises:
    ValueError: if the rank is too low for a `spec.rank`-D convolution.
  """
  shape = tuple(shape)
  if len(shape) < spec.rank + 1:
    raise ValueError(
        f"`{name}` (shape={shape}) must have rank >= {spec.rank + 1}: spatial"
        f" dims and channels, with optional leading batch dims; got rank"
        f" {len(shape)}"
    )
  if spec.channels_last:
    return shape[:-spec.rank - 1], shape[-spec.rank - 1:-1], shape[-1]
  return shape[:-spec.rank - 1], shape[-spec.rank:], shape[-spec.rank - 1]


def output_spatial(spec: ConvSpec, spatial: Sequence[Any],
                   kernel: Sequence[int], name: str = "inputs",
                   shape: Sequence[Any] = ()) -> tuple:
  """The output spatial shape; None sizes stay None.

  Raises:
    ValueError: if an output size would be 0 or less.
  """
  out = []
  for i, (n, k) in enumerate(zip(spatial, kernel)):
    if n is None:
      out.append(None)
      continue
    before, after = _pads(spec, i, n, k)
    effective = (k - 1) * spec.dilation_rate[i] + 1
    out.append((n + before + after - effective) // spec.strides[i] + 1)
  out = tuple(out)
  if any(o is not None and o < 1 for o in out):
    raise ValueError(
        f"`{name}` (shape={tuple(shape)}) is too small: its spatial shape"
        f" {tuple(spatial)} with kernel size {tuple(kernel)}, dilation_rate"
        f" {spec.dilation_rate} and padding={spec.padding!r} gives output"
        f" size {out}"
    )
  return out


def check_channels(channels: Any, name: str = "inputs",
                   shape: Sequence[Any] = ()) -> None:
  """Rejects zero channels (an empty depthwise convolution)."""
  if channels is not None and channels < 1:
    raise ValueError(
        f"`{name}` (shape={tuple(shape)}) has {channels} channels; at least"
        " one is needed"
    )


def shape_pattern(expected: Sequence[Any]) -> str:
  """A shape as Python prints a tuple, with ``?`` for None: ``(3, ?, 4)``."""
  shown = ", ".join("?" if e is None else str(e) for e in expected)
  return f"({shown},)" if len(expected) == 1 else f"({shown})"


def check_shape(name: str, shape: Sequence[int], expected: Sequence[Any],
                meaning: str, where: str = "", hint: str = "") -> None:
  """Checks an array's shape against `expected`; None matches any size.

  Args:
    name: the array's argument (or param) name.
    shape: its shape.
    expected: the sizes it must have; None for any size.
    meaning: what the expected sizes are, for the message.
    where: optionally, where the array came from (``"weights[1]"``).
    hint: optionally, a likely cause and its fix, added to the message
      (:func:`data_format_hint`, :func:`kernel_layout_hint`).

  Raises:
    ValueError: naming the array, its shape and the expected shape, and
      saying so when the rank is wrong.
  """
  shape = tuple(shape)
  label = f"`{name}` ({where + ', ' if where else ''}shape={shape})"
  hint = f"; {hint}" if hint else ""
  if len(shape) != len(expected):
    raise ValueError(
        f"{label} has rank {len(shape)}, but rank {len(expected)} is"
        f" needed: expected shape {shape_pattern(expected)}, {meaning}{hint}"
    )
  if not all(e is None or s == e for s, e in zip(shape, expected)):
    raise ValueError(
        f"{label} does not fit: expected shape {shape_pattern(expected)},"
        f" {meaning}{hint}"
    )


def data_format_hint(spec: ConvSpec, inputs_shape: Sequence[Any],
                     kernel_channels: Any) -> str:
  """Says so when the input's channels sit where the other format has them.

  A channels-first input to a channels-last layer (or the reverse) shows
  the kernel's channel count on the other format's channel axis.

  Args:
    spec: the convolution's configuration.
    inputs_shape: the input's shape.
    kernel_channels: the depthwise kernel's input channel count.

  Returns:
    The hint, naming `data_format` and the axis move; "" when the shapes
    do not suggest it.
  """
  shape = tuple(inputs_shape)
  if len(shape) < spec.rank + 1 or kernel_channels is None:
    return ""
  first_axis, last_axis = len(shape) - spec.rank - 1, len(shape) - 1
  axis, other_axis, other = (
      (last_axis, first_axis, CHANNELS_FIRST) if spec.channels_last
      else (first_axis, last_axis, CHANNELS_LAST))
  if shape[other_axis] != kernel_channels or shape[axis] == kernel_channels:
    return ""
  current = CHANNELS_FIRST if other == CHANNELS_LAST else CHANNELS_LAST
  return (
      f"`inputs` (shape={shape}) has the kernel's {kernel_channels} channels"
      f" on axis {other_axis}, where {other} keeps them, but `data_format`"
      f" is {current!r} (channels on axis {axis}): pass"
      f" data_format={other!r}, or move the channels with"
      f" `jnp.moveaxis(inputs, {other_axis}, {axis})`"
  )


def kernel_layout_hint(name: str, shape: Sequence[int], rank: int,
                       channels: Any = None) -> str:
  """Says how a depthwise kernel was read, when it looks like another layout.

  Keras's layout is ``(*kernel_size, in_channels, depth_multiplier)``.
  PyTorch's depthwise ``Conv2d(groups=C)`` weight is ``(C * M, 1, kh, kw)``
  and Flax's grouped ``nn.Conv(feature_group_count=C)`` kernel is
  ``(kh, kw, 1, C * M)``: read as Keras's they give a wrong kernel size or
  channel count, and the error then falls on another array.

  Args:
    name: the kernel's name in the message.
    shape: its shape.
    rank: the number of spatial dims.
    channels: the input channel count, if known.

  Returns:
    How the kernel was read and the transpose (or reshape) to Keras's
    layout; "" when the shape looks like neither.
  """
  shape = tuple(shape)
  if len(shape) != rank + 2:
    return ""
  read = (f"`{name}` (shape={shape}) was read in Keras's layout (*kernel_size,"
          f" in_channels, depth_multiplier) as kernel_size={shape[:-2]},"
          f" in_channels={shape[-2]}, depth_multiplier={shape[-1]}")
  # Each reading must fit the input's channels, and differ from Keras's in
  # what the other arrays would need (in_channels * depth_multiplier).
  keras_reading_fits = channels == shape[-2]
  if (shape[1] == 1
      and (channels is None or shape[0] % channels == 0)
      and not (keras_reading_fits and shape[0] == shape[-2] * shape[-1])):
    kernel = shape[2:]
    c = shape[0] if channels is None else channels
    m = shape[0] // c
    source = name if m == 1 else f"{name}.reshape{(c, m, *kernel)}"
    perm = (*range(2, rank + 2), 0, 1)
    return (
        f"{read}, but it looks like PyTorch's (in_channels * depth_multiplier,"
        f" 1, *kernel_size): for Keras's layout pass"
        f" `jnp.transpose({source}, {perm})` (shape {(*kernel, c, m)}"
        + (")" if channels is not None else ", if the depth multiplier is 1)")
    )
  if (shape[-2] == 1 and channels != 1
      and (channels is None or shape[-1] % channels == 0)):
    kernel = shape[:-2]
    c = shape[-1] if channels is None else channels
    m = shape[-1] // c
    return (
        f"{read}, but it looks like Flax's grouped nn.Conv kernel"
        f" (*kernel_size, 1, in_channels * depth_multiplier): for Keras's"
        f" layout pass `{name}.reshape{(*kernel, c, m)}`"
        + ("" if channels is not None else " (if the depth multiplier is 1)")
    )
  return ""


def batch_count(leading: Sequence[int]) -> int:
  """How many examples a tuple of leading batch dims holds."""
  return math.prod(leading)


def lookup(identifier: Any, table: Mapping[str, Callable[[], Any]], name: str,
           kind: str, allow_none: bool, unsupported: Sequence[str] = ()
           ) -> Any:
  """Resolves a Keras name through `table`; callables pass through.

  Args:
    identifier: the user's value.
    table: maps each accepted name to a factory of the resolved object.
    name: the argument's name, for error messages.
    kind: what the table holds ("activation", "initializer", ...).
    allow_none: whether None is accepted (and returned).
    unsupported: Keras names that are deliberately not supported.

  Raises:
    ValueError: for an unknown name, listing the known ones.
    TypeError: for a value that is neither a name nor callable.
  """
  if (identifier is None and allow_none) or callable(identifier):
    return identifier
  if not isinstance(identifier, str):
    accepted = "None, a callable" if allow_none else "a callable"
    raise TypeError(
        f"`{name}` (={identifier!r}) must be {accepted} or a Keras {kind}"
        f" name, not {type(identifier).__name__}"
    )
  if identifier in unsupported:
    raise ValueError(
        f"`{name}` (={identifier!r}) is a Keras {kind} that sepconv_jax does"
        f" not support; supported names: {', '.join(sorted(table))}"
    )
  if identifier not in table:
    raise ValueError(
        f"`{name}` (={identifier!r}) is not a known Keras {kind}; known"
        f" names: {', '.join(sorted(table))}"
    )
  return table[identifier]()


def check_implementation(implementation: Any, rank: int | None = None
                         ) -> None:
  """Rejects an unknown ``implementation=``, or one that lacks `rank`."""
  if not isinstance(implementation, str):
    raise TypeError(
        f"`implementation` (={implementation!r}) must be one of"
        f" {IMPLEMENTATIONS}, not {type(implementation).__name__}"
    )
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(
        f"`implementation` (={implementation!r}) must be one of"
        f" {IMPLEMENTATIONS}"
    )
  ranks = _RANKS.get(implementation)
  if rank is not None and ranks is not None and rank not in ranks:
    raise ValueError(
        f"`implementation` (={implementation!r}) supports"
        f" {' and '.join(f'{r}-D' for r in ranks)} convolutions; this one"
        f" is {rank}-D: use 'auto', 'lax' or 'taps'"
    )


def check_precision(precision: Any) -> None:
  """Rejects what `lax` would reject as a precision, with a clear message."""
  if precision is None or isinstance(precision, lax.Precision):
    return
  if isinstance(precision, str):
    try:
      lax.Precision(precision)
      return
    except ValueError:
      pass
  elif isinstance(precision, (tuple, list)) and len(precision) == 2:
    for p in precision:
      check_precision(p)
    return
  raise ValueError(
      f"`precision` (={precision!r}) must be None, a `jax.lax.Precision`, one"
      " of its names, or a pair of them"
  )


def check_bool(value: Any, name: str) -> bool:
  """Returns `value` if it is a bool, else raises a `TypeError`."""
  if not isinstance(value, bool):
    raise TypeError(f"`{name}` (={value!r}) must be a bool")
  return value


def check_dtypes(dtype: Any, param_dtype: Any) -> None:
  """Checks a layer's ``dtype`` (None or floating) and ``param_dtype``.

  Raises:
    TypeError: for a value that is no dtype or not a floating one, and for
      ``param_dtype=None``, which `jnp.dtype` would read as float64.
  """
  if param_dtype is None:
    raise TypeError("`param_dtype` (=None) must be a floating dtype")
  for name, value in (("dtype", dtype), ("param_dtype", param_dtype)):
    if value is None:
      continue
    try:
      floating = jnp.issubdtype(jnp.dtype(value), jnp.floating)
    except TypeError:
      raise TypeError(f"`{name}` (={value!r}) is not a dtype") from None
    if not floating:
      raise TypeError(f"`{name}` (={value!r}) must be a floating dtype")


def as_array(value: Any, name: str) -> jax.Array:
  """`value` as a JAX array of real numbers (or bools), else a `TypeError`."""
  if isinstance(value, (jax.Array, jax.core.Tracer)):
    array = value
  else:
    try:
      array = jnp.asarray(value)
    except (TypeError, ValueError) as e:
      raise TypeError(
          f"`{name}` (={value!r}) must be an array of numbers: {e}"
      ) from None
  if jnp.issubdtype(array.dtype, jnp.complexfloating) or not (
      jnp.issubdtype(array.dtype, jnp.number) or array.dtype == jnp.bool_
  ):
    raise TypeError(
        f"`{name}` (shape={tuple(array.shape)}) has dtype {array.dtype}; real"
        " numbers are needed"
    )
  return array
