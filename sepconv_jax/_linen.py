"""The Flax linen modules: thin layers of params and Keras extras."""

from __future__ import annotations

from typing import Any, Callable, ClassVar, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

from sepconv_jax import _activations
from sepconv_jax import _args
from sepconv_jax import _constraints
from sepconv_jax import _initializers
from sepconv_jax import _ops
from sepconv_jax import _regularizers


class _Config(NamedTuple):
  """A layer's validated configuration, with names resolved."""

  spec: _args.ConvSpec
  kernel_size: tuple[int, ...]
  filters: Optional[int]
  depth_multiplier: int
  activation: Optional[Callable]
  initializers: dict[str, Callable]
  regularizers: dict[str, Optional[Callable]]
  activity_regularizer: Optional[Callable]
  constraints: dict[str, Optional[Callable]]


class _KerasConv(nn.Module):
  """What the Keras-style layers share: validation, params, penalties.

  A subclass declares its dataclass fields (the Keras arguments), its rank,
  the Keras name of each weight in `_PARAM_NAMES` (keyed by the prefix of
  its ``*_initializer``/``*_regularizer``/``*_constraint`` attributes), and
  `_param_shapes` and `_out_channels`. `__call__` creates the params with
  Keras's names and hands them to :func:`sepconv_jax._ops.convolve`.
  """

  _rank: ClassVar[int]
  _PARAM_NAMES: ClassVar[dict[str, str]]

  def __post_init__(self):
    self._config()  # Bad arguments fail here, at construction, as in Keras.
    super().__post_init__()

  def _config(self) -> _Config:
    """Validates every attribute and resolves the Keras names."""
    if not isinstance(self.use_bias, bool):
      raise TypeError(f"`use_bias` (={self.use_bias!r}) must be a bool")
    _ops.check_precision(self.precision)
    _ops.check_implementation(self.implementation)
    for name in ("dtype", "param_dtype"):
      value = getattr(self, name)
      if value is not None or name == "param_dtype":
        try:
          jnp.dtype(value)
        except TypeError:
          raise TypeError(f"`{name}` (={value!r}) is not a dtype") from None
    weights = self._PARAM_NAMES
    return _Config(
        spec=_args.conv_spec(self._rank, self.strides, self.padding,
                             self.data_format, self.dilation_rate,
                             self.padding_mode),
        kernel_size=_args.normalize_tuple(self.kernel_size, self._rank,
                                          "kernel_size"),
        filters=(_args.positive_int(self.filters, "filters")
                 if hasattr(self, "filters") else None),
        depth_multiplier=_args.positive_int(self.depth_multiplier,
                                            "depth_multiplier"),
        activation=_activations.get(self.activation),
        initializers={
            w: _initializers.get(getattr(self, f"{w}_initializer"),
                                 f"{w}_initializer") for w in weights},
        regularizers={
            w: _regularizers.get(getattr(self, f"{w}_regularizer"),
                                 f"{w}_regularizer") for w in weights},
        activity_regularizer=_regularizers.get(self.activity_regularizer,
                                               "activity_regularizer"),
        constraints={
            w: _constraints.get(getattr(self, f"{w}_constraint"),
                                f"{w}_constraint") for w in weights},
    )

  def _param_shapes(self, cfg: _Config, channels: int) -> dict[str, tuple]:
    """The shape of each weight, keyed as `_PARAM_NAMES`."""
    raise NotImplementedError

  def _out_channels(self, cfg: _Config, channels: Optional[int]):
    """The output channel count for `channels` input channels."""
    raise NotImplementedError

  def _param(self, name: str, init: Callable, shape: tuple,
             inputs_shape: tuple) -> jax.Array:
    """`self.param`, with a clear error when loaded params do not fit."""
    if self.has_variable("params", name):
      existing = jnp.shape(nn.meta.unbox(self.get_variable("params", name)))
      if existing != shape:
        raise ValueError(
            f"`{name}` (shape={existing}) does not fit `inputs`"
            f" (shape={inputs_shape}): this layer needs shape {shape}; were"
            " the params built for another channel count or configuration?"
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
    x = _ops.as_array(inputs, "inputs")
    leading, _, channels = _args.split_shape(cfg.spec, x.shape)
    _args.check_channels(channels, shape=x.shape)
    params = {
        w: self._param(self._PARAM_NAMES[w], cfg.initializers[w], shape,
                       tuple(x.shape))
        for w, shape in self._param_shapes(cfg, channels).items()
    }
    x, dk, pk, b = promote_dtype(x, params["depthwise"],
                                 params.get("pointwise"), params.get("bias"),
                                 dtype=self.dtype)
    y = _ops.convolve(x, dk, pk, b, cfg.spec, self.precision,
                      self.implementation)
    if cfg.activation is not None:
      y = cfg.activation(y)
    if not self.is_initializing():
      self._sow_penalties(cfg, params, y, leading)
    return y

  def _sow_penalties(self, cfg: _Config, params: dict, y: jax.Array,
                     leading: tuple) -> None:
    """Sows each penalty into the ``losses`` collection, as Keras adds them.

    A weight penalty is recorded once per apply, however often the layer is
    called; the activity penalty once per call.
    """
    for w, value in params.items():
      if cfg.regularizers[w] is not None:
        self.sow(_regularizers.LOSSES, f"{w}_regularizer",
                 cfg.regularizers[w](value), init_fn=lambda: 0.0,
                 reduce_fn=lambda _, new: new)
    if cfg.activity_regularizer is not None:
      batch = max(_args.batch_count(leading), 1)
      self.sow(_regularizers.LOSSES, "activity_regularizer",
               cfg.activity_regularizer(y) / batch)

  def keras_constraints(self) -> dict[str, Callable]:
    """The constraint of each param that has one, by param name."""
    cfg = self._config()
    return {self._PARAM_NAMES[w]: cfg.constraints[w]
            for w in self._param_shapes(cfg, 1)
            if cfg.constraints[w] is not None}

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
    cfg = self._config()
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
                               "input_shape")
    out_channels = self._out_channels(cfg, channels)
    if cfg.spec.channels_last:
      return leading + out + (out_channels,)
    return leading + (out_channels,) + out


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
  precision: _ops.PrecisionLike = None
  implementation: str = "auto"
  padding_mode: str = "zeros"

  _PARAM_NAMES: ClassVar[dict[str, str]] = {
      "depthwise": "depthwise_kernel",
      "pointwise": "pointwise_kernel",
      "bias": "bias",
  }

  def _param_shapes(self, cfg: _Config, channels: int) -> dict[str, tuple]:
    shapes = {
        "depthwise": cfg.kernel_size + (channels, cfg.depth_multiplier),
        "pointwise": (1,) * self._rank + (channels * cfg.depth_multiplier,
                                          cfg.filters),
    }
    if self.use_bias:
      shapes["bias"] = (cfg.filters,)
    return shapes

  def _out_channels(self, cfg: _Config, channels: Optional[int]):
    return cfg.filters


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
  precision: _ops.PrecisionLike = None
  implementation: str = "auto"
  padding_mode: str = "zeros"

  _rank: ClassVar[int] = 2
  _PARAM_NAMES: ClassVar[dict[str, str]] = {"depthwise": "kernel",
                                            "bias": "bias"}

  def _param_shapes(self, cfg: _Config, channels: int) -> dict[str, tuple]:
    shapes = {"depthwise": cfg.kernel_size + (channels, cfg.depth_multiplier)}
    if self.use_bias:
      shapes["bias"] = (channels * cfg.depth_multiplier,)
    return shapes

  def _out_channels(self, cfg: _Config, channels: Optional[int]):
    return None if channels is None else channels * cfg.depth_multiplier


SeparableConvolution1D = SeparableConv1D
SeparableConvolution2D = SeparableConv2D
