"""What the Keras-style layers share, in linen and in NNX alike.

A layer is a set of Keras arguments (read here off any object with those
attributes, and resolved once into a `Config` that the layer keeps in a
`Resolved`), a `Family` (which weights it has, their Keras names and shapes,
its Keras peers) and a forward pass through
:func:`sepconv_jax._ops.convolve`. The linen and NNX modules only hold
params and call these functions.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
from flax.linen.dtypes import promote_dtype

from sepconv_jax import _activations
from sepconv_jax import _args
from sepconv_jax import _constraints
from sepconv_jax import _initializers
from sepconv_jax import _ops
from sepconv_jax import _regularizers


class Config(NamedTuple):
  """A layer's validated configuration, with the Keras names resolved."""

  spec: _args.ConvSpec
  kernel_size: tuple[int, ...]
  filters: Optional[int]
  depth_multiplier: int
  activation: Optional[Callable]
  initializers: dict[str, Callable]
  regularizers: dict[str, Optional[Callable]]
  activity_regularizer: Optional[Callable]
  constraints: dict[str, Optional[Callable]]


class Family(NamedTuple):
  """A kind of layer: its weights, their names and shapes, its Keras peers.

  Weights are keyed by the prefix of their ``*_initializer``,
  ``*_regularizer`` and ``*_constraint`` arguments, in Keras's order.

  Attributes:
    name: the family's name, for messages ("separable", "depthwise").
    param_names: each weight's param name, Keras's weight name.
    param_shapes: the params' shapes for a config (or anything with its
      ``kernel_size``, ``depth_multiplier`` and ``filters``), the input
      channels and ``use_bias``.
    layouts: each weight's shape in words, for messages.
    out_channels: the output channels for a config and the input channels.
    arguments: the family's own Keras arguments (``filters``), beyond those
      every layer takes (:func:`keras_arguments` lists them all).
    keras_classes: by spatial rank, the name of the Keras layer class (then
      its aliases); a rank without one has no Keras counterpart.
    causal: whether the 1-D layer takes ``padding="causal"``, as tf.keras's
      ``SeparableConv1D`` did and its ``DepthwiseConv1D`` did not.
  """

  name: str
  param_names: dict[str, str]
  param_shapes: Callable[[Any, int, bool], dict[str, tuple]]
  layouts: dict[str, str]
  out_channels: Callable[[Config, Optional[int]], Optional[int]]
  arguments: tuple[str, ...]
  keras_classes: dict[int, tuple[str, ...]]
  causal: bool


def _separable_shapes(cfg: Any, channels: int,
                      use_bias: bool) -> dict[str, tuple]:
  shapes = {
      "depthwise": tuple(cfg.kernel_size) + (channels, cfg.depth_multiplier),
      "pointwise": (1,) * len(cfg.kernel_size) + (
          channels * cfg.depth_multiplier, cfg.filters),
  }
  if use_bias:
    shapes["bias"] = (cfg.filters,)
  return shapes


def _depthwise_shapes(cfg: Any, channels: int,
                      use_bias: bool) -> dict[str, tuple]:
  shapes = {"depthwise": tuple(cfg.kernel_size) + (channels,
                                                   cfg.depth_multiplier)}
  if use_bias:
    shapes["bias"] = (channels * cfg.depth_multiplier,)
  return shapes


_KERNEL_LAYOUT = "(*kernel_size, in_channels, depth_multiplier)"

SEPARABLE = Family(
    name="separable",
    param_names={"depthwise": "depthwise_kernel",
                 "pointwise": "pointwise_kernel", "bias": "bias"},
    param_shapes=_separable_shapes,
    layouts={"depthwise": _KERNEL_LAYOUT,
             "pointwise": "(1 per spatial dim, in_channels * depth_multiplier,"
                          " filters)",
             "bias": "(filters,)"},
    out_channels=lambda cfg, channels: cfg.filters,
    arguments=("filters",),
    keras_classes={1: ("SeparableConv1D", "SeparableConvolution1D"),
                   2: ("SeparableConv2D", "SeparableConvolution2D")},
    causal=True,
)

DEPTHWISE = Family(
    name="depthwise",
    param_names={"depthwise": "kernel", "bias": "bias"},
    param_shapes=_depthwise_shapes,
    layouts={"depthwise": _KERNEL_LAYOUT,
             "bias": "(in_channels * depth_multiplier,)"},
    out_channels=lambda cfg, channels: (
        None if channels is None else channels * cfg.depth_multiplier),
    arguments=(),
    keras_classes={1: ("DepthwiseConv1D",), 2: ("DepthwiseConv2D",)},
    causal=False,
)

#: Every family, separable first.
FAMILIES = (SEPARABLE, DEPTHWISE)

#: The arguments every layer takes beyond Keras's (Flax's and ours).
EXTRA_ARGUMENTS = ("dtype", "param_dtype", "precision", "implementation",
                   "padding_mode")


def keras_arguments(family: Family) -> tuple[str, ...]:
  """A family's Keras arguments, in the order of Keras's ``get_config()``.

  That is every key of the config but ``name``, ``trainable`` and
  ``dtype``.
  """
  weights = tuple(family.param_names)
  return (("depth_multiplier",) + family.arguments
          + ("kernel_size", "strides", "padding", "data_format",
             "dilation_rate", "activation", "use_bias")
          + tuple(f"{w}_initializer" for w in weights)
          + tuple(f"{w}_regularizer" for w in weights)
          + ("activity_regularizer",)
          + tuple(f"{w}_constraint" for w in weights))


class Resolved:
  """A layer's :class:`Config`, resolved once and kept beside its arguments.

  It takes no part in equality, hashing, copying or pickling (every two
  compare equal; a copy is empty), so layers with equal arguments stay
  equal and hash alike, NNX keeps it as a static attribute, and a copied or
  unpickled layer resolves its arguments again when it is first used.
  """

  __slots__ = ("config",)

  def __init__(self, config: Optional[Config] = None):
    self.config = config

  def get(self, resolve: Callable[[], Config]) -> Config:
    """The config, resolved by `resolve` if this holds none yet."""
    if self.config is None:
      self.config = resolve()
    return self.config

  def __eq__(self, other: Any) -> bool:
    return isinstance(other, Resolved)

  def __hash__(self) -> int:
    return hash(Resolved)

  def __reduce__(self):
    return Resolved, ()

  def __repr__(self) -> str:
    return "Resolved(...)"


def layer_config(layer: Any, rank: int, family: Family) -> Config:
  """Validates a layer's Keras arguments and resolves their names.

  Args:
    layer: any object with the layer's arguments as attributes
      (:func:`keras_arguments` and :data:`EXTRA_ARGUMENTS`).
    rank: the number of spatial dims.
    family: the layer's weights.

  Raises:
    TypeError, ValueError: naming the first bad argument.
  """
  _args.check_bool(layer.use_bias, "use_bias")
  _args.check_precision(layer.precision)
  _args.check_implementation(layer.implementation, rank)
  _args.check_dtypes(layer.dtype, layer.param_dtype)
  spec = _args.conv_spec(rank, layer.strides, layer.padding,
                         layer.data_format, layer.dilation_rate,
                         layer.padding_mode)
  if spec.padding == "causal" and not family.causal:
    raise ValueError(
        f"`padding` (={layer.padding!r}) is refused by"
        f" {type(layer).__name__}, as Keras (3 and tf.keras) refuses it;"
        " for left padding only, pass the explicit pair"
        " ((kernel_size - 1) * dilation_rate, 0)"
    )
  weights = family.param_names
  return Config(
      spec=spec,
      kernel_size=_args.normalize_tuple(layer.kernel_size, rank,
                                        "kernel_size"),
      filters=(_args.positive_int(layer.filters, "filters")
               if "filters" in family.arguments else None),
      depth_multiplier=_args.positive_int(layer.depth_multiplier,
                                          "depth_multiplier"),
      activation=_activations.get(layer.activation),
      initializers={
          w: _initializers.get(getattr(layer, f"{w}_initializer"),
                               f"{w}_initializer") for w in weights},
      regularizers={
          w: _regularizers.get(getattr(layer, f"{w}_regularizer"),
                               f"{w}_regularizer") for w in weights},
      activity_regularizer=_regularizers.get(layer.activity_regularizer,
                                             "activity_regularizer"),
      constraints={
          w: _constraints.get(getattr(layer, f"{w}_constraint"),
                              f"{w}_constraint") for w in weights},
  )


def input_channels(cfg: Config, x: jax.Array) -> tuple[tuple, int]:
  """The leading batch dims and the channel count of the layer's input."""
  leading, _, channels = _args.split_shape(cfg.spec, x.shape)
  _args.check_channels(channels, shape=x.shape)
  return leading, channels


def check_param_shape(name: str, existing: tuple, shape: tuple,
                      inputs_shape: tuple, spec: _args.ConvSpec,
                      depthwise: bool = False) -> None:
  """Rejects a loaded param whose shape does not fit the input.

  For the depthwise kernel the message also names the likely cause, when
  the shapes suggest one: an input in the other `data_format`, or a kernel
  in PyTorch's or Flax's grouped layout.
  """
  existing, shape = tuple(existing), tuple(shape)
  if existing == shape:
    return
  hint = ""
  if depthwise and len(existing) == spec.rank + 2:
    hint = (_args.data_format_hint(spec, inputs_shape, existing[-2])
            or _args.kernel_layout_hint(name, existing, spec.rank,
                                        shape[-2]))
  raise ValueError(
      f"`{name}` (shape={existing}) does not fit `inputs`"
      f" (shape={tuple(inputs_shape)}): this layer needs shape {shape};"
      + (f" {hint}" if hint else
         " were the params built for another channel count or"
         " configuration?")
  )


def forward(cfg: Config, x: jax.Array, params: dict[str, jax.Array], *,
            dtype: Any, precision: Any, implementation: str) -> jax.Array:
  """The convolution, bias and activation, in the promoted dtype."""
  x, dk, pk, b = promote_dtype(x, params["depthwise"],
                               params.get("pointwise"), params.get("bias"),
                               dtype=dtype)
  y = _ops.convolve(x, dk, pk, b, cfg.spec, precision, implementation)
  return y if cfg.activation is None else cfg.activation(y)


def weight_penalties(cfg: Config,
                     params: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Each weight regularizer's penalty, by ``<weight>_regularizer`` name."""
  return {f"{w}_regularizer": cfg.regularizers[w](value)
          for w, value in params.items()
          if value is not None and cfg.regularizers[w] is not None}


def activity_penalty(cfg: Config, y: jax.Array,
                     leading: Sequence[int]) -> Optional[jax.Array]:
  """The activity penalty divided by the batch size, as Keras divides it."""
  if cfg.activity_regularizer is None:
    return None
  return cfg.activity_regularizer(y) / max(_args.batch_count(leading), 1)


def constraints(cfg: Config, family: Family,
                use_bias: bool) -> dict[str, Callable]:
  """The constraint of each param that has one, by Keras param name."""
  return {family.param_names[w]: cfg.constraints[w]
          for w in family.param_shapes(cfg, 1, use_bias)
          if cfg.constraints[w] is not None}


def output_shape(cfg: Config, family: Family,
                 input_shape: Sequence[Any]) -> tuple:
  """The output shape for `input_shape`; None sizes stay None.

  Raises:
    TypeError: for entries that are not non-negative ints or None.
    ValueError: for a shape the layer would reject.
  """
  if not isinstance(input_shape, (tuple, list)):
    raise TypeError(
        f"`input_shape` (={input_shape!r}) must be a tuple or list of"
        " non-negative ints or None"
    )
  shape = tuple(input_shape)
  if not all(d is None or (_args.is_int(d) and d >= 0) for d in shape):
    raise TypeError(
        f"`input_shape` (={input_shape!r}) must hold non-negative ints or"
        " None"
    )
  leading, spatial, channels = _args.split_shape(cfg.spec, shape,
                                                 "input_shape")
  _args.check_channels(channels, "input_shape", shape)
  out = _args.output_spatial(cfg.spec, spatial, cfg.kernel_size,
                             "input_shape", shape)
  out_channels = family.out_channels(cfg, channels)
  if cfg.spec.channels_last:
    return leading + out + (out_channels,)
  return leading + (out_channels,) + out


def initial_params(cfg: Config, family: Family, channels: int,
                   use_bias: bool, key: jax.Array,
                   param_dtype: Any) -> dict[str, jax.Array]:
  """Fresh params from the initializers, keyed by weight (for NNX)."""
  shapes = family.param_shapes(cfg, channels, use_bias)
  keys = jax.random.split(key, len(shapes))
  return {w: cfg.initializers[w](k, shape, param_dtype)
          for k, (w, shape) in zip(keys, shapes.items())}
