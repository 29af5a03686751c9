"""Keras-exact depthwise-separable convolutions for JAX and Flax."""

from sepconv_jax import constraints
from sepconv_jax import nnx
from sepconv_jax import regularizers
from sepconv_jax._args import PADDING_MODES
from sepconv_jax._keras_saved import load_keras_layers
from sepconv_jax._keras_weights import params_from_keras
from sepconv_jax._keras_weights import params_to_keras
from sepconv_jax._linen import DepthwiseConv1D
from sepconv_jax._linen import DepthwiseConv2D
from sepconv_jax._linen import SeparableConv1D
from sepconv_jax._linen import SeparableConv2D
from sepconv_jax._linen import SeparableConv3D
from sepconv_jax._linen import SeparableConvolution1D
from sepconv_jax._linen import SeparableConvolution2D
from sepconv_jax._ops import IMPLEMENTATIONS
from sepconv_jax._ops import depthwise_conv
from sepconv_jax._ops import depthwise_conv2d
from sepconv_jax._ops import separable_conv
from sepconv_jax._ops import separable_conv2d
from sepconv_jax._optax import apply_constraints
from sepconv_jax._optax import collect_constraints
from sepconv_jax._regularizers import regularization_loss
from sepconv_jax._warnings import PallasInterpretWarning

__version__ = "0.1.0"

__all__ = (
    "DepthwiseConv1D",
    "DepthwiseConv2D",
    "IMPLEMENTATIONS",
    "PADDING_MODES",
    "PallasInterpretWarning",
    "SeparableConv1D",
    "SeparableConv2D",
    "SeparableConv3D",
    "SeparableConvolution1D",
    "SeparableConvolution2D",
    "apply_constraints",
    "collect_constraints",
    "constraints",
    "depthwise_conv",
    "depthwise_conv2d",
    "load_keras_layers",
    "nnx",
    "params_from_keras",
    "params_to_keras",
    "regularization_loss",
    "regularizers",
    "separable_conv",
    "separable_conv2d",
)
