"""The Flax NNX modules: the same layers, with eager params and `rngs`."""

from __future__ import annotations

from typing import Any, ClassVar, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from sepconv_jax import _args
from sepconv_jax import _layers

# Flax >= 0.12 records sown values only inside `nnx.capture`, which marks
# every module it captures with a `__captures__` attribute.
_HAS_CAPTURE = hasattr(nnx, "capture")


class Losses(nnx.Intermediate):
  """The variable type that the NNX layers sow their penalties into.

  Capture them with `nnx.capture` and sum them as the linen ``losses``
  collection is summed::

    y, losses = nnx.capture(model, Losses)(x)
    penalty = sepconv_jax.regularization_loss(losses)

  Calls outside a capture record nothing, as Flax deprecates sowing there.
  (On a Flax without `nnx.capture`, penalties are sown as attributes;
  ``nnx.pop(model, Losses)`` takes them.)
  """


def _store_arguments(layer: nnx.Module, arguments: dict[str, Any]) -> None:
  """Stores a constructor's Keras arguments as the layer's attributes."""
  for name, value in arguments.items():
    if name not in ("self", "in_channels", "rngs", "__class__"):
      setattr(layer, name, value)


class _KerasConv(nnx.Module):
  """What the Keras-style NNX layers share.

  The constructor of a subclass stores the Keras arguments as attributes,
  then calls `_build`, which validates them (so bad arguments fail at
  construction, as in Keras), normalises them and creates the params with
  Keras's names.
  """

  _rank: ClassVar[int]
  _FAMILY: ClassVar[_layers.Family]

  def _build(self, in_channels: int, rngs: nnx.Rngs) -> None:
    in_channels = _args.positive_int(in_channels, "in_channels")
    cfg = self._config()
    # Hashable, normalised attributes: nnx keeps them in the graph's static
    # part, and `_config` re-reads them on each call.
    self.kernel_size = cfg.kernel_size
    self.strides = cfg.spec.strides
    self.dilation_rate = cfg.spec.dilation_rate
    self.padding = cfg.spec.padding
    self.padding_mode = cfg.spec.padding_mode
    self.data_format = (_args.CHANNELS_LAST if cfg.spec.channels_last
                        else _args.CHANNELS_FIRST)
    self.in_channels = in_channels
    params = _layers.initial_params(cfg, self._FAMILY, in_channels,
                                    self.use_bias, rngs.params(),
                                    self.param_dtype)
    for w, name in self._FAMILY.param_names.items():
      setattr(self, name, nnx.Param(params[w]) if w in params else None)

  def _config(self) -> _layers.Config:
    return _layers.layer_config(self, self._rank, self._FAMILY)

  def __call__(self, inputs: jax.typing.ArrayLike) -> jax.Array:
    """Applies the layer; see the linen layer of the same name.

    Under ``nnx.capture(model, Losses)`` the penalties of the regularizers
    are sown as :class:`Losses`.
    """
    cfg = self._config()
    x = _args.as_array(inputs, "inputs")
    leading, channels = _layers.input_channels(cfg, x)
    shapes = self._FAMILY.param_shapes(cfg, channels, self.use_bias)
    params = {}
    for w, shape in shapes.items():
      name = self._FAMILY.param_names[w]
      params[w] = getattr(self, name)[...]
      _layers.check_param_shape(name, jnp.shape(params[w]), shape, x.shape)
    y = _layers.forward(cfg, x, params, dtype=self.dtype,
                        precision=self.precision,
                        implementation=self.implementation)
    if _HAS_CAPTURE and not hasattr(self, "__captures__"):
      return y  # Not under `nnx.capture`: nothing records the penalties.
    # Named as in the linen `losses` collection plus "_loss", since the
    # plain names are the regularizer attributes themselves.
    for name, value in _layers.weight_penalties(cfg, params).items():
      self.sow(Losses, f"{name}_loss", value, init_fn=lambda: 0.0,
               reduce_fn=lambda _, new: new)
    activity = _layers.activity_penalty(cfg, y, leading)
    if activity is not None:
      self.sow(Losses, "activity_regularizer_loss", activity)
    return y

  def keras_constraints(self) -> dict[str, Any]:
    """The constraint of each param that has one, by param name."""
    return _layers.constraints(self._config(), self._FAMILY, self.use_bias)

  def compute_output_shape(self, input_shape: Sequence[Any]) -> tuple:
    """The output shape for `input_shape`; None sizes stay None."""
    return _layers.output_shape(self._config(), self._FAMILY, input_shape)


class _SeparableConv(_KerasConv):
  """The separable NNX layers of every rank."""

  _FAMILY: ClassVar[_layers.Family] = _layers.SEPARABLE

  def __init__(
      self,
      in_channels: int,
      filters: int,
      kernel_size: int | Sequence[int],
      *,
      strides: int | Sequence[int] = 1,
      padding: Any = "valid",
      data_format: Optional[str] = None,
      dilation_rate: int | Sequence[int] = 1,
      depth_multiplier: int = 1,
      activation: Any = None,
      use_bias: bool = True,
      depthwise_initializer: Any = "glorot_uniform",
      pointwise_initializer: Any = "glorot_uniform",
      bias_initializer: Any = "zeros",
      depthwise_regularizer: Any = None,
      pointwise_regularizer: Any = None,
      bias_regularizer: Any = None,
      activity_regularizer: Any = None,
      depthwise_constraint: Any = None,
      pointwise_constraint: Any = None,
      bias_constraint: Any = None,
      dtype: Optional[Any] = None,
      param_dtype: Any = jnp.float32,
      precision: _args.PrecisionLike = None,
      implementation: str = "auto",
      padding_mode: str = "zeros",
      rngs: nnx.Rngs,
  ):
    """Builds the layer and its params.

    Args:
      in_channels: the input's channel count (NNX creates params eagerly).
      filters: see :class:`sepconv_jax.SeparableConv2D`, whose attributes
        these arguments are, with the same defaults.
      kernel_size: likewise.
      strides: likewise.
      padding: likewise.
      data_format: likewise.
      dilation_rate: likewise.
      depth_multiplier: likewise.
      activation: likewise.
      use_bias: likewise.
      depthwise_initializer: likewise.
      pointwise_initializer: likewise.
      bias_initializer: likewise.
      depthwise_regularizer: likewise.
      pointwise_regularizer: likewise.
      bias_regularizer: likewise.
      activity_regularizer: likewise.
      depthwise_constraint: likewise.
      pointwise_constraint: likewise.
      bias_constraint: likewise.
      dtype: likewise.
      param_dtype: likewise.
      precision: likewise.
      implementation: likewise.
      padding_mode: likewise.
      rngs: the `nnx.Rngs` that the initializers draw from.

    Raises:
      TypeError, ValueError: naming the first bad argument.
    """
    _store_arguments(self, locals())
    self._build(in_channels, rngs)


class SeparableConv1D(_SeparableConv):
  """NNX counterpart of :class:`sepconv_jax.SeparableConv1D`.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import sepconv_jax
    >>> layer = sepconv_jax.nnx.SeparableConv1D(4, 8, 3, padding="causal",
    ...                                         rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((2, 10, 4))).shape
    (2, 10, 8)
  """

  _rank: ClassVar[int] = 1


class SeparableConv2D(_SeparableConv):
  """NNX counterpart of :class:`sepconv_jax.SeparableConv2D`.

  The params ``depthwise_kernel``, ``pointwise_kernel`` and ``bias`` have the
  linen layer's (and Keras's) names and shapes.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import sepconv_jax
    >>> layer = sepconv_jax.nnx.SeparableConv2D(3, 8, 3, padding="same",
    ...                                         rngs=nnx.Rngs(0))
    >>> layer.depthwise_kernel.shape, layer.pointwise_kernel.shape
    ((3, 3, 3, 1), (1, 1, 3, 8))
    >>> layer(jnp.ones((2, 16, 16, 3))).shape
    (2, 16, 16, 8)
  """

  _rank: ClassVar[int] = 2


class SeparableConv3D(_SeparableConv):
  """NNX counterpart of :class:`sepconv_jax.SeparableConv3D`."""

  _rank: ClassVar[int] = 3


class DepthwiseConv2D(_KerasConv):
  """NNX counterpart of :class:`sepconv_jax.DepthwiseConv2D`.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import sepconv_jax
    >>> layer = sepconv_jax.nnx.DepthwiseConv2D(4, 3, depth_multiplier=2,
    ...                                         rngs=nnx.Rngs(0))
    >>> layer.kernel.shape, layer.bias.shape
    ((3, 3, 4, 2), (8,))
  """

  _rank: ClassVar[int] = 2
  _FAMILY: ClassVar[_layers.Family] = _layers.DEPTHWISE

  def __init__(
      self,
      in_channels: int,
      kernel_size: int | Sequence[int],
      *,
      strides: int | Sequence[int] = 1,
      padding: Any = "valid",
      depth_multiplier: int = 1,
      data_format: Optional[str] = None,
      dilation_rate: int | Sequence[int] = 1,
      activation: Any = None,
      use_bias: bool = True,
      depthwise_initializer: Any = "glorot_uniform",
      bias_initializer: Any = "zeros",
      depthwise_regularizer: Any = None,
      bias_regularizer: Any = None,
      activity_regularizer: Any = None,
      depthwise_constraint: Any = None,
      bias_constraint: Any = None,
      dtype: Optional[Any] = None,
      param_dtype: Any = jnp.float32,
      precision: _args.PrecisionLike = None,
      implementation: str = "auto",
      padding_mode: str = "zeros",
      rngs: nnx.Rngs,
  ):
    """Builds the layer and its params.

    Args:
      in_channels: the input's channel count (NNX creates params eagerly).
      kernel_size: see :class:`sepconv_jax.DepthwiseConv2D`, whose
        attributes these arguments are, with the same defaults.
      strides: likewise.
      padding: likewise.
      depth_multiplier: likewise.
      data_format: likewise.
      dilation_rate: likewise.
      activation: likewise.
      use_bias: likewise.
      depthwise_initializer: likewise.
      bias_initializer: likewise.
      depthwise_regularizer: likewise.
      bias_regularizer: likewise.
      activity_regularizer: likewise.
      depthwise_constraint: likewise.
      bias_constraint: likewise.
      dtype: likewise.
      param_dtype: likewise.
      precision: likewise.
      implementation: likewise.
      padding_mode: likewise.
      rngs: the `nnx.Rngs` that the initializers draw from.

    Raises:
      TypeError, ValueError: naming the first bad argument.
    """
    _store_arguments(self, locals())
    self._build(in_channels, rngs)
