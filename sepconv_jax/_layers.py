"""What the Keras-style layers share, in linen and in NNX alike.

A layer is a set of Keras arguments (read here off any object with those
attributes), a `Family` (which weights it has, their Keras names and shapes)
and a forward pass through :func:`sepconv_jax._ops.convolve`. The linen and
NNX modules only hold params and call these functions.
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
  """A kind of layer: its weights, their Keras names and their shapes.

  Weights are keyed by the prefix of their ``*_initializer``,
  ``*_regularizer`` and ``*_constraint`` arguments.
  """

  param_names: dict[str, str]
  param_shapes: Callable[[Config, int, bool], dict[str, tuple]]
  out_channels: Callable[[Config, Optional[int]], Optional[int]]


def _separable_shapes(cfg: Config, channels: int,
                      use_bias: bool) -> dict[str, tuple]:
  rank = cfg.spec.rank
  shapes = {
      "depthwise": cfg.kernel_size + (channels, cfg.depth_multiplier),
      "pointwise": (1,) * rank + (channels * cfg.depth_multiplier,
                                  cfg.filters),
  }
  if use_bias:
    shapes["bias"] = (cfg.filters,)
  return shapes


def _depthwise_shapes(cfg: Config, channels: int,
                      use_bias: bool) -> dict[str, tuple]:
  shapes = {"depthwise": cfg.kernel_size + (channels, cfg.depth_multiplier)}
  if use_bias:
    shapes["bias"] = (channels * cfg.depth_multiplier,)
  return shapes


SEPARABLE = Family(
    param_names={"depthwise": "depthwise_kernel",
                 "pointwise": "pointwise_kernel", "bias": "bias"},
    param_shapes=_separable_shapes,
    out_channels=lambda cfg, channels: cfg.filters,
)

DEPTHWISE = Family(
    param_names={"depthwise": "kernel", "bias": "bias"},
    param_shapes=_depthwise_shapes,
    out_channels=lambda cfg, channels: (
        None if channels is None else channels * cfg.depth_multiplier),
)


def layer_config(layer: Any, rank: int, family: Family) -> Config:
  """Validates a layer's Keras arguments and resolves their names.

  Args:
    layer: any object with the Keras arguments as attributes (`filters`
      only for layers that have one).
    rank: the number of spatial dims.
    family: the layer's weights.

  Raises:
    TypeError, ValueError: naming the first bad argument.
  """
  _args.check_bool(layer.use_bias, "use_bias")
  _args.check_precision(layer.precision)
  _args.check_implementation(layer.implementation)
  _args.check_dtypes(layer.dtype, layer.param_dtype)
  weights = family.param_names
  return Config(
      spec=_args.conv_spec(rank, layer.strides, layer.padding,
                           layer.data_format, layer.dilation_rate,
                           layer.padding_mode),
      kernel_size=_args.normalize_tuple(layer.kernel_size, rank,
                                        "kernel_size"),
      filters=(_args.positive_int(layer.filters, "filters")
               if hasattr(layer, "filters") else None),
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
                      inputs_shape: tuple) -> None:
  """Rejects a loaded param whose shape does not fit the input."""
  if tuple(existing) != tuple(shape):
    raise ValueError(
        f"`{name}` (shape={tuple(existing)}) does not fit `inputs`"
        f" (shape={tuple(inputs_shape)}): this layer needs shape {shape};"
        " were the params built for another channel count or configuration?"
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
