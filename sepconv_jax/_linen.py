"""The Flax linen module: a thin layer of params and Keras extras."""

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

# Each weight's key in the `*_initializer`/`*_regularizer`/`*_constraint`
# attribute names, and its Keras param name.
_PARAM_NAMES = {"depthwise": "depthwise_kernel",
                "pointwise": "pointwise_kernel",
                "bias": "bias"}


class _Config(NamedTuple):
  """A layer's validated configuration, with names resolved."""

  spec: _args.ConvSpec
  kernel_size: tuple[int, ...]
  filters: int
  depth_multiplier: int
  activation: Optional[Callable]
  initializers: dict[str, Callable]
  regularizers: dict[str, Optional[Callable]]
  activity_regularizer: Optional[Callable]
  constraints: dict[str, Optional[Callable]]


class SeparableConv2D(nn.Module):
  """A 2-D depthwise-separable convolution with the API of Keras's layer.

  A depthwise convolution gives ``depth_multiplier`` outputs per input
  channel, a 1x1 pointwise convolution mixes them into ``filters`` channels,
  then come the bias and the activation. The params carry Keras's names and
  shapes, so ``keras.layers.SeparableConv2D.get_weights()`` drop in.

  Attributes:
    filters: the number of output channels.
    kernel_size: the depthwise window, an int or a pair.
    strides: an int or a pair; cannot exceed 1 together with
      ``dilation_rate``.
    padding: ``"valid"`` or ``"same"`` in any case (TensorFlow's SAME: an odd
      total puts the extra row or column at the bottom or right).
    data_format: ``"channels_last"``, ``"channels_first"``, or None for the
      ``image_data_format`` of ``keras.json``.
    dilation_rate: an int or a pair.
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

  filters: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = (1, 1)
  padding: str = "valid"
  data_format: Optional[str] = None
  dilation_rate: int | Sequence[int] = (1, 1)
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

  _rank: ClassVar[int] = 2

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
    return _Config(
        spec=_args.conv_spec(self._rank, self.strides, self.padding,
                             self.data_format, self.dilation_rate),
        kernel_size=_args.normalize_tuple(self.kernel_size, self._rank,
                                          "kernel_size"),
        filters=_args.positive_int(self.filters, "filters"),
        depth_multiplier=_args.positive_int(self.depth_multiplier,
                                            "depth_multiplier"),
        activation=_activations.get(self.activation),
        initializers={
            w: _initializers.get(getattr(self, f"{w}_initializer"),
                                 f"{w}_initializer") for w in _PARAM_NAMES},
        regularizers={
            w: _regularizers.get(getattr(self, f"{w}_regularizer"),
                                 f"{w}_regularizer") for w in _PARAM_NAMES},
        activity_regularizer=_regularizers.get(self.activity_regularizer,
                                               "activity_regularizer"),
        constraints={
            w: _constraints.get(getattr(self, f"{w}_constraint"),
                                f"{w}_constraint") for w in _PARAM_NAMES},
    )

  def _param_shapes(self, cfg: _Config, channels: int) -> dict[str, tuple]:
    """The shape of each weight, by its key in `_PARAM_NAMES`."""
    n = self._rank
    shapes = {
        "depthwise": cfg.kernel_size + (channels, cfg.depth_multiplier),
        "pointwise": (1,) * n + (channels * cfg.depth_multiplier,
                                 cfg.filters),
    }
    if self.use_bias:
      shapes["bias"] = (cfg.filters,)
    return shapes

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
      inputs: ``(*batch, H, W, C)`` (or ``(*batch, C, H, W)``) with any
        number of leading batch dims, including none.

    Returns:
      ``(*batch, H', W', filters)`` (or channels-first).
    """
    cfg = self._config()
    x = _ops.as_array(inputs, "inputs")
    leading, _, channels = _args.split_shape(cfg.spec, x.shape)
    _args.check_channels(channels, shape=x.shape)
    params = {
        w: self._param(_PARAM_NAMES[w], cfg.initializers[w], shape,
                       tuple(x.shape))
        for w, shape in self._param_shapes(cfg, channels).items()
    }
    x, dk, pk, b = promote_dtype(x, params["depthwise"], params["pointwise"],
                                 params.get("bias"), dtype=self.dtype)
    y = _ops.convolve(x, dk, pk, b, cfg.spec, self.precision,
                      self.implementation, pointwise=True)
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
    return {_PARAM_NAMES[w]: cfg.constraints[w]
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
    if cfg.spec.channels_last:
      return leading + out + (cfg.filters,)
    return leading + (cfg.filters,) + out


SeparableConvolution2D = SeparableConv2D
