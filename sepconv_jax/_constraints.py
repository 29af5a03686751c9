"""Keras weight constraints: functions that project a weight after a step."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from sepconv_jax import _args

Constraint = Callable[[jax.Array], jax.Array]

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


def get(identifier: Any, name: str) -> Optional[Constraint]:
  """Resolves a constraint: None, a callable, or a Keras name.

  Raises:
    ValueError: for an unknown name.
    TypeError: for anything else that is not callable.
  """
  return _args.lookup(identifier, _TABLE, name, "constraint",
                      allow_none=True)
