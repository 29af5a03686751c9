"""Keras interop of every layer with a Keras peer, in linen and NNX alike.

SeparableConv1D, SeparableConv2D, DepthwiseConv1D and DepthwiseConv2D, each
against the real Keras layer (Keras 3 on JAX is the oracle): the config
round-trips through ``from_keras_config``/``to_keras_config`` on both Flax
APIs, the weights through ``params_from_keras``/``params_to_keras`` (with
and without ``module=``), the ported layer computes what Keras computes
(penalties included), and ``load_keras_layers`` reads all four from one
saved model, Keras's aliases included.
"""

from __future__ import annotations

import json
import re
import zipfile

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest
from flax import nnx

import sepconv_jax
from test_keras_applications import numpy_draws  # Fast Keras layer builds.
import tolerances  # noqa: E402  (tests/, as above)

L = keras.layers
I = keras.initializers
R = keras.regularizers
C = keras.constraints
TOL = dict(rtol=1e-5, atol=1e-5)

LINEN = {"SeparableConv1D": sepconv_jax.SeparableConv1D,
         "SeparableConv2D": sepconv_jax.SeparableConv2D,
         "DepthwiseConv1D": sepconv_jax.DepthwiseConv1D,
         "DepthwiseConv2D": sepconv_jax.DepthwiseConv2D}
NNX = {"SeparableConv1D": sepconv_jax.nnx.SeparableConv1D,
       "SeparableConv2D": sepconv_jax.nnx.SeparableConv2D,
       "DepthwiseConv1D": sepconv_jax.nnx.DepthwiseConv1D,
       "DepthwiseConv2D": sepconv_jax.nnx.DepthwiseConv2D}

# (Keras class, its arguments, input shape).
CASES = {
    "sep1d": ("SeparableConv1D", dict(
        filters=5, kernel_size=3, strides=2, padding="same",
        depth_multiplier=2, activation="relu",
        depthwise_regularizer=R.L2(1e-3), bias_regularizer=R.L1(1e-2),
        pointwise_initializer=I.HeNormal(seed=1),
        bias_constraint=C.NonNeg()), (2, 11, 4)),
    "sep1d_first": ("SeparableConv1D", dict(
        filters=3, kernel_size=2, data_format="channels_first",
        dilation_rate=2, use_bias=False, dtype="mixed_bfloat16"), (2, 4, 9)),
    "dw1d": ("DepthwiseConv1D", dict(
        kernel_size=3, depth_multiplier=2, padding="same", strides=2,
        activation="tanh", bias_initializer=I.RandomNormal(0.5, 0.1),
        activity_regularizer=R.L2(1e-3),
        depthwise_constraint=C.MaxNorm(1.5, axis=[0, 1])), (2, 10, 3)),
    "dw1d_first": ("DepthwiseConv1D", dict(
        kernel_size=4, data_format="channels_first", dilation_rate=2,
        use_bias=False, depthwise_initializer="lecun_uniform"), (2, 3, 12)),
    "dw2d": ("DepthwiseConv2D", dict(
        kernel_size=(3, 2), strides=(2, 1), padding="same", depth_multiplier=3,
        depthwise_initializer=I.VarianceScaling(2.0, "fan_out",
                                                "truncated_normal"),
        depthwise_regularizer=R.L1L2(1e-3, 1e-4),
        activity_regularizer=R.L1(1e-3), bias_constraint=C.UnitNorm()),
        (2, 7, 8, 2)),
}


def _json(value):
  return json.loads(json.dumps(value))


def _random(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _assert_layer_close(got, expected, keras_layer, x, kwargs):
  """float32: 1e-5 (float32 sums of a few dozen terms, well inside);
  bfloat16: `tolerances.bfloat16_layer_bound` of Keras's magnitude."""
  if kwargs.get("dtype") is None:
    np.testing.assert_allclose(got, expected, **TOL)
  else:
    tolerances.assert_within(np.float32(got), np.float32(expected),
                             tolerances.keras_magnitude(keras_layer, x),
                             tolerances.bfloat16_layer_bound(),
                             what=str(kwargs["dtype"]))


def _abstract(make, *args, **kwargs):
  """An NNX layer with abstract params (no draws): `make(..., rngs=...)`."""
  return nnx.eval_shape(lambda: make(*args, **kwargs, rngs=nnx.Rngs(0)))


def _channels(config, shape):
  return shape[1] if config["data_format"] == "channels_first" else shape[-1]


@pytest.mark.parametrize("case", list(CASES))
def test_ported_layer_matches_keras(case):
  class_name, kwargs, shape = CASES[case]
  keras_layer = getattr(L, class_name)(**kwargs, name=case)
  x = _random(shape, seed=len(case))
  with numpy_draws():
    keras_layer.build(x.shape)
  weights = [w + 0.1 * _random(w.shape, i)
             for i, w in enumerate(keras_layer.get_weights())]
  keras_layer.set_weights(weights)
  expected = np.asarray(keras_layer(x))
  config = keras_layer.get_config()
  channels = _channels(config, shape)

  # linen: the config both ways, the weights both ways, the numbers.
  module = LINEN[class_name].from_keras_config(config)
  assert module.name == case
  assert _json(module.to_keras_config()) == _json(config)
  assert _json(getattr(L, class_name).from_config(
      module.to_keras_config()).get_config()) == _json(config)
  params = sepconv_jax.params_from_keras(weights, module=module)
  inferred = sepconv_jax.params_from_keras(weights)
  assert sorted(inferred) == sorted(params) == sorted(jax.tree.map(
      jnp.shape, jax.eval_shape(module.init, jax.random.key(0), x)["params"]))
  for ours, theirs in zip(sepconv_jax.params_to_keras(params), weights,
                          strict=True):
    np.testing.assert_array_equal(ours, theirs)
  got, state = module.apply({"params": params}, x, mutable=["losses"])
  assert got.dtype == expected.dtype
  _assert_layer_close(got, expected, keras_layer, x, kwargs)
  keras_losses = sum(float(v) for v in keras_layer.losses)
  np.testing.assert_allclose(float(sepconv_jax.regularization_loss(state)),
                             keras_losses, rtol=1e-5, atol=1e-8)
  assert module.compute_output_shape(x.shape) == tuple(
      keras_layer.compute_output_shape(x.shape))

  # NNX: the same, with its own constructor arguments (its params
  # abstract until Keras's replace them).
  layer = _abstract(NNX[class_name].from_keras_config, config,
                    in_channels=channels)
  assert layer.name == case
  assert _json(layer.to_keras_config()) == _json(config)
  for name, value in sepconv_jax.params_from_keras(weights,
                                                   module=layer).items():
    getattr(layer, name).set_value(value)
  y, losses = nnx.capture(layer, sepconv_jax.nnx.Losses)(x)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(got))
  np.testing.assert_allclose(float(sepconv_jax.regularization_loss(losses)),
                             keras_losses, rtol=1e-5, atol=1e-8)
  back = sepconv_jax.params_to_keras(
      {n: v[...] for n, v in nnx.to_flat_state(nnx.state(layer, nnx.Param))
       for n in [n[-1]]}, module=layer)
  for ours, theirs in zip(back, weights, strict=True):
    np.testing.assert_array_equal(ours, theirs)


def test_keras_config_keys_are_keras_own():
  """Each layer writes exactly the keys of its Keras class's get_config()."""
  for class_name, cls in LINEN.items():
    kwargs = dict(kernel_size=3, name="x")
    if class_name.startswith("Separable"):
      kwargs["filters"] = 2
    keras_keys = set(getattr(L, class_name)(**kwargs).get_config())
    assert set(cls(**kwargs).to_keras_config()) == keras_keys, class_name
    layer = _abstract(NNX[class_name], 2, **kwargs)
    assert set(layer.to_keras_config()) == keras_keys, class_name


def test_keras_peers_and_the_layer_without_one():
  assert not hasattr(sepconv_jax.SeparableConv3D, "from_keras_config")
  assert not hasattr(sepconv_jax.SeparableConv3D, "to_keras_config")
  assert not hasattr(sepconv_jax.nnx.SeparableConv3D, "from_keras_config")
  for class_name in LINEN:
    assert LINEN[class_name].FAMILY is NNX[class_name].FAMILY
    assert LINEN[class_name].RANK == NNX[class_name].RANK
    family = LINEN[class_name].FAMILY
    assert family.keras_classes[LINEN[class_name].RANK][0] == class_name


def _model():
  """All four classes, one under an alias, and a nested Sequential."""
  inp = keras.Input((12, 4))
  x = L.SeparableConv1D(6, 3, padding="same", name="s1")(inp)
  x = L.DepthwiseConv1D(3, depth_multiplier=2, name="d1")(x)
  x = L.Reshape((2, 5, 12))(x)
  inner = keras.Sequential([keras.Input((2, 5, 12)),
                            L.DepthwiseConv2D(2, padding="same", name="d2"),
                            L.DepthwiseConv2D(1, use_bias=False, name="d3")],
                           name="inner")
  x = inner(x)
  x = L.SeparableConvolution2D(3, (1, 2), name="s2")(x)
  return keras.Model(inp, x)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  with numpy_draws():
    model = _model()
  model.set_weights([w + 0.1 * _random(w.shape, i)
                     for i, w in enumerate(model.get_weights())])
  folder = tmp_path_factory.mktemp("families")
  model.save(folder / "m.keras")
  model.save_weights(folder / "m.weights.h5")
  return model, folder


def test_load_reads_every_family(saved):
  model, folder = saved
  paths = ["s1", "d1", "inner/d2", "inner/d3", "s2"]
  from_weights = sepconv_jax.load_keras_layers(folder / "m.weights.h5",
                                               model.to_json())
  for loaded in (sepconv_jax.load_keras_layers(folder / "m.keras"),
                 from_weights):
    assert list(loaded) == paths
    for path, (module, variables) in loaded.items():
      layer = model
      for part in path.split("/"):
        layer = layer.get_layer(part)
      assert type(module) is LINEN[type(layer).__name__]
      assert _json(module.to_keras_config()) == _json(layer.get_config())
      for ours, theirs in zip(sepconv_jax.params_to_keras(variables),
                              layer.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
      shape = (2,) + tuple(layer.input.shape[1:])
      x = _random(shape, seed=len(path))
      np.testing.assert_allclose(np.asarray(module.apply(variables, x)),
                                 np.asarray(layer(x)), **TOL)


def test_load_reads_an_alias_as_keras_does(saved, tmp_path):
  """A config naming Keras's alias class (which `keras.saving.load_model`
  reads): Keras stores the weights under the class's own name, and there
  the loader looks for them."""
  model, folder = saved
  with zipfile.ZipFile(folder / "m.keras") as z:
    files = {n: z.read(n) for n in z.namelist()}
  config = json.loads(files["config.json"])
  for entry in config["config"]["layers"]:
    entry["class_name"] = {"SeparableConv1D": "SeparableConvolution1D"}.get(
        entry["class_name"], entry["class_name"])
  files["config.json"] = json.dumps(config).encode()
  with zipfile.ZipFile(tmp_path / "alias.keras", "w") as z:
    for n, data in files.items():
      z.writestr(n, data)
  loaded = sepconv_jax.load_keras_layers(tmp_path / "alias.keras")
  assert type(loaded["s1"][0]) is sepconv_jax.SeparableConv1D
  for ours, theirs in zip(sepconv_jax.params_to_keras(loaded["s1"][1]),
                          model.get_layer("s1").get_weights(), strict=True):
    np.testing.assert_array_equal(ours, theirs)


def test_load_names_a_depthwise_layer_inside_a_wrapper(tmp_path):
  wrapped = keras.Sequential([
      keras.Input((3, 6, 6, 2)),
      L.TimeDistributed(L.DepthwiseConv2D(3, name="inner"), name="td")])
  wrapped.save(tmp_path / "td.keras")
  with pytest.raises(ValueError, match=(
      r"layer 'td' .* is a 'TimeDistributed' holding a DepthwiseConv2D;"
      r" load_keras_layers reads the SeparableConv1D, SeparableConv2D,"
      r" DepthwiseConv1D, DepthwiseConv2D layers")):
    sepconv_jax.load_keras_layers(tmp_path / "td.keras")


@pytest.mark.parametrize("make, error, match", [
    (lambda: sepconv_jax.DepthwiseConv1D(3, padding="causal"), ValueError,
     "`padding` (='causal') is refused by DepthwiseConv1D, as Keras (3 and"
     " tf.keras) refuses it; for left padding only, pass the explicit pair"
     " ((kernel_size - 1) * dilation_rate, 0)"),
    (lambda: sepconv_jax.nnx.DepthwiseConv1D(2, 3, padding="CAUSAL",
                                             rngs=nnx.Rngs(0)),
     ValueError, "`padding` (='CAUSAL') is refused by DepthwiseConv1D"),
    (lambda: sepconv_jax.DepthwiseConv1D.from_keras_config(
        {"kernel_size": [3], "padding": "causal"}), ValueError,
     "`padding` (='causal') is refused by DepthwiseConv1D"),
    (lambda: sepconv_jax.SeparableConv1D(2, 3, padding="causal")
     .to_keras_config(), ValueError,
     "`padding` (='causal') has no Keras counterpart: Keras 3's"
     " SeparableConv1D takes 'valid' or 'same'"),
    (lambda: sepconv_jax.DepthwiseConv2D.from_keras_config(
        {"kernel_size": [3, 3], "filters": 3}), ValueError,
     "`config` has keys that DepthwiseConv2D cannot honour: `filters` (=3)"),
    (lambda: sepconv_jax.nnx.DepthwiseConv2D.from_keras_config(
        {"depth_multiplier": 2}, in_channels=2, rngs=nnx.Rngs(0)), ValueError,
     "`config` lacks the required keys ['kernel_size']"),
    (lambda: sepconv_jax.nnx.SeparableConv1D.from_keras_config(
        {"kernel_size": [3]}, in_channels=2, rngs=nnx.Rngs(0)), ValueError,
     "`config` lacks the required keys ['filters']"),
    (lambda: sepconv_jax.nnx.DepthwiseConv2D(2, 3, name=7, rngs=nnx.Rngs(0)),
     TypeError, "`name` (=7) must be a str or None"),
    (lambda: sepconv_jax.nnx.DepthwiseConv2D(
        2, 3, padding_mode="reflect", rngs=nnx.Rngs(0)).to_keras_config(),
     ValueError, "`padding_mode` (='reflect') has no Keras counterpart"),
])
def test_errors(make, error, match):
  with pytest.raises(error, match=re.escape(match)):
    make()
