"""Keras weight constraints, which project a weight after a step; configs."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp

from sepconv_jax import _args
from sepconv_jax import _keras_serial

Constraint = Callable[[jax.Array], jax.Array]

#: What a ``*_constraint`` argument accepts.
ConstraintLike = Optional[Union[str, Constraint]]

_EPSILON = 1e-7  # keras.backend.epsilon()


def _norms(w: jax.Array, axis) -> jax.Array:
  return jnp.sqrt(jnp.sum(jnp.square(w), axis=axis, keepdims=True))


class _AxisConstraint:
  """Keeps `axis` hashable: Keras accepts a list, which we store as a tuple.

  Hashable constraints keep modules hashable (``jax.jit`` static arguments).
  """

  def __post_init__(self):
    if isinstance(self.axis, list):
      object.__setattr__(self, "axis", tuple(self.axis))


@dataclasses.dataclass(frozen=True)
class MaxNorm(_AxisConstraint):
  """Scales slices whose L2 norm along `axis` exceeds `max_value`."""

  max_value: float = 2.0
  axis: Any = 0

  def __call__(self, w: jax.Array) -> jax.Array:
    norms = _norms(w, self.axis)
    desired = jnp.clip(norms, 0, self.max_value)
    return w * (desired / (_EPSILON + norms))


@dataclasses.dataclass(frozen=True)
class NonNeg:
  """Clips negative weights to 0."""

  def __call__(self, w: jax.Array) -> jax.Array:
    return jnp.maximum(w, 0)


@dataclasses.dataclass(frozen=True)
class UnitNorm(_AxisConstraint):
  """Scales slices along `axis` to unit L2 norm."""

  axis: Any = 0

  def __call__(self, w: jax.Array) -> jax.Array:
    return w / (_EPSILON + _norms(w, self.axis))


@dataclasses.dataclass(frozen=True)
class MinMaxNorm(_AxisConstraint):
  """Moves slice norms along `axis` towards [min_value, max_value]."""

  min_value: float = 0.0
  max_value: float = 1.0
  rate: float = 1.0
  axis: Any = 0

  def __call__(self, w: jax.Array) -> jax.Array:
    norms = _norms(w, self.axis)
    desired = (self.rate * jnp.clip(norms, self.min_value, self.max_value)
               + (1 - self.rate) * norms)
    return w * (desired / (_EPSILON + norms))


_TABLE = {
    "max_norm": MaxNorm, "MaxNorm": MaxNorm,
    "non_neg": NonNeg, "NonNeg": NonNeg,
    "unit_norm": UnitNorm, "UnitNorm": UnitNorm,
    "min_max_norm": MinMaxNorm, "MinMaxNorm": MinMaxNorm,
}

#: Every constraint name that :func:`get` accepts.
NAMES: tuple[str, ...] = tuple(sorted(_TABLE))


def get(identifier: ConstraintLike, name: str) -> Optional[Constraint]:
  """Resolves a constraint: None, a callable, or a Keras name.

  Raises:
    ValueError: for an unknown name.
    TypeError: for anything else that is not callable.
  """
  return _args.lookup(identifier, _TABLE, name, "constraint",
                      allow_none=True)


# The Keras classes, by name; each dataclass's fields are its Keras config,
# its field defaults Keras's.
_KERAS_CLASSES = {"MaxNorm": MaxNorm, "NonNeg": NonNeg, "UnitNorm": UnitNorm,
                  "MinMaxNorm": MinMaxNorm}


def from_keras(value: Any, name: str) -> ConstraintLike:
  """A Keras config's constraint (None, a name or a serialized dict) -> ours.

  Names pass through: the layer resolves them as Keras does.

  Raises:
    ValueError: for a class we lack, unknown config keys, values that are
      not numbers, or an ``axis`` that is not an int or a list of ints.
  """
  if value is None or isinstance(value, str):
    return value
  class_name, config, _ = _keras_serial.read_dataclass(
      value, name, "constraint", _KERAS_CLASSES)
  _keras_serial.check_real(config, [k for k in config if k != "axis"], name,
                           class_name)
  if "axis" in config:
    config["axis"] = _keras_serial.int_axes(config["axis"], name, class_name,
                                            "axis", allow_none=False)
  return _KERAS_CLASSES[class_name](**config)


def to_keras(value: ConstraintLike, name: str) -> Optional[dict]:
  """Our constraint -> a serialized Keras constraint (None stays None).

  Raises:
    ValueError: for a function: only names and the classes of
      :mod:`sepconv_jax.constraints` have a Keras config.
  """
  if value is None:
    return None
  if isinstance(value, str):
    value = get(value, name)
  for class_name, cls in _KERAS_CLASSES.items():
    if type(value) is cls:  # pylint: disable=unidiomatic-typecheck
      config = {k: _keras_serial.jsonable(v)
                for k, v in dataclasses.asdict(value).items()}
      return _keras_serial.keras_object("keras.constraints", class_name,
                                        config)
  raise ValueError(
      f"`{name}` (={value!r}) cannot be written as a Keras config: only"
      " None, constraint names and sepconv_jax.constraints.MaxNorm, NonNeg,"
      " UnitNorm and MinMaxNorm can be"
  )
