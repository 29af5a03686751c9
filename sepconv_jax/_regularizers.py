"""Keras regularizers, their Keras configs, and the sum of sown penalties."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Union

import jax
import jax.numpy as jnp

from sepconv_jax import _args
from sepconv_jax import _keras_serial

Regularizer = Callable[[jax.Array], jax.Array]

#: What a ``*_regularizer`` argument accepts.
RegularizerLike = Optional[Union[str, Regularizer]]

#: The Flax collection that the layers sow their penalties into.
LOSSES = "losses"


@dataclasses.dataclass(frozen=True)
class L1:
  """``l1 * sum(|w|)``, Keras's `L1`."""

  l1: float = 0.01

  def __call__(self, w: jax.Array) -> jax.Array:
    return jnp.asarray(self.l1, w.dtype) * jnp.sum(jnp.abs(w))


@dataclasses.dataclass(frozen=True)
class L2:
  """``l2 * sum(w ** 2)``, Keras's `L2`."""

  l2: float = 0.01

  def __call__(self, w: jax.Array) -> jax.Array:
    return jnp.asarray(self.l2, w.dtype) * jnp.sum(jnp.square(w))


@dataclasses.dataclass(frozen=True)
class L1L2:
  """``l1 * sum(|w|) + l2 * sum(w ** 2)``, Keras's `L1L2`.

  The class defaults are 0, as in Keras 3, so ``"L1L2"`` and ``"l1l2"``
  penalise nothing. The name ``"l1_l2"`` gives both factors 0.01, the
  default that tf.keras and the Keras 3 docs document for that name (Keras
  3.15's own `regularizers.get` rejects ``"l1_l2"``).
  """

  l1: float = 0.0
  l2: float = 0.0

  def __call__(self, w: jax.Array) -> jax.Array:
    return L1(self.l1)(w) + L2(self.l2)(w)


_TABLE = {
    "l1": L1, "L1": L1, "l2": L2, "L2": L2, "l1l2": L1L2, "L1L2": L1L2,
    "l1_l2": lambda: L1L2(l1=0.01, l2=0.01),
}

#: Every regularizer name that :func:`get` accepts.
NAMES: tuple[str, ...] = tuple(sorted(_TABLE))


def get(identifier: RegularizerLike, name: str) -> Optional[Regularizer]:
  """Resolves a regularizer: None, a callable, or a Keras name.

  Raises:
    ValueError: for an unknown name.
    TypeError: for anything else that is not callable.
  """
  return _args.lookup(identifier, _TABLE, name, "regularizer",
                      allow_none=True)


# The Keras classes, by name; each dataclass's fields are its Keras config,
# its field defaults Keras's.
_KERAS_CLASSES = {"L1": L1, "L2": L2, "L1L2": L1L2}


def from_keras(value: Any, name: str) -> RegularizerLike:
  """A Keras config's regularizer (None, a name or a serialized dict) -> ours.

  Names pass through: the layer resolves them as Keras does.

  Raises:
    ValueError: for a class other than L1, L2 and L1L2 (such as
      ``OrthogonalRegularizer``), unknown config keys, or factors that are
      not numbers.
  """
  if value is None or isinstance(value, str):
    return value
  class_name, config, defaults = _keras_serial.read_dataclass(
      value, name, "regularizer", _KERAS_CLASSES)
  # Keras reads None as the default (0.01 for L1 and L2, 0 for L1L2).
  config = {k: defaults[k] if v is None else v for k, v in config.items()}
  _keras_serial.check_real(config, list(config), name, class_name)
  return _KERAS_CLASSES[class_name](**{k: float(v) for k, v in config.items()})


def to_keras(value: RegularizerLike, name: str) -> Optional[dict]:
  """Our regularizer -> a serialized Keras regularizer (None stays None).

  Raises:
    ValueError: for a function: only names and :class:`L1`, :class:`L2` and
      :class:`L1L2` have a Keras config.
  """
  if value is None:
    return None
  if isinstance(value, str):
    value = get(value, name)
  for class_name, cls in _KERAS_CLASSES.items():
    if type(value) is cls:  # pylint: disable=unidiomatic-typecheck
      return _keras_serial.keras_object("keras.regularizers", class_name,
                                        dataclasses.asdict(value))
  raise ValueError(
      f"`{name}` (={value!r}) cannot be written as a Keras config: only"
      " None, regularizer names and sepconv_jax.regularizers.L1, L2 and L1L2"
      " can be"
  )


def regularization_loss(collections: Mapping[str, Any]) -> jax.Array:
  """Sums every penalty in a model's ``losses`` collection.

  Args:
    collections: the mutable collections returned by ``Module.apply``
      (whose ``"losses"`` entry is summed), or the ``losses`` collection
      itself. Penalties may sit at any nesting depth, as scalars or tuples.

  Returns:
    The total penalty, a scalar (0.0 when there is none).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import sepconv_jax
    >>> layer = sepconv_jax.SeparableConv2D(
    ...     4, 3, depthwise_initializer="ones", depthwise_regularizer="l1")
    >>> x = jnp.ones((1, 5, 5, 2))
    >>> params = layer.init(jax.random.key(0), x)["params"]
    >>> _, state = layer.apply({"params": params}, x, mutable=["losses"])
    >>> round(float(sepconv_jax.regularization_loss(state)), 6)  # 0.01*3*3*2
    0.18
  """
  if not isinstance(collections, Mapping):
    raise TypeError(
        f"`collections` (={collections!r}) must be a mapping, such as the"
        " collections returned by `Module.apply(..., mutable=['losses'])`"
    )
  losses = collections.get(LOSSES, collections)
  leaves = jax.tree_util.tree_leaves(losses)
  if not leaves:
    return jnp.zeros((), jnp.float32)
  return sum(jnp.sum(leaf) for leaf in leaves)
