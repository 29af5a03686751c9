"""Keras 3 interop: layer configs, weight lists and saved models.

Everything a Keras user needs to bring a trained ``SeparableConv2D`` across:

* :func:`from_keras_config` / :func:`to_keras_config` translate between
  ``keras.layers.SeparableConv2D.get_config()`` and the linen module's
  attributes, nested serialized initializers, regularizers, constraints and
  the dtype policy included;
* :func:`params_from_keras` / :func:`params_to_keras` translate between
  ``get_weights()`` lists and the module's ``params``;
* :func:`load_keras_layers` reads every ``SeparableConv2D`` out of a saved
  ``.keras`` archive (or a ``.weights.h5`` file with its model config).

Nothing is silently dropped: a config key, class or attribute that cannot be
carried across exactly raises a `ValueError` that names it. Keras itself is
never imported; h5py is imported by :func:`load_keras_layers` only.

Decisions worth knowing:

* ``name``: the Keras layer name becomes the Flax module's ``name``, so in a
  parent module the params sit under the Keras name; :func:`to_keras_config`
  writes the module's name back when it has one.
* ``trainable``: Flax has no per-layer trainable flag (freezing is the
  optimizer's job, e.g. ``optax.multi_transform`` with
  ``optax.set_to_zero()``), so ``"trainable": False`` raises unless
  ``allow_frozen=True`` says the caller will freeze the params.
* seeds: an initializer's ``seed`` is kept, so the config round-trips, but not
  used: Flax draws from the key given to ``init``, and Keras's random streams
  differ between its backends anyway, so no seed reproduces Keras's draws.
* ``precision`` and ``implementation`` change how the layer computes, not
  what; Keras has no such settings, so :func:`to_keras_config` leaves them out.
"""

from __future__ import annotations

import dataclasses
import io
import json
import numbers
import os
import re
import zipfile
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sepconv_jax import _activations
from sepconv_jax import _args
from sepconv_jax import _constraints
from sepconv_jax import _initializers
from sepconv_jax import _regularizers

_WEIGHTS = ("depthwise", "pointwise", "bias")
_PARAM_NAMES = ("depthwise_kernel", "pointwise_kernel", "bias")
_LAYER_CLASSES = ("SeparableConv2D", "SeparableConvolution2D")

# The keys of Keras 3's `SeparableConv2D.get_config()`.
_SIMPLE_KEYS = ("filters", "kernel_size", "strides", "padding", "data_format",
                "dilation_rate", "depth_multiplier", "use_bias")
_OBJECT_KEYS = tuple(
    f"{w}_{kind}" for kind in ("initializer", "regularizer", "constraint")
    for w in _WEIGHTS) + ("activity_regularizer",)
_CONFIG_KEYS = frozenset(
    ("name", "trainable", "dtype", "activation")
    + _SIMPLE_KEYS + _OBJECT_KEYS)
_REQUIRED_KEYS = ("filters", "kernel_size")

# The keys of one serialized Keras object.
_SERIALIZED_KEYS = frozenset(
    ("module", "class_name", "config", "registered_name", "shared_object_id"))


def _is_real(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _keras_object(module: str, class_name: str, config: Any) -> dict:
  """A serialized Keras object, as ``get_config()`` nests them."""
  return {"module": module, "class_name": class_name, "config": config,
          "registered_name": None}


def _unpack(value: Mapping, name: str, kind: str) -> tuple[str, dict]:
  """Splits a serialized Keras object into its class name and config.

  Raises:
    ValueError: for unknown keys, or a custom (non-Keras) class.
  """
  unknown = sorted(set(value) - _SERIALIZED_KEYS)
  if unknown or not isinstance(value.get("class_name"), str):
    raise ValueError(
        f"`{name}` (={value!r}) is not a serialized Keras {kind}: expected"
        " the keys 'module', 'class_name', 'config' and 'registered_name'"
        + (f"; unknown keys: {unknown}" if unknown else "")
    )
  class_name = value["class_name"]
  module = value.get("module")
  registered = value.get("registered_name")
  custom = (registered is not None and registered != class_name) or (
      module is not None and not str(module).startswith("keras"))
  if custom:
    raise ValueError(
        f"`{name}` (={value!r}) is the custom {kind} class"
        f" {registered or class_name!r} (module {module!r}), which"
        " sepconv_jax cannot honour; pass an equivalent callable to the"
        " module yourself"
    )
  config = value.get("config")
  if config is None:
    config = {}
  if not isinstance(config, Mapping):
    raise ValueError(
        f"`{name}` (={value!r}) has a 'config' that is not a dict")
  return class_name, dict(config)


def _with_defaults(config: Mapping, defaults: Mapping, name: str,
                   class_name: str) -> dict:
  """Fills in Keras's defaults; unknown config keys raise."""
  unknown = sorted(set(config) - set(defaults))
  if unknown:
    raise ValueError(
        f"`{name}` ({class_name}, config={dict(config)!r}) has config keys"
        f" that sepconv_jax cannot honour: {unknown}; known keys:"
        f" {sorted(defaults)}"
    )
  return {**defaults, **config}


def _check_real(config: Mapping, keys: Sequence[str], name: str,
                class_name: str, allow_none: bool = False) -> None:
  for key in keys:
    value = config[key]
    if not (_is_real(value) or (allow_none and value is None)):
      raise ValueError(
          f"`{name}` ({class_name}) config `{key}` (={value!r}) must be a"
          " number"
      )


def _int_axes(value: Any, name: str, class_name: str, key: str,
              allow_none: bool) -> Any:
  """An int, a tuple of ints, or None (lists become tuples)."""
  if value is None and allow_none:
    return None
  if _args.is_int(value) and not allow_none:
    return int(value)
  if isinstance(value, (list, tuple)) and all(_args.is_int(v) for v in value):
    return tuple(int(v) for v in value)
  raise ValueError(
      f"`{name}` ({class_name}) config `{key}` (={value!r}) must be"
      + (" None or a list of ints" if allow_none else
         " an int or a list of ints")
  )


def _jsonable(value: Any) -> Any:
  """Tuples (our hashable form) back to lists, as JSON configs hold them."""
  if isinstance(value, tuple):
    return [_jsonable(v) for v in value]
  return value


# --------------------------------------------------------------------------
# Initializers.

# Keras's variance-scaling presets: our name, scale, mode, distribution.
_VS_PRESETS = {
    "GlorotUniform": ("glorot_uniform", 1.0, "fan_avg", "uniform"),
    "GlorotNormal": ("glorot_normal", 1.0, "fan_avg", "truncated_normal"),
    "HeUniform": ("he_uniform", 2.0, "fan_in", "uniform"),
    "HeNormal": ("he_normal", 2.0, "fan_in", "truncated_normal"),
    "LecunUniform": ("lecun_uniform", 1.0, "fan_in", "uniform"),
    "LecunNormal": ("lecun_normal", 1.0, "fan_in", "truncated_normal"),
}
_AXES_DEFAULTS = {"seed": None, "input_axes": None, "output_axes": None}

# Each Keras initializer class we honour, with its config defaults.
_INIT_DEFAULTS: dict[str, dict[str, Any]] = {
    "Zeros": {},
    "Ones": {},
    "Constant": {"value": 0.0},
    "RandomNormal": {"seed": None, "mean": 0.0, "stddev": 0.05},
    "RandomUniform": {"seed": None, "minval": -0.05, "maxval": 0.05},
    "TruncatedNormal": {"seed": None, "mean": 0.0, "stddev": 0.05},
    "Orthogonal": {"seed": None, "gain": 1.0},
    "VarianceScaling": {"seed": None, "scale": 1.0, "mode": "fan_in",
                        "distribution": "truncated_normal",
                        "input_axes": None, "output_axes": None},
    **{c: dict(_AXES_DEFAULTS) for c in _VS_PRESETS},
}

# Our initializer name for each class whose default config it stands for.
_INIT_NAMES = {
    "Zeros": "zeros", "Ones": "ones", "RandomNormal": "random_normal",
    "RandomUniform": "random_uniform", "TruncatedNormal": "truncated_normal",
    "Orthogonal": "orthogonal",
    **{c: preset[0] for c, preset in _VS_PRESETS.items()},
}
_INIT_CLASSES = {name: c for c, name in _INIT_NAMES.items()}


def _snake(name: str) -> str:
  """Keras's `to_snake_case`, e.g. "SeparableConv2D" -> "separable_conv2d"."""
  name = re.sub(r"\W+", "", name)
  name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
  return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


# The names Keras's deserializer also accepts for each class.
_INIT_ALIASES = {
    **{_snake(c): c for c in _INIT_DEFAULTS}, **{c: c for c in _INIT_DEFAULTS},
    "normal": "RandomNormal", "uniform": "RandomUniform", "one": "Ones",
    "zero": "Zeros", "OrthogonalInitializer": "Orthogonal",
}
# Keras initializers that cannot apply to these weights or that we lack.
_INIT_UNSUPPORTED = {
    "Identity": "it only initializes 2-D matrices, and this layer's weights"
                " are 4-D kernels and a 1-D bias (Keras would fail too)",
    "IdentityInitializer": "it only initializes 2-D matrices",
    "identity": "it only initializes 2-D matrices",
    "STFT": "sepconv_jax has no STFT initializer",
    "STFTInitializer": "sepconv_jax has no STFT initializer",
    "stft": "sepconv_jax has no STFT initializer",
}


def _build_initializer(class_name: str, config: Mapping) -> Callable:
  """The ``(key, shape, dtype)`` function of a validated Keras config."""
  c = config
  if class_name in ("Zeros", "Ones", "Constant"):
    value = {"Zeros": 0.0, "Ones": 1.0}.get(class_name, c.get("value"))
    return _initializers.constant(value)
  if class_name == "RandomNormal":
    return _initializers.random_normal(c["mean"], c["stddev"])
  if class_name == "RandomUniform":
    return _initializers.random_uniform(c["minval"], c["maxval"])
  if class_name == "TruncatedNormal":
    return _initializers.truncated_normal(c["mean"], c["stddev"])
  if class_name == "Orthogonal":
    return _initializers.orthogonal(c["gain"])
  if class_name == "VarianceScaling":
    scale, mode, distribution = c["scale"], c["mode"], c["distribution"]
  else:
    _, scale, mode, distribution = _VS_PRESETS[class_name]
  return _initializers.variance_scaling(scale, mode, distribution,
                                        c["input_axes"], c["output_axes"])


@dataclasses.dataclass(frozen=True)
class KerasInitializer:
  """A Keras initializer carried across with its whole config.

  :func:`from_keras_config` makes one for any initializer whose config is
  not the plain default of a name that sepconv_jax knows (a non-default
  ``stddev``, a ``seed``, ...). It is a ``(key, shape, dtype)`` initializer
  drawing from Keras's distribution, and :func:`to_keras_config` writes its
  config back unchanged. The ``seed`` is kept for that round trip only: the
  draws come from the key that ``init`` is given.

  Attributes:
    class_name: the Keras class, e.g. ``"RandomNormal"``.
    config: the class's config as sorted ``(key, value)`` pairs (lists
      become tuples, so that the object is hashable).
  """

  class_name: str
  config: tuple[tuple[str, Any], ...]

  def __call__(self, key: jax.Array, shape: Sequence[int],
               dtype: Any = jnp.float32) -> jax.Array:
    return _build_initializer(self.class_name, dict(self.config))(
        key, shape, dtype)

  def get_config(self) -> dict[str, Any]:
    """The Keras config: ``{key: value}`` with lists, as Keras writes it."""
    return {k: _jsonable(v) for k, v in self.config}


def _initializer_from_keras(value: Any, name: str) -> Any:
  """A Keras initializer (name or serialized dict) -> a module attribute."""
  if isinstance(value, str):
    value = {"class_name": value, "config": {}}  # As `initializers.get` does.
  if not isinstance(value, Mapping):
    raise ValueError(
        f"`{name}` (={value!r}) must be a serialized Keras initializer (a"
        " dict) or an initializer name"
    )
  class_name, config = _unpack(value, name, "initializer")
  if class_name in _INIT_UNSUPPORTED:
    raise ValueError(
        f"`{name}` (={value!r}): the Keras initializer {class_name!r} cannot"
        f" be honoured: {_INIT_UNSUPPORTED[class_name]}"
    )
  if class_name not in _INIT_ALIASES:
    raise ValueError(
        f"`{name}` (={value!r}): {class_name!r} is not a Keras initializer"
        f" that sepconv_jax can honour; known: {sorted(_INIT_DEFAULTS)}"
    )
  class_name = _INIT_ALIASES[class_name]
  config = _with_defaults(config, _INIT_DEFAULTS[class_name], name,
                          class_name)
  _check_real(config, [k for k in ("value", "mean", "stddev", "minval",
                                   "maxval", "gain", "scale") if k in config],
              name, class_name)
  if "seed" in config and not (config["seed"] is None
                               or _args.is_int(config["seed"])):
    raise ValueError(
        f"`{name}` ({class_name}) config `seed` (={config['seed']!r}) must be"
        " an int or None; a SeedGenerator seed cannot be carried across"
    )
  for key in ("input_axes", "output_axes"):
    if key in config:
      config[key] = _int_axes(config[key], name, class_name, key,
                              allow_none=True)
  if class_name == "VarianceScaling":
    if config["scale"] <= 0:
      raise ValueError(
          f"`{name}` (VarianceScaling) config `scale` (={config['scale']!r})"
          " must be positive"
      )
    if config["mode"] not in ("fan_in", "fan_out", "fan_avg"):
      raise ValueError(
          f"`{name}` (VarianceScaling) config `mode` (={config['mode']!r})"
          " must be 'fan_in', 'fan_out' or 'fan_avg'"
      )
    distribution = str(config["distribution"]).lower()
    distribution = {"normal": "truncated_normal"}.get(distribution,
                                                      distribution)
    if distribution not in ("uniform", "truncated_normal",
                            "untruncated_normal"):
      raise ValueError(
          f"`{name}` (VarianceScaling) config `distribution`"
          f" (={config['distribution']!r}) must be 'uniform',"
          " 'truncated_normal', 'untruncated_normal' or 'normal'"
      )
    config["distribution"] = distribution
  if class_name in _INIT_NAMES and config == _INIT_DEFAULTS[class_name]:
    return _INIT_NAMES[class_name]
  return KerasInitializer(class_name, tuple(sorted(config.items())))


def _initializer_to_keras(value: Any, name: str) -> dict:
  if isinstance(value, KerasInitializer):
    return _keras_object("keras.initializers", value.class_name,
                         value.get_config())
  if isinstance(value, str) and _initializers._ALIASES.get(
      value, value) in _INIT_CLASSES:
    class_name = _INIT_CLASSES[_initializers._ALIASES.get(value, value)]
    return _keras_object("keras.initializers", class_name,
                         dict(_INIT_DEFAULTS[class_name]))
  raise ValueError(
      f"`{name}` (={value!r}) cannot be written as a Keras config: only"
      " initializer names and the KerasInitializer objects that"
      " `from_keras_config` makes can be; a plain function has no Keras"
      " config"
  )


# --------------------------------------------------------------------------
# Regularizers and constraints.

_REG_DEFAULTS = {"L1": {"l1": 0.01}, "L2": {"l2": 0.01},
                 "L1L2": {"l1": 0.0, "l2": 0.0}}
_REG_ALIASES = {"L1": "L1", "l1": "L1", "L2": "L2", "l2": "L2",
                "L1L2": "L1L2", "l1l2": "L1L2"}
_REG_CLASSES = {"L1": _regularizers.L1, "L2": _regularizers.L2,
                "L1L2": _regularizers.L1L2}

_CON_DEFAULTS = {
    "MaxNorm": {"max_value": 2, "axis": 0},
    "NonNeg": {},
    "UnitNorm": {"axis": 0},
    "MinMaxNorm": {"min_value": 0.0, "max_value": 1.0, "rate": 1.0,
                   "axis": 0},
}
_CON_ALIASES = {**{c: c for c in _CON_DEFAULTS},
                **{_snake(c): c for c in _CON_DEFAULTS}}
_CON_CLASSES = {"MaxNorm": _constraints.MaxNorm,
                "NonNeg": _constraints.NonNeg,
                "UnitNorm": _constraints.UnitNorm,
                "MinMaxNorm": _constraints.MinMaxNorm}


def _regularizer_from_keras(value: Any, name: str) -> Any:
  if value is None or isinstance(value, str):
    return value  # The module resolves (and checks) names as Keras does.
  if not isinstance(value, Mapping):
    raise ValueError(
        f"`{name}` (={value!r}) must be None, a regularizer name or a"
        " serialized Keras regularizer (a dict)"
    )
  class_name, config = _unpack(value, name, "regularizer")
  if class_name not in _REG_ALIASES:
    raise ValueError(
        f"`{name}` (={value!r}): the Keras regularizer {class_name!r} cannot"
        " be honoured; sepconv_jax has L1, L2 and L1L2"
    )
  class_name = _REG_ALIASES[class_name]
  defaults = _REG_DEFAULTS[class_name]
  config = _with_defaults(config, defaults, name, class_name)
  # Keras reads None as the default (0.01 for L1 and L2, 0 for L1L2).
  config = {k: defaults[k] if v is None else v for k, v in config.items()}
  _check_real(config, list(config), name, class_name)
  return _REG_CLASSES[class_name](**{k: float(v) for k, v in config.items()})


def _regularizer_to_keras(value: Any, name: str) -> Optional[dict]:
  if value is None:
    return None
  if isinstance(value, str):
    value = _regularizers.get(value, name)
  for class_name, cls in _REG_CLASSES.items():
    if type(value) is cls:  # pylint: disable=unidiomatic-typecheck
      return _keras_object("keras.regularizers", class_name,
                           dataclasses.asdict(value))
  raise ValueError(
      f"`{name}` (={value!r}) cannot be written as a Keras config: only"
      " None, regularizer names and sepconv_jax.regularizers.L1, L2 and L1L2"
      " can be"
  )


def _constraint_from_keras(value: Any, name: str) -> Any:
  if value is None or isinstance(value, str):
    return value
  if not isinstance(value, Mapping):
    raise ValueError(
        f"`{name}` (={value!r}) must be None, a constraint name or a"
        " serialized Keras constraint (a dict)"
    )
  class_name, config = _unpack(value, name, "constraint")
  if class_name not in _CON_ALIASES:
    raise ValueError(
        f"`{name}` (={value!r}): the Keras constraint {class_name!r} cannot"
        f" be honoured; sepconv_jax has {', '.join(_CON_DEFAULTS)}"
    )
  class_name = _CON_ALIASES[class_name]
  config = _with_defaults(config, _CON_DEFAULTS[class_name], name,
                          class_name)
  _check_real(config, [k for k in config if k != "axis"], name, class_name)
  if "axis" in config:
    config["axis"] = _int_axes(config["axis"], name, class_name, "axis",
                               allow_none=False)
  return _CON_CLASSES[class_name](**config)


def _constraint_to_keras(value: Any, name: str) -> Optional[dict]:
  if value is None:
    return None
  if isinstance(value, str):
    value = _constraints.get(value, name)
  for class_name, cls in _CON_CLASSES.items():
    if type(value) is cls:  # pylint: disable=unidiomatic-typecheck
      config = {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
      return _keras_object("keras.constraints", class_name, config)
  raise ValueError(
      f"`{name}` (={value!r}) cannot be written as a Keras config: only"
      " None, constraint names and sepconv_jax.constraints.MaxNorm, NonNeg,"
      " UnitNorm and MinMaxNorm can be"
  )


# --------------------------------------------------------------------------
# Activations and the dtype policy.


def _activation_from_keras(value: Any) -> Any:
  if value is None or isinstance(value, str):
    return value  # The module checks the name.
  if isinstance(value, Mapping):
    config = value.get("config")
    if (str(value.get("module", "")).startswith("keras.activations")
        and value.get("registered_name") is None and isinstance(config, str)):
      return config
    raise ValueError(
        f"`activation` (={value!r}) is a custom Keras activation, which"
        " sepconv_jax cannot honour; pass an equivalent callable to the"
        " module yourself"
    )
  raise ValueError(
      f"`activation` (={value!r}) must be None or a Keras activation name")


def _activation_to_keras(value: Any) -> str:
  if value is None:
    return "linear"
  if isinstance(value, str):
    return value
  for activation_name, fn in _activations._ACTIVATIONS.items():
    if value is fn:
      return activation_name
  raise ValueError(
      f"`activation` (={value!r}) cannot be written as a Keras config: only"
      " None, activation names and the functions they stand for (such as"
      " jax.nn.relu) can be"
  )


_POLICIES = {
    "float16": ("float16", "float16"),
    "bfloat16": ("bfloat16", "bfloat16"),
    "float32": ("float32", "float32"),
    "float64": ("float64", "float64"),
    "mixed_float16": ("float16", "float32"),
    "mixed_bfloat16": ("bfloat16", "float32"),
}
_POLICY_NAMES = {v: k for k, v in _POLICIES.items()}


def _dtype_from_keras(value: Any) -> dict[str, Any]:
  """A Keras dtype policy -> the module's ``dtype`` and ``param_dtype``."""
  if value is None:
    return {}  # Keras would use its global policy; ours are the defaults.
  policy = value
  if isinstance(value, Mapping):
    class_name, config = _unpack(value, "dtype", "dtype policy")
    if class_name not in ("DTypePolicy", "FloatDTypePolicy"):
      raise ValueError(
          f"`dtype` (={value!r}): the Keras dtype policy {class_name!r}"
          " cannot be honoured; sepconv_jax has the float policies only"
          f" ({', '.join(_POLICIES)})"
      )
    config = _with_defaults(config, {"name": None}, "dtype", class_name)
    policy = config["name"]
  if policy not in _POLICIES:
    raise ValueError(
        f"`dtype` (={value!r}) must be one of the Keras dtype policies"
        f" {', '.join(_POLICIES)}"
    )
  compute, params = _POLICIES[policy]
  return {"dtype": jnp.dtype(compute), "param_dtype": jnp.dtype(params)}


def _dtype_to_keras(dtype: Any, param_dtype: Any) -> dict:
  params = jnp.dtype(param_dtype).name
  compute = params if dtype is None else jnp.dtype(dtype).name
  policy = _POLICY_NAMES.get((compute, params))
  if policy is None:
    raise ValueError(
        f"`dtype` (={dtype!r}) and `param_dtype` (={param_dtype!r}) make no"
        " Keras dtype policy; Keras has"
        + ", ".join(f" {n} (dtype={c}, param_dtype={p})"
                    for n, (c, p) in _POLICIES.items())
    )
  return _keras_object("keras", "DTypePolicy", {"name": policy})


# --------------------------------------------------------------------------
# Layer configs.


def _tupled(value: Any) -> Any:
  return tuple(value) if isinstance(value, list) else value


def from_keras_config(cls: type, config: Mapping[str, Any], *,
                      allow_frozen: bool = False) -> Any:
  """Builds a module from ``keras.layers.SeparableConv2D.get_config()``.

  Args:
    cls: the module class to build, :class:`SeparableConv2D`.
    config: the layer's config, exactly as Keras 3's ``get_config()``
      returns it or as a saved model's ``config.json`` holds it (the
      ``"config"`` entry of the layer). Nested serialized initializers,
      regularizers and constraints, activation names, the dtype policy,
      ``name`` and ``trainable`` are all understood.
    allow_frozen: accept ``"trainable": False``. Flax modules have no
      trainable flag, so the caller must freeze the params in the optimizer.

  Returns:
    The module. Initializers whose config is the default of a known name
    become that name; others become a :class:`KerasInitializer`.

  Raises:
    TypeError: if `config` is not a dict.
    ValueError: naming every unknown key, any class that cannot be
      honoured (custom classes, ``OrthogonalRegularizer``, ``Identity``,
      quantized dtype policies, ...), ``"trainable": False`` without
      `allow_frozen`, and any value the module rejects.

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
  if not isinstance(config, Mapping):
    raise TypeError(
        f"`config` (={config!r}) must be the dict of Keras's"
        f" `get_config()`, not {type(config).__name__}"
    )
  unknown = sorted(set(config) - _CONFIG_KEYS)
  if unknown:
    hint = ""
    if "class_name" in config and "config" in config:
      hint = ("; this looks like a whole serialized layer: pass its"
              " 'config' entry")
    raise ValueError(
        f"`config` has keys that SeparableConv2D cannot honour: "
        + ", ".join(f"`{k}` (={config[k]!r})" for k in unknown)
        + hint
    )
  missing = [k for k in _REQUIRED_KEYS if k not in config]
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
  for key in _SIMPLE_KEYS:
    if key in config:
      kwargs[key] = _tupled(config[key])
  if "activation" in config:
    kwargs["activation"] = _activation_from_keras(config["activation"])
  for w in _WEIGHTS:
    for kind, translate in (("initializer", _initializer_from_keras),
                            ("regularizer", _regularizer_from_keras),
                            ("constraint", _constraint_from_keras)):
      key = f"{w}_{kind}"
      if key in config:
        kwargs[key] = translate(config[key], key)
  if "activity_regularizer" in config:
    kwargs["activity_regularizer"] = _regularizer_from_keras(
        config["activity_regularizer"], "activity_regularizer")
  kwargs.update(_dtype_from_keras(config.get("dtype")))
  return cls(**kwargs)


# Module attributes that `to_keras_config` writes, or leaves out on purpose.
_EXPORTED = (frozenset(_SIMPLE_KEYS) | frozenset(_OBJECT_KEYS)
             | {"activation", "dtype", "param_dtype"})
_NOT_IN_KERAS = frozenset(("name", "parent", "precision", "implementation"))


def to_keras_config(module: Any) -> dict[str, Any]:
  """The Keras 3 config of a module, for ``SeparableConv2D.from_config``.

  Args:
    module: a :class:`SeparableConv2D`.

  Returns:
    A dict shaped like Keras's ``get_config()``: the module's ``name`` (if it
    has one), ``"trainable": True``, the dtype policy (``dtype=None`` counts
    as ``param_dtype``: Keras always computes in the policy's dtype), the
    resolved ``data_format`` and nested serialized initializers,
    regularizers and constraints. ``precision`` and ``implementation`` have
    no Keras counterpart and are left out.

  Raises:
    ValueError: naming any attribute Keras cannot express: a function
      (such as a lambda) as activation, initializer, regularizer or
      constraint; a ``dtype``/``param_dtype`` pair that is no Keras policy;
      or any other attribute (e.g. explicit padding) away from its default.
  """
  cfg = module._config()  # pylint: disable=protected-access
  for field in dataclasses.fields(module):
    if field.name in _EXPORTED or field.name in _NOT_IN_KERAS:
      continue
    value = getattr(module, field.name)
    if field.default is dataclasses.MISSING or value != field.default:
      raise ValueError(
          f"`{field.name}` (={value!r}) has no Keras counterpart, so the"
          " layer cannot be written as a Keras config"
      )
  padding = module.padding
  if not isinstance(padding, str) or padding.lower() not in ("valid", "same"):
    raise ValueError(
        f"`padding` (={padding!r}) has no Keras counterpart: Keras's"
        " SeparableConv2D takes 'valid' or 'same'"
    )
  spec = cfg.spec
  out: dict[str, Any] = {}
  if isinstance(module.name, str):
    out["name"] = module.name
  out["trainable"] = True
  out["dtype"] = _dtype_to_keras(module.dtype, module.param_dtype)
  out.update(
      depth_multiplier=cfg.depth_multiplier,
      filters=cfg.filters,
      kernel_size=cfg.kernel_size,
      strides=spec.strides,
      padding=padding.lower(),
      data_format=(_args.CHANNELS_LAST if spec.channels_last
                   else _args.CHANNELS_FIRST),
      dilation_rate=spec.dilation_rate,
      activation=_activation_to_keras(module.activation),
      use_bias=module.use_bias,
  )
  for w in _WEIGHTS:
    key = f"{w}_initializer"
    out[key] = _initializer_to_keras(getattr(module, key), key)
  for key in [f"{w}_regularizer" for w in _WEIGHTS] + ["activity_regularizer"]:
    out[key] = _regularizer_to_keras(getattr(module, key), key)
  for w in _WEIGHTS:
    key = f"{w}_constraint"
    out[key] = _constraint_to_keras(getattr(module, key), key)
  return out


# --------------------------------------------------------------------------
# Weights.


def _check_weights(arrays: Mapping[str, Any], module: Any,
                   where: Mapping[str, str]) -> None:
  """Checks the dtypes and shapes of named weights against each other.

  Args:
    arrays: arrays by param name (depthwise_kernel, pointwise_kernel and
      optionally bias).
    module: None, or the module whose configuration fixes the shapes.
    where: each param's place in the caller's input, for the messages.

  Raises:
    ValueError: naming the weight, the expected shape and the shape given.
  """
  for name, a in arrays.items():
    if not jnp.issubdtype(a.dtype, jnp.floating):
      raise ValueError(
          f"`{name}` ({where[name]}, dtype={a.dtype}, shape={a.shape}) must"
          " be a floating-point array"
      )
  want_dtype = (jnp.dtype(module.param_dtype) if module is not None
                else arrays["depthwise_kernel"].dtype)
  for name, a in arrays.items():
    if a.dtype != want_dtype:
      reason = ("the module's `param_dtype`" if module is not None
                else "the dtype of depthwise_kernel")
      raise ValueError(
          f"`{name}` ({where[name]}, dtype={a.dtype}, shape={a.shape}) must"
          f" have dtype {want_dtype}, {reason}"
      )

  def check(name, expected):
    shape = tuple(arrays[name].shape)
    fits = len(shape) == len(expected) and all(
        e is None or s == e for s, e in zip(shape, expected))
    if not fits:
      shown = ", ".join("?" if e is None else str(e) for e in expected)
      if len(expected) == 1:
        shown += ","
      raise ValueError(
          f"`{name}` ({where[name]}) has the wrong shape: expected shape"
          f" ({shown}), got shape {shape}"
      )

  if module is not None:
    cfg = module._config()  # pylint: disable=protected-access
    kh, kw = cfg.kernel_size
    multiplier, filters = cfg.depth_multiplier, cfg.filters
  else:
    kh = kw = multiplier = filters = None
  check("depthwise_kernel", (kh, kw, None, multiplier))
  channels, multiplier = arrays["depthwise_kernel"].shape[2:]
  check("pointwise_kernel", (1, 1, channels * multiplier, filters))
  if "bias" in arrays:
    check("bias", (arrays["pointwise_kernel"].shape[-1],))


def _shapes(arrays: Sequence[Any]) -> list:
  return [tuple(np.shape(a)) for a in arrays]


def params_from_keras(weights: Sequence[Any], *,
                      module: Any = None) -> dict[str, jax.Array]:
  """Turns Keras's ``get_weights()`` list into the module's params.

  Args:
    weights: ``[depthwise_kernel, pointwise_kernel]`` or
      ``[depthwise_kernel, pointwise_kernel, bias]``, in the order of
      ``keras.layers.SeparableConv2D.get_weights()`` (numpy or JAX arrays).
    module: optionally the :class:`SeparableConv2D` the params are for; then
      the count, every shape (but the input channels) and the dtype
      (``param_dtype``) are checked against it too.

  Returns:
    The ``params`` dict: ``{"depthwise_kernel", "pointwise_kernel"[,
    "bias"]}``, ready for ``module.apply({"params": params}, x)``.

  Raises:
    TypeError: if `weights` is not a list or tuple.
    ValueError: for a wrong count, or a weight whose shape does not fit the
      others (or `module`), naming the weight, the expected shape and the
      shape it got; for a non-float dtype or one that differs between the
      weights (or from `module`'s ``param_dtype``).

  Example:
    >>> import numpy as np
    >>> import sepconv_jax
    >>> weights = [np.ones((3, 3, 4, 2), np.float32),
    ...            np.ones((1, 1, 8, 16), np.float32),
    ...            np.zeros((16,), np.float32)]
    >>> params = sepconv_jax.params_from_keras(weights)
    >>> {k: v.shape for k, v in params.items()}
    {'depthwise_kernel': (3, 3, 4, 2), 'pointwise_kernel': (1, 1, 8, 16), 'bias': (16,)}
  """
  if not isinstance(weights, (list, tuple)):
    raise TypeError(
        f"`weights` (a {type(weights).__name__}) must be a list of arrays in"
        " the order of Keras's get_weights()"
    )
  arrays = [np.asarray(w) for w in weights]
  if module is not None:
    counts = (3,) if module.use_bias else (2,)
  else:
    counts = (2, 3)
  if len(arrays) not in counts:
    want = " or ".join(str(c) for c in counts)
    raise ValueError(
        f"`weights` (={len(arrays)} arrays of shapes {_shapes(arrays)}) must"
        f" hold {want} arrays, in the order of Keras's get_weights():"
        " depthwise_kernel, pointwise_kernel, then bias if the layer has one"
        + (f" (use_bias={module.use_bias})" if module is not None else "")
    )
  named = dict(zip(_PARAM_NAMES, arrays))
  _check_weights(named, module,
                 {n: f"weights[{i}]" for i, n in enumerate(_PARAM_NAMES)})
  return {name: jnp.asarray(a) for name, a in named.items()}


def params_to_keras(params: Mapping[str, Any], *,
                    module: Any = None) -> list[np.ndarray]:
  """Turns the module's params into Keras's ``set_weights()`` list.

  Args:
    params: the ``params`` dict (``{"depthwise_kernel",
      "pointwise_kernel"[, "bias"]}``), or the variables ``{"params": ...}``
      holding it.
    module: optionally the :class:`SeparableConv2D` the params belong to,
      to check them against.

  Returns:
    ``[depthwise_kernel, pointwise_kernel(, bias)]`` as numpy arrays, for
    ``keras.layers.SeparableConv2D.set_weights()``.

  Raises:
    TypeError: if `params` is not a mapping.
    ValueError: for missing or unknown params, and for shapes or dtypes that
      do not fit (naming the param, the expected and the actual shape).

  Example:
    >>> import jax.numpy as jnp
    >>> import sepconv_jax
    >>> params = {"depthwise_kernel": jnp.ones((3, 3, 2, 1)),
    ...           "pointwise_kernel": jnp.ones((1, 1, 2, 4))}
    >>> [w.shape for w in sepconv_jax.params_to_keras(params)]
    [(3, 3, 2, 1), (1, 1, 2, 4)]
  """
  if not isinstance(params, Mapping):
    raise TypeError(
        f"`params` (a {type(params).__name__}) must be a mapping of param"
        " names to arrays"
    )
  if set(params) == {"params"} and isinstance(params["params"], Mapping):
    params = params["params"]
  unknown = sorted(set(params) - set(_PARAM_NAMES))
  missing = [n for n in _PARAM_NAMES[:2] if n not in params]
  if module is not None and module.use_bias and "bias" not in params:
    missing.append("bias")
  if module is not None and not module.use_bias and "bias" in params:
    unknown.append("bias")
  if unknown or missing:
    raise ValueError(
        f"`params` (keys={sorted(params)}) must hold depthwise_kernel,"
        " pointwise_kernel and, if the layer has one, bias"
        + (f"; unknown: {unknown}" if unknown else "")
        + (f"; missing: {missing}" if missing else "")
    )
  named = {n: np.asarray(params[n]) for n in _PARAM_NAMES if n in params}
  _check_weights(named, module, {n: f"params[{n!r}]" for n in named})
  return list(named.values())


# --------------------------------------------------------------------------
# Saved models.

_MODEL_CLASSES = ("Functional", "Sequential", "Model")
_WEIGHTS_H5 = "model.weights.h5"


def _is_builtin(entry: Mapping) -> bool:
  """Whether a serialized object is one of Keras's own classes."""
  registered = entry.get("registered_name")
  return (str(entry.get("module") or "keras").startswith("keras")
          and (registered is None or registered == entry.get("class_name")))


def _mentions_layer(value: Any) -> bool:
  """Whether a config holds a serialized SeparableConv2D anywhere."""
  if isinstance(value, Mapping):
    if value.get("class_name") in _LAYER_CLASSES:
      return True
    return any(_mentions_layer(v) for v in value.values())
  if isinstance(value, (list, tuple)):
    return any(_mentions_layer(v) for v in value)
  return False


def _model_config(config: Any, path: str) -> dict:
  """A model config in any form -> ``{"class_name", "config", ...}``."""
  if isinstance(config, (str, os.PathLike)):
    text = os.fspath(config)
    if not text.lstrip().startswith("{"):
      if not os.path.isfile(text):
        raise FileNotFoundError(
            f"`config` (={text!r}) is neither JSON nor an existing file")
      with open(text) as f:
        text = f.read()
    try:
      config = json.loads(text)
    except ValueError as e:
      raise ValueError(f"`config` is not valid JSON: {e}") from None
  if not isinstance(config, Mapping):
    raise ValueError(
        f"`config` (={config!r}) must be a model config: model.to_json(),"
        " model.get_config(), or a path to a JSON file holding one"
    )
  if "class_name" in config and isinstance(config.get("config"), Mapping):
    return dict(config)
  if "layers" in config:  # A bare `model.get_config()`.
    class_name = ("Functional" if "input_layers" in config
                  or "output_layers" in config else "Sequential")
    return {"module": "keras", "class_name": class_name, "config": config}
  raise ValueError(
      f"`config` for {path!r} is not a Functional or Sequential model"
      f" config (keys: {sorted(config)})"
  )


def _read_vars(h5: Any, group_path: str, layer: str, file_path: str) -> list:
  """The datasets under ``<group_path>/vars``, in Keras's order."""
  if group_path not in h5 and "_layer_checkpoint_dependencies" in h5:
    group_path = group_path.replace("layers", "_layer_checkpoint_dependencies")
  if group_path not in h5 or "vars" not in h5[group_path]:
    raise ValueError(
        f"{file_path!r} holds no weights for layer {layer!r} at"
        f" {group_path + '/vars'!r}: do the weights and the model config"
        " belong together?"
    )
  group = h5[group_path]["vars"]
  saved_name = group.attrs.get("name")
  if isinstance(saved_name, bytes):
    saved_name = saved_name.decode()
  if saved_name is not None and saved_name != layer.rsplit("/", 1)[-1]:
    raise ValueError(
        f"{file_path!r} holds the weights of layer {saved_name!r} at"
        f" {group_path + '/vars'!r}, where the model config puts layer"
        f" {layer!r}: do the weights and the model config belong together?"
    )
  arrays = []
  for key in sorted(group, key=int):
    dataset = group[key]
    value = np.asarray(dataset[()])
    if dataset.attrs.get("dtype") in ("bfloat16", b"bfloat16"):
      value = value.view(jnp.bfloat16)
    arrays.append(value)
  return arrays


def _walk(model: Mapping, h5: Any, group: str, prefix: str, found: dict,
          module_cls: type, allow_frozen: bool, file_path: str) -> None:
  """Adds every SeparableConv2D of `model` (and its sub-models) to `found`."""
  class_name = model.get("class_name")
  if class_name not in _MODEL_CLASSES or not _is_builtin(model):
    where = f"layer {prefix[:-1]!r}" if prefix else "the model"
    raise ValueError(
        f"{where} in {file_path!r} is a {class_name!r}"
        f" (registered as {model.get('registered_name')!r}): only Functional"
        " and Sequential models can be searched for SeparableConv2D layers"
    )
  layers = model["config"].get("layers")
  if not isinstance(layers, list):
    raise ValueError(
        f"the {class_name} model {prefix[:-1] or file_path!r} has no layer"
        " list in its config")
  used: dict[str, int] = {}
  for entry in layers:
    entry_class = entry.get("class_name", "")
    module_name = str(entry.get("module") or "")
    if class_name == "Sequential" and entry_class == "InputLayer":
      continue  # `Sequential.layers` leaves the input layer out.
    if module_name.startswith("keras.src.ops"):
      continue  # A functional op such as `keras.ops.add`: not a layer.
    # Keras names each layer's weight group after its class, in order.
    snake = _snake(entry_class)
    if snake in used:
      used[snake] += 1
      snake = f"{snake}_{used[snake]}"
    else:
      used[snake] = 0
    path = f"{group}/layers/{snake}" if group else f"layers/{snake}"
    config = entry.get("config") or {}
    name = prefix + str(config.get("name", entry.get("name", snake)))
    if entry_class in _LAYER_CLASSES and _is_builtin(entry):
      try:
        module = module_cls.from_keras_config(config,
                                              allow_frozen=allow_frozen)
      except (TypeError, ValueError) as e:
        raise type(e)(f"layer {name!r} in {file_path!r}: {e}") from e
      weights = _read_vars(h5, path, name, file_path)
      try:
        params = params_from_keras(weights, module=module)
      except ValueError as e:
        raise ValueError(f"layer {name!r} in {file_path!r}: {e}") from e
      found[name] = (module, {"params": params})
    elif entry_class in _LAYER_CLASSES:
      raise ValueError(
          f"layer {name!r} in {file_path!r} is the custom class"
          f" {entry.get('registered_name')!r}, not Keras's SeparableConv2D;"
          " it cannot be honoured"
      )
    elif entry_class in _MODEL_CLASSES and _is_builtin(entry):
      _walk(entry, h5, path, name + "/", found, module_cls, allow_frozen,
            file_path)
    elif _mentions_layer(config):
      raise ValueError(
          f"layer {name!r} in {file_path!r} is a {entry_class!r} holding a"
          " SeparableConv2D; load_keras_layers reads SeparableConv2D layers"
          " of Functional and Sequential models only"
      )
    elif not _is_builtin(entry) and path in h5 and any(
        key != "vars" for key in h5[path]):
      raise ValueError(
          f"layer {name!r} in {file_path!r} is the custom class"
          f" {entry.get('registered_name') or entry_class!r}, which holds"
          " sublayers that load_keras_layers cannot see into; any"
          " SeparableConv2D inside it would be missed. Port it by hand with"
          " SeparableConv2D.from_keras_config and params_from_keras"
      )


def load_keras_layers(path: str | os.PathLike, config: Any = None, *,
                      allow_frozen: bool = False) -> dict[str, tuple]:
  """Reads every ``SeparableConv2D`` out of a saved Keras 3 model.

  Needs h5py (``pip install 'sepconv-jax[keras]'``); Keras itself is not
  needed.

  Args:
    path: a ``.keras`` archive (what ``model.save("m.keras")`` writes), or a
      ``.weights.h5`` file (``model.save_weights``), which needs `config`.
    config: for a ``.weights.h5`` file only: its model's config, as
      ``model.to_json()`` (a JSON string), ``json.loads`` of it,
      ``model.get_config()``, or the path of a JSON file holding one.
    allow_frozen: accept layers saved with ``trainable=False`` (see
      :meth:`SeparableConv2D.from_keras_config`).

  Returns:
    ``{layer_name: (module, variables)}`` for every SeparableConv2D, in the
    model's layer order, nested Functional and Sequential models included:
    their layers are named ``"outer/inner"``. ``variables`` is
    ``{"params": ...}`` for ``module.apply``.

  Raises:
    FileNotFoundError: if `path` (or a `config` path) does not exist.
    ImportError: if h5py is not installed.
    ValueError: for a file that is not a Keras 3 archive or weights file
      (legacy Keras 2 ``.h5`` files included), a missing or unwanted
      `config`, weights that do not match the config, a SeparableConv2D
      whose config cannot be honoured (the message names the layer), or a
      SeparableConv2D inside a layer that cannot be searched (a wrapper
      such as ``TimeDistributed``, or a custom class holding sublayers).
  """
  try:
    import h5py  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(
        "`load_keras_layers` needs h5py: pip install 'sepconv-jax[keras]'"
        " (or pip install h5py)"
    ) from None
  from sepconv_jax._linen import SeparableConv2D  # pylint: disable=g-import-not-at-top

  file_path = os.fspath(path)
  if not os.path.exists(file_path):
    raise FileNotFoundError(f"`path` (={file_path!r}) does not exist")
  if os.path.isdir(file_path) or zipfile.is_zipfile(file_path):
    if config is not None:
      raise ValueError(
          f"`config` is only for .weights.h5 files; {file_path!r} is a Keras"
          " archive, which holds its own config"
      )
    if os.path.isdir(file_path):
      names = set(os.listdir(file_path))
      read = lambda n: open(os.path.join(file_path, n), "rb").read()  # pylint: disable=consider-using-with
    else:
      archive = zipfile.ZipFile(file_path)
      names, read = set(archive.namelist()), archive.read
    if "config.json" not in names:
      raise ValueError(
          f"`path` (={file_path!r}) is not a Keras 3 archive: it has no"
          f" config.json (it holds {sorted(names)[:8]})"
      )
    if _WEIGHTS_H5 not in names:
      raise ValueError(
          f"`path` (={file_path!r}) holds no {_WEIGHTS_H5} (it holds"
          f" {sorted(names)}); load_keras_layers reads HDF5 weights only,"
          " not npz or sharded weights: re-save with model.save(path)"
      )
    model = _model_config(read("config.json").decode(), file_path)
    h5 = h5py.File(io.BytesIO(read(_WEIGHTS_H5)), "r")
  elif h5py.is_hdf5(file_path):
    h5 = h5py.File(file_path, "r")
    if "model_weights" in h5 or "layer_names" in h5.attrs or (
        "model_config" in h5.attrs):
      h5.close()
      raise ValueError(
          f"`path` (={file_path!r}) is a legacy Keras 2 HDF5 file, which"
          " load_keras_layers does not read; load it with Keras and re-save"
          " it as .keras"
      )
    if config is None:
      h5.close()
      raise ValueError(
          f"`config` is needed for the weights file {file_path!r}: pass the"
          " model's config (model.to_json(), model.get_config(), or a JSON"
          " file), or load a .keras archive instead"
      )
    try:
      model = _model_config(config, file_path)
    except Exception:
      h5.close()
      raise
  else:
    raise ValueError(
        f"`path` (={file_path!r}) is neither a .keras archive nor a"
        " .weights.h5 file"
    )
  found: dict[str, tuple] = {}
  with h5:
    _walk(model, h5, "", "", found, SeparableConv2D, allow_frozen, file_path)
  return found
