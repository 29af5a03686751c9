"""The layers as Flax NNX modules, following `flax.nnx.Conv` conventions.

Each takes ``in_channels`` first and ``rngs`` last, creates its params
eagerly with the linen layer's (and Keras's) names and shapes, and sows its
regularization penalties as :class:`Losses`.
"""

from sepconv_jax._nnx import DepthwiseConv1D
from sepconv_jax._nnx import DepthwiseConv2D
from sepconv_jax._nnx import Losses
from sepconv_jax._nnx import SeparableConv1D
from sepconv_jax._nnx import SeparableConv2D
from sepconv_jax._nnx import SeparableConv3D
from sepconv_jax._keras_saved import load_keras_nnx_layers as load_keras_layers

__all__ = (
    "DepthwiseConv1D",
    "DepthwiseConv2D",
    "Losses",
    "SeparableConv1D",
    "SeparableConv2D",
    "SeparableConv3D",
    "load_keras_layers",
)
