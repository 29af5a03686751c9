"""Keras activation names, with Keras 3 numerics on JAX, and Keras configs."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Union

import jax
import jax.numpy as jnp

from sepconv_jax import _args

Activation = Callable[[jax.Array], jax.Array]

#: What an ``activation`` argument accepts.
ActivationLike = Optional[Union[str, Activation]]


def _linear(x):
  return x


def _soft_shrink(x, threshold=0.5):
  return jnp.where(x > threshold, x - threshold,
                   jnp.where(x < -threshold, x + threshold, 0.0))


def _hard_shrink(x, threshold=0.5):
  return jnp.where(jnp.abs(x) > threshold, x, 0.0)


def _mish(x):
  return x * jnp.tanh(jax.nn.softplus(x))


def _tanh_shrink(x):
  return x - jnp.tanh(x)


# Keras 3's `keras.activations` names (and aliases), each with the defaults
# of the Keras function: leaky_relu's slope is 0.2, gelu is the exact erf
# form, softmax and log_softmax act on the last axis whatever the data
# format.
_ACTIVATIONS: dict[str, Activation] = {
    "linear": _linear,
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, negative_slope=0.2),
    "sigmoid": jax.nn.sigmoid,
    "hard_sigmoid": jax.nn.hard_sigmoid,
    "log_sigmoid": jax.nn.log_sigmoid,
    "sparse_sigmoid": jax.nn.sparse_sigmoid,
    "tanh": jnp.tanh,
    "hard_tanh": jax.nn.hard_tanh,
    "tanh_shrink": _tanh_shrink,
    "softmax": lambda x: jax.nn.softmax(x, axis=-1),
    "log_softmax": lambda x: jax.nn.log_softmax(x, axis=-1),
    "elu": lambda x: jax.nn.elu(x, alpha=1.0),
    "celu": lambda x: jax.nn.celu(x, alpha=1.0),
    "selu": jax.nn.selu,
    "softplus": jax.nn.softplus,
    "sparse_plus": jax.nn.sparse_plus,
    "squareplus": lambda x: jax.nn.squareplus(x, b=4),
    "softsign": jax.nn.soft_sign,
    "soft_shrink": _soft_shrink,
    "hard_shrink": _hard_shrink,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "hard_silu": jax.nn.hard_silu,
    "hard_swish": jax.nn.hard_silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "mish": _mish,
    "exponential": jnp.exp,
}

_TABLE = {k: (lambda f=f: f) for k, f in _ACTIVATIONS.items()}

# Keras 3 names left out: `threshold` has no defaults, `sparsemax` no JAX
# counterpart, and `glu` halves the last axis, so a layer's output would no
# longer have `filters` channels.
_UNSUPPORTED = ("glu", "sparsemax", "threshold")

#: Every activation name that :func:`get` accepts.
NAMES: tuple[str, ...] = tuple(sorted(_ACTIVATIONS))


def get(identifier: ActivationLike,
        name: str = "activation") -> Optional[Activation]:
  """Resolves an activation: None, a callable, or one of :data:`NAMES`.

  Raises:
    ValueError: for an unknown name.
    TypeError: for anything else that is not callable.
  """
  return _args.lookup(identifier, _TABLE, name, "activation",
                      allow_none=True, unsupported=_UNSUPPORTED)


def from_keras(value: Any, name: str = "activation") -> ActivationLike:
  """A Keras config's activation (a name, or Keras's serialized function).

  Names pass through: the layer checks them.

  Raises:
    ValueError: for a custom activation, or a value that is no name.
  """
  if value is None or isinstance(value, str):
    return value
  if isinstance(value, Mapping):
    config = value.get("config")
    if (str(value.get("module", "")).startswith("keras.activations")
        and value.get("registered_name") is None and isinstance(config, str)):
      return config
    raise ValueError(
        f"`{name}` (={value!r}) is a custom Keras activation, which"
        " sepconv_jax cannot honour; pass an equivalent callable to the"
        " module yourself"
    )
  raise ValueError(
      f"`{name}` (={value!r}) must be None or a Keras activation name")


def to_keras(value: ActivationLike, name: str = "activation") -> str:
  """Our activation -> its Keras name (None is Keras's ``"linear"``).

  Raises:
    ValueError: for a function that none of :data:`NAMES` stands for.
  """
  if value is None:
    return "linear"
  if isinstance(value, str):
    return value
  for activation_name, fn in _ACTIVATIONS.items():
    if value is fn:
      return activation_name
  raise ValueError(
      f"`{name}` (={value!r}) cannot be written as a Keras config: only"
      " None, activation names and the functions they stand for (such as"
      " jax.nn.relu) can be"
  )
