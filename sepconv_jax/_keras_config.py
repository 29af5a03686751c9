"""Keras 3 layer configs: ``get_config()`` to a layer and back.

:func:`from_keras_config` and :func:`to_keras_config` translate between the
config of a Keras ``SeparableConv1D``, ``SeparableConv2D``,
``DepthwiseConv1D`` or ``DepthwiseConv2D`` and the attributes of the linen
or NNX layer of the same name. The keys are those of the layer's
:class:`~sepconv_jax._layers.Family` (:func:`_layers.keras_arguments`, plus
``name``, ``trainable`` and ``dtype``); nested initializers, regularizers,
constraints and activations are translated by their name tables, the dtype
policy by :mod:`sepconv_jax._keras_serial`.

Nothing is silently dropped: a key, class or attribute that cannot be
carried across exactly raises a `ValueError` that names it. Decisions worth
knowing:

* ``name``: the Keras layer name becomes the layer's ``name``, so in a linen
  parent the params sit under the Keras name; :func:`to_keras_config` writes
  it back when the layer has one.
* ``trainable``: Flax has no per-layer trainable flag (freezing is the
  optimizer's job, e.g. ``optax.multi_transform`` with
  ``optax.set_to_zero()``), so ``"trainable": False`` raises unless
  ``allow_frozen=True`` says the caller will freeze the params.
* seeds: an initializer's ``seed`` is kept, so the config round-trips, but not
  used: Flax draws from its own keys, and Keras's random streams differ
  between its backends anyway, so no seed reproduces Keras's draws.
* ``precision`` and ``implementation`` change how the layer computes, not
  what; Keras has no such settings, so :func:`to_keras_config` leaves them out.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

from sepconv_jax import _activations
from sepconv_jax import _args
from sepconv_jax import _constraints
from sepconv_jax import _initializers
from sepconv_jax import _keras_serial
from sepconv_jax import _layers
from sepconv_jax import _regularizers

# The name table that translates each kind of nested Keras object.
_TABLES = {"initializer": _initializers, "regularizer": _regularizers,
           "constraint": _constraints}
# Keys of every Keras layer config that are not layer arguments.
_LAYER_KEYS = ("name", "trainable", "dtype")
# Layer arguments with no Keras counterpart that `to_keras_config` leaves
# out on purpose (and the NNX constructor's own).
_NOT_IN_KERAS = frozenset(
    ("name", "parent", "precision", "implementation", "in_channels", "rngs"))


def keras_class(cls: type) -> str:
  """The Keras class of a layer class, e.g. ``"SeparableConv2D"``."""
  return cls.FAMILY.keras_classes[cls.RANK][0]


def _parameters(cls: type) -> Mapping[str, inspect.Parameter]:
  """The constructor's parameters (the dataclass fields, for linen)."""
  parameters = dict(inspect.signature(cls.__init__).parameters)
  parameters.pop("self", None)
  return parameters


def _table(key: str) -> Any:
  """The name table of an argument's nested Keras objects, or None."""
  if key == "activation":
    return _activations
  return _TABLES.get(key.rsplit("_", 1)[-1])


def _translate(key: str, value: Any) -> Any:
  """One Keras argument's value -> the layer's."""
  table = _table(key)
  if table is not None:
    return table.from_keras(value, key)
  return tuple(value) if isinstance(value, list) else value


def from_keras_config(cls: type, config: Mapping[str, Any], *,
                      allow_frozen: bool = False, **extra: Any) -> Any:
  """Builds a layer of class `cls` from its Keras peer's ``get_config()``.

  Args:
    cls: the layer class (linen or NNX), whose ``FAMILY`` and ``RANK`` name
      its Keras peer.
    config: the Keras layer's config, exactly as Keras 3's ``get_config()``
      returns it or as a saved model's ``config.json`` holds it (the
      ``"config"`` entry of the layer).
    allow_frozen: accept ``"trainable": False``.
    **extra: more constructor arguments (NNX's ``in_channels`` and
      ``rngs``).

  Returns:
    ``cls(...)``. Initializers whose config is the default of a known name
    become that name; others become a
    :class:`~sepconv_jax._initializers.KerasInitializer`.

  Raises:
    TypeError: if `config` is not a dict.
    ValueError: naming every unknown key, any class that cannot be
      honoured (custom classes, ``OrthogonalRegularizer``, ``Identity``,
      quantized dtype policies, ...), ``"trainable": False`` without
      `allow_frozen`, and any value the layer rejects.
  """
  if not isinstance(config, Mapping):
    raise TypeError(
        f"`config` (={config!r}) must be the dict of Keras's"
        f" `get_config()`, not {type(config).__name__}"
    )
  arguments = _layers.keras_arguments(cls.FAMILY)
  unknown = sorted(set(config) - set(arguments) - set(_LAYER_KEYS))
  if unknown:
    hint = ""
    if "class_name" in config and "config" in config:
      hint = ("; this looks like a whole serialized layer: pass its"
              " 'config' entry")
    raise ValueError(
        f"`config` has keys that {keras_class(cls)} cannot honour: "
        + ", ".join(f"`{k}` (={config[k]!r})" for k in unknown)
        + hint
    )
  parameters = _parameters(cls)
  missing = [k for k in arguments if k in parameters and k not in config
             and parameters[k].default is inspect.Parameter.empty]
  if missing:
    raise ValueError(
        f"`config` lacks the required keys {missing}; got keys"
        f" {sorted(config)}"
    )
  trainable = config.get("trainable", True)
  if not isinstance(trainable, bool):
    raise ValueError(f"`trainable` (={trainable!r}) must be a bool")
  if not trainable and not allow_frozen:
    raise ValueError(
        "`trainable` (=False): Flax modules have no trainable flag, so the"
        " ported layer would train; freeze its params in the optimizer (e.g."
        " optax.multi_transform with optax.set_to_zero()) and pass"
        " allow_frozen=True"
    )
  kwargs: dict[str, Any] = {}
  name = config.get("name")
  if name is not None:
    if not isinstance(name, str):
      raise ValueError(f"`name` (={name!r}) must be a str or None")
    kwargs["name"] = name
  for key in arguments:
    if key in config:
      kwargs[key] = _translate(key, config[key])
  kwargs.update(_keras_serial.dtype_from_keras(config.get("dtype")))
  return cls(**kwargs, **extra)


def to_keras_config(layer: Any, cfg: _layers.Config) -> dict[str, Any]:
  """The Keras 3 config of a layer, for its Keras peer's ``from_config``.

  Args:
    layer: a linen or NNX layer with a Keras peer.
    cfg: its resolved configuration.

  Returns:
    A dict shaped like Keras's ``get_config()``: the layer's ``name`` (if it
    has one), ``"trainable": True``, the dtype policy (``dtype=None`` counts
    as ``param_dtype``: Keras always computes in the policy's dtype), the
    resolved sizes and ``data_format``, and nested serialized initializers,
    regularizers and constraints.

  Raises:
    ValueError: naming any attribute Keras cannot express: a function
      (such as a lambda) as activation, initializer, regularizer or
      constraint; a ``dtype``/``param_dtype`` pair that is no Keras policy;
      a padding other than "valid" and "same"; or any other attribute (such
      as ``padding_mode``) away from its default.
  """
  family, cls = layer.FAMILY, type(layer)
  arguments = _layers.keras_arguments(family)
  exported = frozenset(arguments) | {"dtype", "param_dtype"}
  for parameter in _parameters(cls).values():
    if parameter.name in exported or parameter.name in _NOT_IN_KERAS:
      continue
    value = getattr(layer, parameter.name)
    if (parameter.default is inspect.Parameter.empty
        or value != parameter.default):
      raise ValueError(
          f"`{parameter.name}` (={value!r}) has no Keras counterpart, so the"
          " layer cannot be written as a Keras config"
      )
  padding = layer.padding
  if not isinstance(padding, str) or padding.lower() not in ("valid", "same"):
    raise ValueError(
        f"`padding` (={padding!r}) has no Keras counterpart: Keras 3's"
        f" {keras_class(cls)} takes 'valid' or 'same'"
    )
  spec = cfg.spec
  resolved = {
      "kernel_size": cfg.kernel_size,
      "strides": spec.strides,
      "padding": padding.lower(),
      "data_format": (_args.CHANNELS_LAST if spec.channels_last
                      else _args.CHANNELS_FIRST),
      "dilation_rate": spec.dilation_rate,
      "depth_multiplier": cfg.depth_multiplier,
      "filters": cfg.filters,
  }
  out: dict[str, Any] = {}
  if isinstance(layer.name, str):
    out["name"] = layer.name
  out["trainable"] = True
  out["dtype"] = _keras_serial.dtype_to_keras(layer.dtype, layer.param_dtype)
  for key in arguments:
    table = _table(key)
    if key in resolved:
      out[key] = resolved[key]
    elif table is not None:
      out[key] = table.to_keras(getattr(layer, key), key)
    else:
      out[key] = getattr(layer, key)
  return out
