"""The Flax linen modules: thin layers of params and Keras extras."""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sepconv_jax import _args
from sepconv_jax import _keras_interop
from sepconv_jax import _layers
from sepconv_jax import _regularizers


class _KerasConv(nn.Module):
  """What the Keras-style linen layers share: params, penalties, shapes.

  A subclass declares its dataclass fields (the Keras arguments), its rank
  and its `_FAMILY`; the rest lives in :mod:`sepconv_jax._layers`, shared
  with the NNX layers.
  """

  _rank: ClassVar[int]
  _FAMILY: ClassVar[_layers.Family]

  def __post_init__(self):
    self._config()  # Bad arguments fail here, at construction, as in Keras.
    super().__post_init__()

  def _config(self) -> _layers.Config:
    return _layers.layer_config(self, self._rank, self._FAMILY)

  def _param(self, name: str, init: Callable, shape: tuple,
             inputs_shape: tuple) -> jax.Array:
    """`self.param`, with a clear error when loaded params do not fit."""
    if self.has_variable("params", name):
      existing = jnp.shape(nn.meta.unbox(self.get_variable("params", name)))
      _layers.check_param_shape(name, existing, shape, inputs_shape)
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
    shapes = self._FAMILY.param_shapes(cfg, channels, self.use_bias)
    params = {
        w: self._param(self._FAMILY.param_names[w], cfg.initializers[w],
                       shape, tuple(x.shape))
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
    return _layers.constraints(self._config(), self._FAMILY, self.use_bias)

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
    return _layers.output_shape(self._config(), self._FAMILY, input_shape)


class _SeparableConv(_KerasConv):
  """The fields and params of the separable layers of every rank.

  Documented on :class:`SeparableConv2D`.
  """

  filters: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: Any = "valid"
  data_format: Optional[str] = None
  dilation_rate: int | Sequence[int] = 1
  depth_multiplier: int = 1
  activation: Any = None
  use_bias: bool = True
  depthwise_initializer: Any = "glorot_uniform"
  pointwise_initializer: Any = "glorot_uniform"
  bias_initializer: Any = "zeros"
  depthwise_regularizer: Any = None
  pointwise_regularizer: Any = None
  bias_regularizer: Any = None
  activity_regularizer: Any = None
  depthwise_constraint: Any = None
  pointwise_constraint: Any = None
  bias_constraint: Any = None
  dtype: Optional[Any] = None
  param_dtype: Any = jnp.float32
  precision: _args.PrecisionLike = None
  implementation: str = "auto"
  padding_mode: str = "zeros"

  _FAMILY: ClassVar[_layers.Family] = _layers.SEPARABLE


class SeparableConv1D(_SeparableConv):
  """A 1-D depthwise-separable convolution, as Keras's `SeparableConv1D`.

  Inputs are ``(*batch, steps, C)`` or, channels first, ``(*batch, C,
  steps)``; ``padding="causal"`` pads on the left only. The attributes are
  those of :class:`SeparableConv2D`, with one int per size.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import sepconv_jax
    >>> layer = sepconv_jax.SeparableConv1D(8, 3, padding="causal")
    >>> x = jnp.ones((2, 10, 4))
    >>> layer.apply(layer.init(jax.random.key(0), x), x).shape
    (2, 10, 8)
  """

  _rank: ClassVar[int] = 1


class SeparableConv2D(_SeparableConv):
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
    pointwise_initializer: likewise, for ``pointwise_kernel``.
    bias_initializer: likewise, for ``bias``.
    depthwise_regularizer: None, ``"l1"``, ``"l2"``, ``"l1_l2"`` or a callable
      ``array -> scalar``; its penalty is sown into the ``"losses"``
      collection on every apply with that collection mutable.
    pointwise_regularizer: likewise, for ``pointwise_kernel``.
    bias_regularizer: likewise, for ``bias``.
    activity_regularizer: likewise, applied to the output and divided by the
      batch size (the product of the leading batch dims), as in Keras.
    depthwise_constraint: None, ``"max_norm"``, ``"non_neg"``,
      ``"unit_norm"``, ``"min_max_norm"`` or a callable ``array -> array``.
      Not applied in the forward pass: :func:`apply_constraints` applies it
      after each optimizer step, as Keras does.
    pointwise_constraint: likewise, for ``pointwise_kernel``.
    bias_constraint: likewise, for ``bias``.
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

  _rank: ClassVar[int] = 2

  @classmethod
  def from_keras_config(cls, config: dict[str, Any], *,
                        allow_frozen: bool = False) -> "SeparableConv2D":
    """Builds the layer from ``keras.layers.SeparableConv2D.get_config()``.

    Args:
      config: the Keras 3 config, nested serialized objects and all.
      allow_frozen: accept ``"trainable": False`` (the caller freezes the
        params in the optimizer; Flax modules have no trainable flag).

    Returns:
      The module; the Keras ``name`` becomes its Flax ``name``.

    Raises:
      ValueError: naming unknown keys and classes that cannot be honoured.
        See :func:`sepconv_jax._keras_interop.from_keras_config`.
    """
    return _keras_interop.from_keras_config(cls, config,
                                            allow_frozen=allow_frozen)

  def to_keras_config(self) -> dict[str, Any]:
    """The config for ``keras.layers.SeparableConv2D.from_config``.

    Returns:
      A dict shaped like Keras 3's ``get_config()``.

    Raises:
      ValueError: naming any attribute Keras cannot express, such as a lambda
        activation. See :func:`sepconv_jax._keras_interop.to_keras_config`.
    """
    return _keras_interop.to_keras_config(self)


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

  _rank: ClassVar[int] = 3


class DepthwiseConv2D(_KerasConv):
  """The depthwise step alone, as Keras's `DepthwiseConv2D`.

  Each input channel gets ``depth_multiplier`` filters of its own, and
  output channel ``c * depth_multiplier + m`` comes from input channel
  ``c``. The params are Keras's ``kernel`` ``(kh, kw, C,
  depth_multiplier)`` and ``bias`` ``(C * depth_multiplier,)``.

  Attributes:
    kernel_size: the window, an int or a pair.
    strides: an int or a pair, ``(1, 1)`` by default.
    dilation_rate: an int or a pair, ``(1, 1)`` by default.
    depthwise_initializer: for ``kernel``.
    depthwise_regularizer: for ``kernel``.
    depthwise_constraint: for ``kernel``.
    The other attributes are those of :class:`SeparableConv2D`, with the
    ``bias_*`` ones applying to the ``(C * depth_multiplier,)`` bias.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import sepconv_jax
    >>> layer = sepconv_jax.DepthwiseConv2D(3, depth_multiplier=2)
    >>> x = jnp.ones((1, 8, 8, 4))
    >>> layer.apply(layer.init(jax.random.key(0), x), x).shape
    (1, 6, 6, 8)
  """

  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = (1, 1)
  padding: Any = "valid"
  depth_multiplier: int = 1
  data_format: Optional[str] = None
  dilation_rate: int | Sequence[int] = (1, 1)
  activation: Any = None
  use_bias: bool = True
  depthwise_initializer: Any = "glorot_uniform"
  bias_initializer: Any = "zeros"
  depthwise_regularizer: Any = None
  bias_regularizer: Any = None
  activity_regularizer: Any = None
  depthwise_constraint: Any = None
  bias_constraint: Any = None
  dtype: Optional[Any] = None
  param_dtype: Any = jnp.float32
  precision: _args.PrecisionLike = None
  implementation: str = "auto"
  padding_mode: str = "zeros"

  _rank: ClassVar[int] = 2
  _FAMILY: ClassVar[_layers.Family] = _layers.DEPTHWISE


SeparableConvolution1D = SeparableConv1D
SeparableConvolution2D = SeparableConv2D
