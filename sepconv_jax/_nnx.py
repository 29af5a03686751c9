"""The Flax NNX modules: the same layers, with eager params and `rngs`."""

from __future__ import annotations

from typing import Any, ClassVar, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from flax.typing import Dtype
from flax.typing import LaxPadding
from flax.typing import PrecisionLike

from sepconv_jax import _activations
from sepconv_jax import _args
from sepconv_jax import _constraints
from sepconv_jax import _initializers
from sepconv_jax import _keras_config
from sepconv_jax import _layers
from sepconv_jax import _regularizers

ActivationLike = _activations.ActivationLike
ConstraintLike = _constraints.ConstraintLike
InitializerLike = _initializers.InitializerLike
RegularizerLike = _regularizers.RegularizerLike

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


class _KerasConv(nnx.Module):
  """What the Keras-style NNX layers share.

  The constructor of a subclass stores its arguments as attributes, then
  calls `_build`, which validates them (so bad arguments fail at
  construction, as in Keras), normalises them, resolves them once and
  creates the params with Keras's names. Setting an argument afterwards
  makes the layer resolve its arguments again when next called.
  """

  #: The number of spatial dims.
  RANK: ClassVar[int]
  #: The layer's weights, their names and shapes, and its Keras peers.
  FAMILY: ClassVar[_layers.Family]

  def _store(self, arguments: dict[str, Any]) -> None:
    """Stores a constructor's arguments (its ``locals()``) as attributes."""
    for name, value in arguments.items():
      if name not in ("self", "in_channels", "rngs", "__class__"):
        setattr(self, name, value)

  def _build(self, in_channels: int, rngs: nnx.Rngs) -> None:
    in_channels = _args.positive_int(in_channels, "in_channels")
    if self.name is not None and not isinstance(self.name, str):
      raise TypeError(f"`name` (={self.name!r}) must be a str or None")
    cfg = self._resolve()
    # Hashable, normalised attributes: nnx keeps them in the graph's static
    # part.
    self.kernel_size = cfg.kernel_size
    self.strides = cfg.spec.strides
    self.dilation_rate = cfg.spec.dilation_rate
    self.padding = cfg.spec.padding
    self.padding_mode = cfg.spec.padding_mode
    self.data_format = (_args.CHANNELS_LAST if cfg.spec.channels_last
                        else _args.CHANNELS_FIRST)
    self.in_channels = in_channels
    params = _layers.initial_params(cfg, self.FAMILY, in_channels,
                                    self.use_bias, rngs.params(),
                                    self.param_dtype)
    for w, name in self.FAMILY.param_names.items():
      setattr(self, name, nnx.Param(params[w]) if w in params else None)
    self._resolved = _layers.Resolved(cfg)

  def __setattr__(self, name: str, value: Any) -> None:
    super().__setattr__(name, value)
    if name in self._ARGUMENTS and "_resolved" in vars(self):
      super().__setattr__("_resolved", _layers.Resolved())

  def _resolve(self) -> _layers.Config:
    return _layers.layer_config(self, self.RANK, self.FAMILY)

  def _config(self) -> _layers.Config:
    return self._resolved.get(self._resolve)

  def __call__(self, inputs: jax.typing.ArrayLike) -> jax.Array:
    """Applies the layer; see the linen layer of the same name.

    Under ``nnx.capture(model, Losses)`` the penalties of the regularizers
    are sown as :class:`Losses`.
    """
    cfg = self._config()
    x = _args.as_array(inputs, "inputs")
    leading, channels = _layers.input_channels(cfg, x)
    shapes = self.FAMILY.param_shapes(cfg, channels, self.use_bias)
    params = {}
    for w, shape in shapes.items():
      name = self.FAMILY.param_names[w]
      params[w] = getattr(self, name)[...]
      _layers.check_param_shape(name, jnp.shape(params[w]), shape, x.shape,
                                cfg.spec, depthwise=w == "depthwise")
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
    return _layers.constraints(self._config(), self.FAMILY, self.use_bias)

  def compute_output_shape(self, input_shape: Sequence[Any]) -> tuple:
    """The output shape for `input_shape`; None sizes stay None."""
    return _layers.output_shape(self._config(), self.FAMILY, input_shape)


class _KerasPeer:
  """The Keras interop of the NNX layers that have a Keras counterpart."""

  @classmethod
  def from_keras_config(cls, config: dict[str, Any], *, in_channels: int,
                        rngs: nnx.Rngs, allow_frozen: bool = False) -> Any:
    """Builds the layer from its Keras counterpart's ``get_config()``.

    As the linen layer's ``from_keras_config`` (see
    :meth:`sepconv_jax.SeparableConv2D.from_keras_config`), with what the
    NNX constructor needs besides. The Keras ``name`` becomes the layer's
    ``name`` attribute.

    Args:
      config: the Keras 3 config.
      in_channels: the input's channel count.
      rngs: the `nnx.Rngs` that the initializers draw from.
      allow_frozen: accept ``"trainable": False``.

    Returns:
      The layer, with freshly drawn params.
    """
    return _keras_config.from_keras_config(
        cls, config, allow_frozen=allow_frozen, in_channels=in_channels,
        rngs=rngs)

  def to_keras_config(self) -> dict[str, Any]:
    """The config for the Keras counterpart's ``from_config``.

    See :meth:`sepconv_jax.SeparableConv2D.to_keras_config`.
    """
    return _keras_config.to_keras_config(self, self._config())


class _SeparableConv(_KerasConv):
  """The separable NNX layers of every rank."""

  FAMILY: ClassVar[_layers.Family] = _layers.SEPARABLE
  _ARGUMENTS: ClassVar[frozenset] = frozenset(
      _layers.keras_arguments(_layers.SEPARABLE) + _layers.EXTRA_ARGUMENTS)

  def __init__(
      self,
      in_channels: int,
      filters: int,
      kernel_size: int | Sequence[int],
      *,
      strides: int | Sequence[int] = 1,
      padding: LaxPadding = "valid",
      data_format: Optional[str] = None,
      dilation_rate: int | Sequence[int] = 1,
      depth_multiplier: int = 1,
      activation: ActivationLike = None,
      use_bias: bool = True,
      depthwise_initializer: InitializerLike = "glorot_uniform",
      pointwise_initializer: InitializerLike = "glorot_uniform",
      bias_initializer: InitializerLike = "zeros",
      depthwise_regularizer: RegularizerLike = None,
      pointwise_regularizer: RegularizerLike = None,
      bias_regularizer: RegularizerLike = None,
      activity_regularizer: RegularizerLike = None,
      depthwise_constraint: ConstraintLike = None,
      pointwise_constraint: ConstraintLike = None,
      bias_constraint: ConstraintLike = None,
      dtype: Optional[Dtype] = None,
      param_dtype: Dtype = jnp.float32,
      precision: PrecisionLike = None,
      implementation: str = "auto",
      padding_mode: str = "zeros",
      name: Optional[str] = None,
      rngs: nnx.Rngs,
  ):
    """Builds the layer and its params.

    The arguments but `in_channels`, `name` and `rngs` are the attributes
    of the linen layer of the same name (see
    :class:`sepconv_jax.SeparableConv2D`), with the same defaults.

    Args:
      in_channels: the input's channel count (NNX creates params eagerly).
      name: the Keras layer name, if any: NNX modules have no name of their
        own, and ``to_keras_config`` writes it back.
      rngs: the `nnx.Rngs` that the initializers draw from.

    Raises:
      TypeError, ValueError: naming the first bad argument.
    """
    self._store(locals())
    self._build(in_channels, rngs)


class SeparableConv1D(_SeparableConv, _KerasPeer):
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

  RANK: ClassVar[int] = 1


class SeparableConv2D(_SeparableConv, _KerasPeer):
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

  RANK: ClassVar[int] = 2


class SeparableConv3D(_SeparableConv):
  """NNX counterpart of :class:`sepconv_jax.SeparableConv3D`."""

  RANK: ClassVar[int] = 3


class _DepthwiseConv(_KerasConv):
  """The depthwise NNX layers of every rank."""

  FAMILY: ClassVar[_layers.Family] = _layers.DEPTHWISE
  _ARGUMENTS: ClassVar[frozenset] = frozenset(
      _layers.keras_arguments(_layers.DEPTHWISE) + _layers.EXTRA_ARGUMENTS)

  def __init__(
      self,
      in_channels: int,
      kernel_size: int | Sequence[int],
      *,
      strides: int | Sequence[int] = 1,
      padding: LaxPadding = "valid",
      depth_multiplier: int = 1,
      data_format: Optional[str] = None,
      dilation_rate: int | Sequence[int] = 1,
      activation: ActivationLike = None,
      use_bias: bool = True,
      depthwise_initializer: InitializerLike = "glorot_uniform",
      bias_initializer: InitializerLike = "zeros",
      depthwise_regularizer: RegularizerLike = None,
      bias_regularizer: RegularizerLike = None,
      activity_regularizer: RegularizerLike = None,
      depthwise_constraint: ConstraintLike = None,
      bias_constraint: ConstraintLike = None,
      dtype: Optional[Dtype] = None,
      param_dtype: Dtype = jnp.float32,
      precision: PrecisionLike = None,
      implementation: str = "auto",
      padding_mode: str = "zeros",
      name: Optional[str] = None,
      rngs: nnx.Rngs,
  ):
    """Builds the layer and its params.

    The arguments but `in_channels`, `name` and `rngs` are the attributes
    of the linen layer of the same name (see
    :class:`sepconv_jax.DepthwiseConv2D`), with the same defaults; the
    other three are those of the separable NNX layers.

    Raises:
      TypeError, ValueError: naming the first bad argument.
    """
    self._store(locals())
    self._build(in_channels, rngs)


class DepthwiseConv1D(_DepthwiseConv, _KerasPeer):
  """NNX counterpart of :class:`sepconv_jax.DepthwiseConv1D`.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import sepconv_jax
    >>> layer = sepconv_jax.nnx.DepthwiseConv1D(4, 3, depth_multiplier=2,
    ...                                         rngs=nnx.Rngs(0))
    >>> layer.kernel.shape, layer(jnp.ones((2, 10, 4))).shape
    ((3, 4, 2), (2, 8, 8))
  """

  RANK: ClassVar[int] = 1


class DepthwiseConv2D(_DepthwiseConv, _KerasPeer):
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

  RANK: ClassVar[int] = 2
