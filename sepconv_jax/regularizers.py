"""Keras's weight regularizers, configurable: ``regularizers.L2(1e-4)``."""

from sepconv_jax._regularizers import L1
from sepconv_jax._regularizers import L1L2
from sepconv_jax._regularizers import L2
from sepconv_jax._regularizers import NAMES

__all__ = ("L1", "L1L2", "L2", "NAMES")
