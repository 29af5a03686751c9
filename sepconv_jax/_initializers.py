"""Keras initializers: names, Keras's defaults and fans, and Keras configs.

A layer's ``*_initializer`` is a name (``"glorot_uniform"``, or Keras's
class name ``"GlorotUniform"``) or a ``(key, shape, dtype)`` function.
:func:`from_keras` and :func:`to_keras` translate to and from the serialized
initializers of a Keras config.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from flax.typing import Initializer

from sepconv_jax import _args
from sepconv_jax import _keras_serial

#: What an ``*_initializer`` argument accepts.
InitializerLike = Union[str, Initializer]

# The standard deviation of a unit normal truncated to [-2, 2]; Keras and
# JAX divide by it so that truncated samples keep the asked-for variance.
_TRUNCATED_STD = 0.87962566103423978


def compute_fans(shape: Sequence[int],
                 input_axes: Optional[Sequence[int]] = None,
                 output_axes: Optional[Sequence[int]] = None
                 ) -> tuple[int, int]:
  """Fans as Keras computes them: the receptive field multiplies both.

  With both `input_axes` and `output_axes` given, each fan is instead the
  product of the sizes along those axes, as in Keras 3's `compute_fans`.
  """
  shape = tuple(shape)
  if input_axes is not None and output_axes is not None:
    return (math.prod(shape[a] for a in input_axes),
            math.prod(shape[a] for a in output_axes))
  if not shape:
    return 1, 1
  if len(shape) == 1:
    return shape[0], shape[0]
  if len(shape) == 2:
    return shape[0], shape[1]
  receptive_field = math.prod(shape[:-2])
  return shape[-2] * receptive_field, shape[-1] * receptive_field


# Each factory below takes the arguments of its Keras class's config (but
# the seed), with Keras's defaults: the one place those defaults live.


def variance_scaling(scale: float = 1.0, mode: str = "fan_in",
                     distribution: str = "truncated_normal",
                     input_axes: Optional[Sequence[int]] = None,
                     output_axes: Optional[Sequence[int]] = None
                     ) -> Initializer:
  """Keras's `VarianceScaling` with fans from :func:`compute_fans`."""

  def init(key, shape, dtype=jnp.float32):
    fan_in, fan_out = compute_fans(shape, input_axes, output_axes)
    fan = {"fan_in": fan_in, "fan_out": fan_out,
           "fan_avg": (fan_in + fan_out) / 2.0}[mode]
    variance = scale / max(1.0, fan)
    if distribution == "uniform":
      limit = math.sqrt(3.0 * variance)
      return jax.random.uniform(key, shape, dtype, -limit, limit)
    if distribution == "truncated_normal":
      stddev = math.sqrt(variance) / _TRUNCATED_STD
      return stddev * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)
    return math.sqrt(variance) * jax.random.normal(key, shape, dtype)

  return init


def random_normal(mean: float = 0.0, stddev: float = 0.05) -> Initializer:
  def init(key, shape, dtype=jnp.float32):
    return mean + stddev * jax.random.normal(key, shape, dtype)
  return init


def random_uniform(minval: float = -0.05, maxval: float = 0.05) -> Initializer:
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, minval, maxval)
  return init


def truncated_normal(mean: float = 0.0, stddev: float = 0.05) -> Initializer:
  def init(key, shape, dtype=jnp.float32):
    return mean + stddev * jax.random.truncated_normal(
        key, -2.0, 2.0, shape, dtype)
  return init


def orthogonal(gain: float = 1.0) -> Initializer:
  """Keras's `Orthogonal`: columns (or rows, if fewer) are orthonormal."""

  def init(key, shape, dtype=jnp.float32):
    if len(shape) < 2:
      raise ValueError(
          f"the orthogonal initializer needs a shape of rank >= 2, got"
          f" shape={tuple(shape)}"
      )
    rows, cols = math.prod(shape[:-1]), shape[-1]
    a = jax.random.normal(key, (max(rows, cols), min(rows, cols)), jnp.float32)
    q, r = jnp.linalg.qr(a)
    q = q * jnp.sign(jnp.diagonal(r))
    if rows < cols:
      q = q.T
    return (gain * q.reshape(shape)).astype(dtype)

  return init


def constant(value: float = 0.0) -> Initializer:
  """Keras's `Constant(value)`: every entry is `value`."""
  def init(key, shape, dtype=jnp.float32):
    del key
    return jnp.full(shape, value, dtype)
  return init


# Keras's variance-scaling presets: scale, mode, distribution.
_PRESETS = {
    "glorot_uniform": (1.0, "fan_avg", "uniform"),
    "glorot_normal": (1.0, "fan_avg", "truncated_normal"),
    "he_uniform": (2.0, "fan_in", "uniform"),
    "he_normal": (2.0, "fan_in", "truncated_normal"),
    "lecun_uniform": (1.0, "fan_in", "uniform"),
    "lecun_normal": (1.0, "fan_in", "truncated_normal"),
}

# Our names, each the snake case of its Keras class.
_FACTORIES: dict[str, Callable[..., Initializer]] = {
    **{name: functools.partial(variance_scaling, *preset)
       for name, preset in _PRESETS.items()},
    "zeros": functools.partial(constant, 0.0),
    "ones": functools.partial(constant, 1.0),
    "random_normal": random_normal,
    "random_uniform": random_uniform,
    "truncated_normal": truncated_normal,
    "orthogonal": orthogonal,
}

# What `get` accepts beyond our names: Keras's class names and aliases.
_ALIASES = {
    **{_keras_serial.camel(name): name for name in _FACTORIES},
    "zero": "zeros", "one": "ones", "normal": "random_normal",
    "uniform": "random_uniform",
}

_TABLE = {**_FACTORIES,
          **{alias: _FACTORIES[name] for alias, name in _ALIASES.items()}}

#: Every initializer name that :func:`get` accepts.
NAMES: tuple[str, ...] = tuple(sorted(_TABLE))


def get(identifier: Any, name: str) -> Initializer:
  """Resolves an initializer: a Keras name or a ``(key, shape, dtype)`` fn.

  Raises:
    ValueError: for an unknown name.
    TypeError: for anything else that is not callable.
  """
  return _args.lookup(identifier, _TABLE, name, "initializer",
                      allow_none=False)


# --------------------------------------------------------------------------
# Keras configs.

# Each Keras class we honour, with its factory.
_KERAS_CLASSES: dict[str, Callable[..., Initializer]] = {
    **{_keras_serial.camel(name): f for name, f in _FACTORIES.items()},
    "Constant": constant,
    "VarianceScaling": variance_scaling,
}
# Keras's constant initializers take no seed; the random ones do.
_UNSEEDED = frozenset(("Zeros", "Ones", "Constant"))
# More names Keras's deserializer accepts.
_KERAS_ALIASES = {"normal": "RandomNormal", "uniform": "RandomUniform",
                  "one": "Ones", "zero": "Zeros",
                  "OrthogonalInitializer": "Orthogonal"}
# Keras initializers that cannot apply to these weights or that we lack.
_IDENTITY = ("it only initializes 2-D matrices, and the layers' weights are"
             " kernels of rank 3 or more and a 1-D bias")
_STFT = "sepconv_jax has no STFT initializer"
_UNSUPPORTED = {"Identity": _IDENTITY, "IdentityInitializer": _IDENTITY,
                "identity": _IDENTITY, "STFT": _STFT,
                "STFTInitializer": _STFT, "stft": _STFT}


def _keras_defaults(class_name: str) -> dict[str, Any]:
  """The config of a Keras class's default instance, from its factory."""
  parameters = inspect.signature(_KERAS_CLASSES[class_name]).parameters
  seed = {} if class_name in _UNSEEDED else {"seed": None}
  return {**seed, **{p.name: p.default for p in parameters.values()}}


@dataclasses.dataclass(frozen=True)
class KerasInitializer:
  """A Keras initializer carried across with its whole config.

  :func:`from_keras` makes one for any initializer whose config is not the
  plain default of a name that sepconv_jax knows (a non-default
  ``stddev``, a ``seed``, ...). It is a ``(key, shape, dtype)`` initializer
  drawing from Keras's distribution, and :func:`to_keras` writes its config
  back unchanged. The ``seed`` is kept for that round trip only: the draws
  come from the key that ``init`` is given.

  Attributes:
    class_name: the Keras class, e.g. ``"RandomNormal"``.
    config: the class's config as sorted ``(key, value)`` pairs (lists
      become tuples, so that the object is hashable).
  """

  class_name: str
  config: tuple[tuple[str, Any], ...]

  def __call__(self, key: jax.Array, shape: Sequence[int],
               dtype: Any = jnp.float32) -> jax.Array:
    arguments = {k: v for k, v in self.config if k != "seed"}
    return _KERAS_CLASSES[self.class_name](**arguments)(key, shape, dtype)

  def get_config(self) -> dict[str, Any]:
    """The Keras config: ``{key: value}`` with lists, as Keras writes it."""
    return {k: _keras_serial.jsonable(v) for k, v in self.config}


def _check_variance_scaling(config: dict, name: str) -> None:
  """Validates a VarianceScaling config; "normal" becomes its meaning."""
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


def from_keras(value: Any, name: str) -> InitializerLike:
  """A Keras config's initializer (a name or a serialized dict) -> ours.

  Args:
    value: the config's entry.
    name: the argument, e.g. ``"depthwise_initializer"``, for messages.

  Returns:
    Our name when `value` is the default config of a class we have a name
    for, else a :class:`KerasInitializer`.

  Raises:
    ValueError: for a class that cannot be honoured, unknown config keys,
      and config values that are not what Keras accepts.
  """
  if isinstance(value, str):
    value = {"class_name": value, "config": {}}  # As `initializers.get` does.
  if not isinstance(value, Mapping):
    raise ValueError(
        f"`{name}` (={value!r}) must be a serialized Keras initializer (a"
        " dict) or an initializer name"
    )
  class_name, config = _keras_serial.read(
      value, name, "initializer", _KERAS_CLASSES, _KERAS_ALIASES,
      _UNSUPPORTED)
  defaults = _keras_defaults(class_name)
  config = _keras_serial.with_defaults(config, defaults, name, class_name)
  _keras_serial.check_real(
      config, [k for k, v in defaults.items() if _keras_serial.is_real(v)],
      name, class_name)
  if not (config.get("seed") is None or _args.is_int(config["seed"])):
    raise ValueError(
        f"`{name}` ({class_name}) config `seed` (={config['seed']!r}) must be"
        " an int or None; a SeedGenerator seed cannot be carried across"
    )
  for key in ("input_axes", "output_axes"):
    if key in config:
      config[key] = _keras_serial.int_axes(config[key], name, class_name, key,
                                           allow_none=True)
  if class_name == "VarianceScaling":
    _check_variance_scaling(config, name)
  ours = _keras_serial.snake(class_name)
  if ours in _FACTORIES and config == defaults:
    return ours
  return KerasInitializer(class_name, tuple(sorted(config.items())))


def to_keras(value: Any, name: str) -> dict:
  """Our initializer -> a serialized Keras initializer.

  Raises:
    ValueError: for a function: only names and :class:`KerasInitializer`
      objects have a Keras config.
  """
  if isinstance(value, KerasInitializer):
    return _keras_serial.keras_object("keras.initializers", value.class_name,
                                      value.get_config())
  if isinstance(value, str) and value in _TABLE:
    class_name = _keras_serial.camel(_ALIASES.get(value, value))
    return _keras_serial.keras_object("keras.initializers", class_name,
                                      _keras_defaults(class_name))
  raise ValueError(
      f"`{name}` (={value!r}) cannot be written as a Keras config: only"
      " initializer names and the KerasInitializer objects that"
      " `from_keras_config` makes can be; a plain function has no Keras"
      " config"
  )
