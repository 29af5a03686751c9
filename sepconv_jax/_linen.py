"""The Flax linen modules: thin layers of params and Keras extras."""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
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


class _KerasConv(nn.Module):
  """What the Keras-style linen layers share: params, penalties, shapes.

  A subclass declares its dataclass fields (the Keras arguments), its
  `RANK` and its `FAMILY`; the rest lives in :mod:`sepconv_jax._layers`,
  shared with the NNX layers. The arguments are resolved once, when the
  module is constructed (and again for each clone Flax makes).
  """

  #: The number of spatial dims.
  RANK: ClassVar[int]
  #: The layer's weights, their names and shapes, and its Keras peers.
  FAMILY: ClassVar[_layers.Family]

  def __post_init__(self):
    # Bad arguments fail here, at construction, as in Keras.
    object.__setattr__(self, "_resolved", _layers.Resolved(self._resolve()))
    super().__post_init__()

  def _resolve(self) -> _layers.Config:
    return _layers.layer_config(self, self.RANK, self.FAMILY)

  def _config(self) -> _layers.Config:
    return self._resolved.get(self._resolve)

  def _param(self, weight: str, init: Callable, shape: tuple,
             inputs_shape: tuple) -> jax.Array:
    """`self.param`, with a clear error when loaded params do not fit."""
    name = self.FAMILY.param_names[weight]
    if self.has_variable("params", name):
      existing = jnp.shape(nn.meta.unbox(self.get_variable("params", name)))
      _layers.check_param_shape(name, existing, shape, inputs_shape,
                                self._config().spec,
                                depthwise=weight == "depthwise")
    elif not self.is_mutable_collection("params"):
      raise ValueError(
          f"`{name}` (shape={shape}) is missing from the params given to"
          " `apply`; were they built for a layer with another `use_bias`?"
      )
    return self.param(name, init, shape, self.param_dtype)

  @nn.compact
  def __call__(self, inputs: jax.typing.ArrayLike) -> jax.Array:
    """Applies the layer.

    Args:
      inputs: ``(*batch, *spatial, C)`` (or ``(*batch, C, *spatial)`` for
        channels_first) with any number of leading batch dims, including
        none.

    Returns:
      ``(*batch, *spatial_out, out_channels)`` (or channels-first).
    """
    cfg = self._config()
    x = _args.as_array(inputs, "inputs")
    leading, channels = _layers.input_channels(cfg, x)
    shapes = self.FAMILY.param_shapes(cfg, channels, self.use_bias)
    params = {
        w: self._param(w, cfg.initializers[w], shape, tuple(x.shape))
        for w, shape in shapes.items()
    }
    y = _layers.forward(cfg, x, params, dtype=self.dtype,
                        precision=self.precision,
                        implementation=self.implementation)
    if not self.is_initializing():
      # A weight penalty is recorded once per apply, however often the layer
      # is called; the activity penalty once per call, as Keras adds them.
      for name, value in _layers.weight_penalties(cfg, params).items():
        self.sow(_regularizers.LOSSES, name, value, init_fn=lambda: 0.0,
                 reduce_fn=lambda _, new: new)
      activity = _layers.activity_penalty(cfg, y, leading)
      if activity is not None:
        self.sow(_regularizers.LOSSES, "activity_regularizer", activity)
    return y

  def keras_constraints(self) -> dict[str, Callable]:
    """The constraint of each param that has one, by param name."""
    return _layers.constraints(self._config(), self.FAMILY, self.use_bias)

  def compute_output_shape(self, input_shape: Sequence[Any]) -> tuple:
    """The output shape for `input_shape`, without running anything.

    Args:
      input_shape: the input's shape; ``None`` sizes (unknown batch or
        spatial sizes) give ``None`` in the output.

    Returns:
      The output shape, as a tuple, equal to that of ``jax.eval_shape``.

    Raises:
      ValueError: for a shape the layer would reject.
    """
    return _layers.output_shape(self._config(), self.FAMILY, input_shape)


class _KerasPeer:
  """The Keras interop of the linen layers that have a Keras counterpart."""

  @classmethod
  def from_keras_config(cls, config: dict[str, Any], *,
                        allow_frozen: bool = False) -> Any:
    """Builds the layer from its Keras counterpart's ``get_config()``.

    Args:
      config: the Keras 3 config, nested serialized objects and all, as
        ``get_config()`` returns it or a saved model's ``config.json``
        holds it.
      allow_frozen: accept ``"trainable": False`` (the caller freezes the
        params in the optimizer; Flax modules have no trainable flag).

    Returns:
      The module; the Keras ``name`` becomes its Flax ``name``.

    Raises:
      TypeError: if `config` is not a dict.
      ValueError: naming unknown keys, classes that cannot be honoured and
        values the module rejects; see
        :func:`sepconv_jax._keras_config.from_keras_config`.

    Example:
      >>> import sepconv_jax
      >>> layer = sepconv_jax.SeparableConv2D.from_keras_config({
      ...     "name": "sep", "filters": 8, "kernel_size": [3, 3],
      ...     "data_format": "channels_last", "activation": "relu",
      ...     "depthwise_regularizer": {"module": "keras.regularizers",
      ...         "class_name": "L2", "config": {"l2": 1e-4},
      ...         "registered_name": None}})
      >>> layer.depthwise_regularizer
      L2(l2=0.0001)
    """
    return _keras_config.from_keras_config(cls, config,
                                           allow_frozen=allow_frozen)

  def to_keras_config(self) -> dict[str, Any]:
    """The config for the Keras counterpart's ``from_config``.

    Returns:
      A dict shaped like Keras 3's ``get_config()``. ``precision`` and
      ``implementation`` have no Keras counterpart and are left out.

    Raises:
      ValueError: naming any attribute Keras cannot express, such as a
        lambda activation or explicit padding; see
        :func:`sepconv_jax._keras_config.to_keras_config`.
    """
    return _keras_config.to_keras_config(self, self._config())


class _SeparableConv(_KerasConv):
  """The fields and params of the separable layers of every rank.

  Documented on :class:`SeparableConv2D`.
  """

  filters: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: LaxPadding = "valid"
  data_format: Optional[str] = None
  dilation_rate: int | Sequence[int] = 1
  depth_multiplier: int = 1
  activation: ActivationLike = None
  use_bias: bool = True
  depthwise_initializer: InitializerLike = "glorot_uniform"
  pointwise_initializer: InitializerLike = "glorot_uniform"
  bias_initializer: InitializerLike = "zeros"
  depthwise_regularizer: RegularizerLike = None
  pointwise_regularizer: RegularizerLike = None
  bias_regularizer: RegularizerLike = None
  activity_regularizer: RegularizerLike = None
  depthwise_constraint: ConstraintLike = None
  pointwise_constraint: ConstraintLike = None
  bias_constraint: ConstraintLike = None
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32
  precision: PrecisionLike = None
  implementation: str = "auto"
  padding_mode: str = "zeros"

  FAMILY: ClassVar[_layers.Family] = _layers.SEPARABLE


class SeparableConv1D(_SeparableConv, _KerasPeer):
  """A 1-D depthwise-separable convolution, as Keras's `SeparableConv1D`.

  Inputs are ``(*batch, steps, C)`` or, channels first, ``(*batch, C,
  steps)``; ``padding="causal"`` pads on the left only, as tf.keras defined
  it (Keras 3 refuses it, so such a layer has no Keras 3 config). The
  attributes are those of :class:`SeparableConv2D`, with one int per size;
  the params are ``depthwise_kernel`` ``(k, C, depth_multiplier)``,
  ``pointwise_kernel`` ``(1, C * depth_multiplier, filters)`` and ``bias``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import sepconv_jax
    >>> layer = sepconv_jax.SeparableConv1D(8, 3, padding="causal")
    >>> x = jnp.ones((2, 10, 4))
    >>> layer.apply(layer.init(jax.random.key(0), x), x).shape
    (2, 10, 8)
  """

  RANK: ClassVar[int] = 1


class SeparableConv2D(_SeparableConv, _KerasPeer):
  """A 2-D depthwise-separable convolution with the API of Keras's layer.

  A depthwise convolution gives ``depth_multiplier`` outputs per input
  channel, a 1x1 pointwise convolution mixes them into ``filters`` channels,
  then come the bias and the activation. Inputs are ``(*batch, H, W, C)``
  or, channels first, ``(*batch, C, H, W)``. The params are
  ``depthwise_kernel`` ``(kh, kw, C, depth_multiplier)``,
  ``pointwise_kernel`` ``(1, 1, C * depth_multiplier, filters)`` and
  ``bias`` ``(filters,)``, so ``keras.layers.SeparableConv2D.get_weights()``
  drop in.

  Attributes:
    filters: the number of output channels.
    kernel_size: the depthwise window, an int or one int per spatial dim.
    strides: an int or one per spatial dim; cannot exceed 1 together with
      ``dilation_rate``.
    padding: ``"valid"`` or ``"same"`` in any case (TensorFlow's SAME: an odd
      total puts the extra row or column at the end); ``"causal"`` for 1-D;
      beyond Keras, explicit ``(before, after)`` pairs, one per spatial dim.
    data_format: ``"channels_last"``, ``"channels_first"``, or None for the
      ``image_data_format`` of ``keras.json``.
    dilation_rate: an int or one per spatial dim.
    depth_multiplier: depthwise outputs per input channel.
    activation: None, a callable, or a Keras activation name.
    use_bias: whether to add a ``bias`` param.
    depthwise_initializer: a Keras initializer name or a
      ``(key, shape, dtype)`` callable, for ``depthwise_kernel``.
    pointwise_initializer: the same, for ``pointwise_kernel``.
    bias_initializer: the same, for ``bias``.
    depthwise_regularizer: None, ``"l1"``, ``"l2"``, ``"l1_l2"`` or a callable
      ``array -> scalar``; its penalty is sown into the ``"losses"``
      collection on every apply with that collection mutable.
    pointwise_regularizer: the same, for ``pointwise_kernel``.
    bias_regularizer: the same, for ``bias``.
    activity_regularizer: the same, applied to the output and divided by the
      batch size (the product of the leading batch dims), as in Keras.
    depthwise_constraint: None, ``"max_norm"``, ``"non_neg"``,
      ``"unit_norm"``, ``"min_max_norm"`` or a callable ``array -> array``.
      Not applied in the forward pass: :func:`apply_constraints` applies it
      after each optimizer step, as Keras does.
    pointwise_constraint: the same, for ``pointwise_kernel``.
    bias_constraint: the same, for ``bias``.
    dtype: the computation dtype; None promotes the inputs and params.
    param_dtype: the dtype of the params.
    precision: the `jax.lax` precision of the convolutions.
    implementation: one of :data:`IMPLEMENTATIONS`.
    padding_mode: beyond Keras, how the padded border is filled:
      ``"zeros"`` (Keras), ``"reflect"``, ``"symmetric"`` or ``"circular"``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import sepconv_jax
    >>> layer = sepconv_jax.SeparableConv2D(8, 3, padding="same",
    ...                                     activation="relu")
    >>> x = jnp.ones((2, 16, 16, 3))
    >>> variables = layer.init(jax.random.key(0), x)
    >>> jax.tree.map(jnp.shape, variables["params"])
    {'bias': (8,), 'depthwise_kernel': (3, 3, 3, 1), 'pointwise_kernel': (1, 1, 3, 8)}
    >>> layer.apply(variables, x).shape
    (2, 16, 16, 8)
  """

  strides: int | Sequence[int] = (1, 1)
  dilation_rate: int | Sequence[int] = (1, 1)

  RANK: ClassVar[int] = 2


class SeparableConv3D(_SeparableConv):
  """A 3-D depthwise-separable convolution (Keras has none).

  Inputs are ``(*batch, D, H, W, C)`` or, channels first, ``(*batch, C, D,
  H, W)``; the attributes are those of :class:`SeparableConv2D`, with
  triples for the sizes.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import sepconv_jax
    >>> layer = sepconv_jax.SeparableConv3D(4, 3, padding="same")
    >>> x = jnp.ones((1, 6, 6, 6, 2))
    >>> layer.apply(layer.init(jax.random.key(0), x), x).shape
    (1, 6, 6, 6, 4)
  """

  strides: int | Sequence[int] = (1, 1, 1)
  dilation_rate: int | Sequence[int] = (1, 1, 1)

  RANK: ClassVar[int] = 3


class _DepthwiseConv(_KerasConv):
  """The fields and params of the depthwise layers of every rank.

  Documented on :class:`DepthwiseConv2D`.
  """

  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: LaxPadding = "valid"
  depth_multiplier: int = 1
  data_format: Optional[str] = None
  dilation_rate: int | Sequence[int] = 1
  activation: ActivationLike = None
  use_bias: bool = True
  depthwise_initializer: InitializerLike = "glorot_uniform"
  bias_initializer: InitializerLike = "zeros"
  depthwise_regularizer: RegularizerLike = None
  bias_regularizer: RegularizerLike = None
  activity_regularizer: RegularizerLike = None
  depthwise_constraint: ConstraintLike = None
  bias_constraint: ConstraintLike = None
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32
  precision: PrecisionLike = None
  implementation: str = "auto"
  padding_mode: str = "zeros"

  FAMILY: ClassVar[_layers.Family] = _layers.DEPTHWISE


class DepthwiseConv1D(_DepthwiseConv, _KerasPeer):
  """A 1-D depthwise convolution, as Keras's `DepthwiseConv1D`.

  Inputs are ``(*batch, steps, C)`` or, channels first, ``(*batch, C,
  steps)``. The attributes are those of :class:`DepthwiseConv2D`, with one
  int per size, and ``padding="causal"`` is refused, as Keras (3 and
  tf.keras alike) refuses it for this layer. The params are ``kernel``
  ``(k, C, depth_multiplier)`` and ``bias`` ``(C * depth_multiplier,)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import sepconv_jax
    >>> layer = sepconv_jax.DepthwiseConv1D(3, depth_multiplier=2,
    ...                                     padding="same")
    >>> x = jnp.ones((2, 10, 4))
    >>> variables = layer.init(jax.random.key(0), x)
    >>> jax.tree.map(jnp.shape, variables["params"])
    {'bias': (8,), 'kernel': (3, 4, 2)}
    >>> layer.apply(variables, x).shape
    (2, 10, 8)
  """

  RANK: ClassVar[int] = 1


class DepthwiseConv2D(_DepthwiseConv, _KerasPeer):
  """The depthwise step alone, as Keras's `DepthwiseConv2D`.

  Each input channel gets ``depth_multiplier`` filters of its own, and
  output channel ``c * depth_multiplier + m`` comes from input channel
  ``c``. The params are Keras's ``kernel`` ``(kh, kw, C,
  depth_multiplier)`` and ``bias`` ``(C * depth_multiplier,)``. There is no
  ``filters``; the other attributes are those of :class:`SeparableConv2D`,
  with these differences.

  Attributes:
    depthwise_initializer: the initializer of ``kernel``.
    depthwise_regularizer: the regularizer of ``kernel``.
    depthwise_constraint: the constraint of ``kernel``.
    bias_initializer: the initializer of the ``(C * depth_multiplier,)``
      bias; ``bias_regularizer`` and ``bias_constraint`` apply to it too.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import sepconv_jax
    >>> layer = sepconv_jax.DepthwiseConv2D(3, depth_multiplier=2)
    >>> x = jnp.ones((1, 8, 8, 4))
    >>> layer.apply(layer.init(jax.random.key(0), x), x).shape
    (1, 6, 6, 8)
  """

  strides: int | Sequence[int] = (1, 1)
  dilation_rate: int | Sequence[int] = (1, 1)

  RANK: ClassVar[int] = 2


#: Every linen layer; those whose family names a Keras class for their rank
#: have a Keras counterpart.
LAYERS = (SeparableConv1D, SeparableConv2D, SeparableConv3D, DepthwiseConv1D,
          DepthwiseConv2D)

SeparableConvolution1D = SeparableConv1D
SeparableConvolution2D = SeparableConv2D
