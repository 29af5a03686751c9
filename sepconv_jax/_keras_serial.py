"""Keras's serialized objects: the dicts that ``get_config()`` nests.

A Keras layer config holds each initializer, regularizer and constraint,
and its dtype policy, as ``{"module", "class_name", "config",
"registered_name"}``. The name tables (:mod:`sepconv_jax._initializers`,
``_regularizers``, ``_constraints``, ``_activations``) and the layer configs
(:mod:`sepconv_jax._keras_config`) read and write them with these helpers;
Keras itself is never imported.
"""

from __future__ import annotations

import dataclasses
import numbers
import re
from typing import Any, Collection, Mapping, Sequence

import jax.numpy as jnp

from sepconv_jax import _args

# The keys of one serialized Keras object.
_SERIALIZED_KEYS = frozenset(
    ("module", "class_name", "config", "registered_name", "shared_object_id"))


def is_real(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def snake(name: str) -> str:
  """Keras's `to_snake_case`, e.g. "SeparableConv2D" -> "separable_conv2d"."""
  name = re.sub(r"\W+", "", name)
  name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
  return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def camel(name: str) -> str:
  """The Keras class of a snake-case name: "he_normal" -> "HeNormal"."""
  return "".join(part.capitalize() for part in name.split("_"))


def keras_object(module: str, class_name: str, config: Any) -> dict:
  """A serialized Keras object, as ``get_config()`` nests them."""
  return {"module": module, "class_name": class_name, "config": config,
          "registered_name": None}


def is_builtin(value: Mapping) -> bool:
  """Whether a serialized object is one of Keras's own classes."""
  registered = value.get("registered_name")
  return (str(value.get("module") or "keras").startswith("keras")
          and (registered is None or registered == value.get("class_name")))


def unpack(value: Mapping, name: str, kind: str) -> tuple[str, dict]:
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
  if not is_builtin(value):
    raise ValueError(
        f"`{name}` (={value!r}) is the custom {kind} class"
        f" {value.get('registered_name') or value['class_name']!r} (module"
        f" {value.get('module')!r}), which sepconv_jax cannot honour; pass an"
        " equivalent callable to the module yourself"
    )
  config = value.get("config")
  if config is None:
    config = {}
  if not isinstance(config, Mapping):
    raise ValueError(
        f"`{name}` (={value!r}) has a 'config' that is not a dict")
  return value["class_name"], dict(config)


def read(value: Mapping, name: str, kind: str, classes: Collection[str],
         aliases: Mapping[str, str] | None = None,
         unsupported: Mapping[str, str] | None = None) -> tuple[str, dict]:
  """A serialized Keras object of one of `classes` -> (class name, config).

  Args:
    value: the serialized object.
    name: the argument it came in, for messages.
    kind: "initializer", "regularizer", ...
    classes: the Keras classes sepconv_jax honours; their snake-case names
      (Keras's deserializer accepts both) resolve to them too.
    aliases: more names Keras accepts, each with its class.
    unsupported: Keras classes that cannot be honoured, each with why.

  Returns:
    The canonical class name and the config as given (no defaults yet).

  Raises:
    ValueError: for a custom class, or one that is not in `classes`.
  """
  class_name, config = unpack(value, name, kind)
  if unsupported and class_name in unsupported:
    raise ValueError(
        f"`{name}` (={value!r}): the Keras {kind} {class_name!r} cannot be"
        f" honoured: {unsupported[class_name]}"
    )
  known = {**{snake(c): c for c in classes}, **{c: c for c in classes},
           **(aliases or {})}
  if class_name not in known:
    raise ValueError(
        f"`{name}` (={value!r}): the Keras {kind} {class_name!r} cannot be"
        f" honoured; sepconv_jax has {', '.join(classes)}"
    )
  return known[class_name], config


def with_defaults(config: Mapping, defaults: Mapping, name: str,
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


def field_defaults(cls: type) -> dict[str, Any]:
  """A dataclass's field defaults: the config of its Keras class's default."""
  return {f.name: f.default for f in dataclasses.fields(cls)}


def read_dataclass(value: Any, name: str, kind: str,
                   classes: Mapping[str, type]) -> tuple[str, dict, dict]:
  """A serialized Keras object whose classes are our dataclasses.

  Args:
    value: the serialized object (a dict).
    name: the argument it came in, for messages.
    kind: "regularizer", "constraint", ...
    classes: Keras class name -> our dataclass, whose fields are the
      class's config and whose field defaults are Keras's.

  Returns:
    The canonical class name, the config with Keras's defaults filled in,
    and those defaults.

  Raises:
    ValueError: for a value that is not a dict, a class not in `classes`,
      or unknown config keys.
  """
  if not isinstance(value, Mapping):
    raise ValueError(
        f"`{name}` (={value!r}) must be None, a {kind} name or a serialized"
        f" Keras {kind} (a dict)"
    )
  class_name, config = read(value, name, kind, classes)
  defaults = field_defaults(classes[class_name])
  return class_name, with_defaults(config, defaults, name, class_name), defaults


def check_real(config: Mapping, keys: Sequence[str], name: str,
               class_name: str) -> None:
  for key in keys:
    if not is_real(config[key]):
      raise ValueError(
          f"`{name}` ({class_name}) config `{key}` (={config[key]!r}) must be"
          " a number"
      )


def int_axes(value: Any, name: str, class_name: str, key: str,
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


def jsonable(value: Any) -> Any:
  """Tuples (our hashable form) back to lists, as JSON configs hold them."""
  if isinstance(value, tuple):
    return [jsonable(v) for v in value]
  return value


# Keras's float dtype policies: (compute dtype, variable dtype).
_POLICIES = {
    "float16": ("float16", "float16"),
    "bfloat16": ("bfloat16", "bfloat16"),
    "float32": ("float32", "float32"),
    "float64": ("float64", "float64"),
    "mixed_float16": ("float16", "float32"),
    "mixed_bfloat16": ("bfloat16", "float32"),
}
_POLICY_NAMES = {v: k for k, v in _POLICIES.items()}


def dtype_from_keras(value: Any) -> dict[str, Any]:
  """A Keras dtype policy -> the module's ``dtype`` and ``param_dtype``.

  Raises:
    ValueError: for a policy that is not one of Keras's float policies.
  """
  if value is None:
    return {}  # Keras would use its global policy; ours are the defaults.
  policy = value
  if isinstance(value, Mapping):
    class_name, config = unpack(value, "dtype", "dtype policy")
    if class_name not in ("DTypePolicy", "FloatDTypePolicy"):
      raise ValueError(
          f"`dtype` (={value!r}): the Keras dtype policy {class_name!r}"
          " cannot be honoured; sepconv_jax has the float policies only"
          f" ({', '.join(_POLICIES)})"
      )
    policy = with_defaults(config, {"name": None}, "dtype",
                           class_name)["name"]
  if policy not in _POLICIES:
    raise ValueError(
        f"`dtype` (={value!r}) must be one of the Keras dtype policies"
        f" {', '.join(_POLICIES)}"
    )
  compute, params = _POLICIES[policy]
  return {"dtype": jnp.dtype(compute), "param_dtype": jnp.dtype(params)}


def dtype_to_keras(dtype: Any, param_dtype: Any) -> dict:
  """The Keras dtype policy of a ``dtype``/``param_dtype`` pair.

  ``dtype=None`` counts as ``param_dtype``: Keras always computes in the
  policy's dtype.

  Raises:
    ValueError: for a pair that is no Keras policy.
  """
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
  return keras_object("keras", "DTypePolicy", {"name": policy})
