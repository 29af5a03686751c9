"""Keras's weight constraints, configurable: ``constraints.MaxNorm(3.0)``."""

from sepconv_jax._constraints import NAMES
from sepconv_jax._constraints import MaxNorm
from sepconv_jax._constraints import MinMaxNorm
from sepconv_jax._constraints import NonNeg
from sepconv_jax._constraints import UnitNorm

__all__ = ("MaxNorm", "MinMaxNorm", "NAMES", "NonNeg", "UnitNorm")
