"""Every depthwise and separable layer of real Keras applications, ported.

The architectures are Keras's own (``keras.applications``, built with
``weights=None``: nothing is downloaded, at the smallest input each allows):

* MobileNetV3Small: DepthwiseConv2D, 3x3 and 5x5, strides 1 and 2;
* EfficientNetB0: DepthwiseConv2D whose initializer is a VarianceScaling
  config (scale 2, fan_out), which comes across as a ``KerasInitializer``;
* Xception: SeparableConv2D, entry, middle and exit flows.

For every such layer: its config is read by ``from_keras_config`` and
written back by ``to_keras_config`` equal to Keras's (and Keras rebuilds
the layer from it); its weights come across from ``get_weights()`` and from
the saved ``.keras`` archive and ``.weights.h5`` file, which
``load_keras_layers`` reads; and the loaded module reproduces the Keras
layer on a random input of the layer's input shape, within 1e-4, both
computed under ``jax.default_matmul_precision("highest")``. MobileNetV3's
layers are also ported to NNX.

Speed: Keras's JAX initializers compile one XLA program per weight shape
(about a second each on a small CPU), so the models are built with numpy
draws of the same distributions instead. The values do not matter here:
every comparison runs both sides on the same weights.
"""

from __future__ import annotations

import contextlib
import functools
import json

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest
from flax import nnx
from keras.src.backend.jax import random as keras_jax_random

import sepconv_jax

TOL = dict(rtol=1e-4, atol=1e-4)
PORTED = ("DepthwiseConv2D", "SeparableConv2D")
LINEN = {"DepthwiseConv2D": sepconv_jax.DepthwiseConv2D,
         "SeparableConv2D": sepconv_jax.SeparableConv2D}
NNX = {"DepthwiseConv2D": sepconv_jax.nnx.DepthwiseConv2D,
       "SeparableConv2D": sepconv_jax.nnx.SeparableConv2D}

_APPS = keras.applications
APPLICATIONS = {
    "MobileNetV3Small": lambda: _APPS.MobileNetV3Small(
        input_shape=(32, 32, 3), weights=None, include_top=False),
    "EfficientNetB0": lambda: _APPS.EfficientNetB0(
        input_shape=(32, 32, 3), weights=None, include_top=False),
    "Xception": lambda: _APPS.Xception(
        input_shape=(71, 71, 3), weights=None, include_top=False),
}


@contextlib.contextmanager
def numpy_draws(seed=0):
  """Within it, Keras's JAX-backend random functions draw with numpy."""
  rng = np.random.default_rng(seed)

  def cast(values, dtype):
    return np.asarray(values, dtype=dtype or "float32")

  def normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
    del seed
    return cast(rng.normal(mean, stddev, shape), dtype)

  def uniform(shape, minval=0.0, maxval=1.0, dtype=None, seed=None):
    del seed
    return cast(rng.uniform(minval, maxval, shape), dtype)

  def truncated_normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
    del seed
    values = rng.normal(0.0, 1.0, shape)
    while np.any(np.abs(values) > 2):
      redraw = np.abs(values) > 2
      values[redraw] = rng.normal(0.0, 1.0, redraw.sum())
    return cast(mean + stddev * values, dtype)

  with pytest.MonkeyPatch.context() as patch:
    for fn in (normal, uniform, truncated_normal):
      patch.setattr(keras_jax_random, fn.__name__, fn)
    yield


def _json(value):
  return json.loads(json.dumps(value))


class App:
  """A built and saved application, its ported layers and Keras's outputs."""

  def __init__(self, name, folder):
    with numpy_draws():
      self.model = APPLICATIONS[name]()
    self.layers = [layer for layer in self.model.layers
                   if type(layer).__name__ in PORTED]
    self.model.save(folder / f"{name}.keras")
    self.model.save_weights(folder / f"{name}.weights.h5")
    self.from_archive = sepconv_jax.load_keras_layers(folder / f"{name}.keras")
    self.from_weights = sepconv_jax.load_keras_layers(
        folder / f"{name}.weights.h5", self.model.to_json())
    self._outputs = {}

  def io(self, layer):
    """A random input of the layer's input shape, and Keras's output."""
    if layer.name not in self._outputs:
      shape = (1,) + tuple(layer.input.shape[1:])
      seed = sum(map(ord, layer.name))
      x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
      with jax.default_matmul_precision("highest"):
        self._outputs[layer.name] = x, np.asarray(layer(x))
    return self._outputs[layer.name]


# EfficientNetB0's 16 depthwise layers (5x5 and 3x3, strides 1 and 2) repeat
# what MobileNetV3Small's 11 cover: the full profile.
@pytest.fixture(scope="module", params=[
    pytest.param(name, marks=pytest.mark.full("MobileNetV3Small's kind"))
    if name == "EfficientNetB0" else name for name in APPLICATIONS])
def app(request, tmp_path_factory):
  return App(request.param, tmp_path_factory.mktemp(request.param))


@functools.partial(jax.jit, static_argnums=0)
def _apply(module, variables, x):
  return module.apply(variables, x)


def test_every_layer_is_found_in_both_files(app):
  names = [layer.name for layer in app.layers]
  assert len(names) >= 11
  assert list(app.from_archive) == names
  assert list(app.from_weights) == names


def test_configs_round_trip(app):
  for layer in app.layers:
    config = layer.get_config()
    module = LINEN[type(layer).__name__].from_keras_config(config)
    back = module.to_keras_config()
    assert _json(back) == _json(config), layer.name
    assert _json(type(layer).from_config(back).get_config()) == _json(config)
    for loaded in (app.from_archive, app.from_weights):
      assert loaded[layer.name][0] == module, layer.name


def test_weights_come_across_unchanged(app):
  for layer in app.layers:
    weights = layer.get_weights()
    module, variables = app.from_archive[layer.name]
    params = sepconv_jax.params_from_keras(weights, module=module)
    for loaded in (app.from_archive, app.from_weights):
      got = loaded[layer.name][1]["params"]
      assert list(got) == list(params)
      for name in params:
        np.testing.assert_array_equal(got[name], params[name])
    back = sepconv_jax.params_to_keras(variables, module=module)
    for ours, theirs in zip(back, weights, strict=True):
      np.testing.assert_array_equal(ours, theirs)


def test_loaded_layers_reproduce_keras(app):
  for layer in app.layers:
    module, variables = app.from_archive[layer.name]
    x, expected = app.io(layer)
    # Unnamed, equal modules share one compiled program.
    with jax.default_matmul_precision("highest"):
      got = _apply(module.clone(name=None), variables, jnp.asarray(x))
    assert got.shape == expected.shape, layer.name
    np.testing.assert_allclose(np.asarray(got), expected, **TOL,
                               err_msg=layer.name)


@functools.partial(jax.jit, static_argnums=0)
def _nnx_apply(graphdef, state, x):
  return nnx.merge(graphdef, state)(x)


@pytest.mark.parametrize("app", ["MobileNetV3Small"], indirect=True)
def test_nnx_port_reproduces_keras(app):
  for layer in app.layers:
    x, expected = app.io(layer)
    config = layer.get_config()
    # Abstract params (`nnx.eval_shape`): Keras's weights replace them, and
    # drawing them would compile an initializer per shape.
    ported = nnx.eval_shape(lambda: NNX[type(layer).__name__].from_keras_config(
        config, in_channels=x.shape[-1], rngs=nnx.Rngs(0)))
    assert ported.name == layer.name
    assert _json(ported.to_keras_config()) == _json(config)
    params = sepconv_jax.params_from_keras(layer.get_weights(),
                                           module=ported)
    for name, value in params.items():
      getattr(ported, name).set_value(value)
    ported.name = None  # Unnamed, equal layers share one compiled program.
    with jax.default_matmul_precision("highest"):
      got = _nnx_apply(*nnx.split(ported), jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got), expected, **TOL,
                               err_msg=layer.name)
