"""Keras initializer names, with Keras's defaults and fan arithmetic."""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from sepconv_jax import _args

Initializer = Callable[..., jax.Array]

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


def variance_scaling(scale: float, mode: str, distribution: str,
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


def _constant(value: float) -> Initializer:
  def init(key, shape, dtype=jnp.float32):
    del key
    return jnp.full(shape, value, dtype)
  return init


def constant(value: float = 0.0) -> Initializer:
  """Keras's `Constant(value)`: every entry is `value`."""
  return _constant(value)


_FACTORIES: dict[str, Callable[[], Initializer]] = {
    "glorot_uniform": lambda: variance_scaling(1.0, "fan_avg", "uniform"),
    "glorot_normal": lambda: variance_scaling(1.0, "fan_avg",
                                              "truncated_normal"),
    "he_uniform": lambda: variance_scaling(2.0, "fan_in", "uniform"),
    "he_normal": lambda: variance_scaling(2.0, "fan_in", "truncated_normal"),
    "lecun_uniform": lambda: variance_scaling(1.0, "fan_in", "uniform"),
    "lecun_normal": lambda: variance_scaling(1.0, "fan_in",
                                             "truncated_normal"),
    "zeros": lambda: _constant(0.0),
    "ones": lambda: _constant(1.0),
    "random_normal": random_normal,
    "random_uniform": random_uniform,
    "truncated_normal": truncated_normal,
    "orthogonal": orthogonal,
}

# Keras also accepts its class names and a few aliases.
_ALIASES = {
    "GlorotUniform": "glorot_uniform", "GlorotNormal": "glorot_normal",
    "HeUniform": "he_uniform", "HeNormal": "he_normal",
    "LecunUniform": "lecun_uniform", "LecunNormal": "lecun_normal",
    "Zeros": "zeros", "zero": "zeros", "Ones": "ones", "one": "ones",
    "RandomNormal": "random_normal", "normal": "random_normal",
    "RandomUniform": "random_uniform", "uniform": "random_uniform",
    "TruncatedNormal": "truncated_normal", "Orthogonal": "orthogonal",
}

_TABLE = {**_FACTORIES, **{a: _FACTORIES[k] for a, k in _ALIASES.items()}}

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
