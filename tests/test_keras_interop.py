"""Keras interop: configs, weight lists and saved models, against real Keras.

Keras 3 on its JAX backend is the oracle: its layers' configs are read by
`SeparableConv2D.from_keras_config`, written back by `to_keras_config` and
rebuilt by `keras.layers.SeparableConv2D.from_config`; saved models are read
by `load_keras_layers`, and every ported layer must compute what the Keras
layer computes, with the same penalties and constraint results.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile

os.environ.setdefault("KERAS_BACKEND", "jax")

import h5py
import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

import sepconv_jax
from sepconv_jax import SeparableConv2D
from sepconv_jax._initializers import KerasInitializer

try:
  from tests import tolerances
except ImportError:  # tests/ itself on sys.path
  import tolerances

L = keras.layers
I = keras.initializers
R = keras.regularizers
C = keras.constraints


def _json(value):
  """A config as JSON holds it: tuples become lists."""
  return json.loads(json.dumps(value))


def _random(shape, seed=0, dtype=np.float32):
  return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def _keras_losses(layer):
  return float(sum(np.asarray(v, np.float64).sum() for v in layer.losses))


# ---------------------------------------------------------------------------
# A saved model with varied layers, read back by `load_keras_layers`.


def _build_model():
  """Several SeparableConv2D configs, a nested Sequential and a functional op."""
  inp = keras.Input((12, 12, 3))
  x = L.SeparableConv2D(
      8, 3, strides=2, padding="same", activation="relu",
      depthwise_initializer=I.RandomNormal(0.0, 0.3, seed=1),
      depthwise_regularizer=R.L2(1e-3),
      pointwise_constraint=C.MaxNorm(1.5, axis=[0, 1, 2]),
      name="s_stride")(inp)
  x = L.BatchNormalization()(x)
  x = L.SeparableConv2D(
      6, (3, 2), dilation_rate=2, padding="same", depth_multiplier=2,
      activation="gelu",
      pointwise_initializer=I.VarianceScaling(0.5, "fan_out",
                                              "untruncated_normal"),
      bias_initializer=I.Constant(0.1),
      pointwise_regularizer=R.L1(1e-3), bias_regularizer=R.L1L2(1e-3, 1e-4),
      activity_regularizer=R.L2(1e-4),
      depthwise_constraint=C.NonNeg(), bias_constraint=C.UnitNorm(),
      name="s_dilated")(x)
  x = L.Permute((3, 1, 2))(x)
  x = L.SeparableConv2D(
      4, 3, data_format="channels_first", depth_multiplier=3,
      activation="tanh", depthwise_initializer="he_normal",
      pointwise_initializer=I.Orthogonal(gain=0.9, seed=2),
      depthwise_constraint=C.MinMaxNorm(0.5, 1.0, rate=0.5, axis=[0, 1]),
      name="s_first")(x)
  x = L.Permute((2, 3, 1))(x)
  block = keras.Sequential([
      keras.Input((4, 4, 4)),
      L.SeparableConv2D(
          5, 1, use_bias=False, activation="swish",
          depthwise_initializer=I.TruncatedNormal(0.0, 0.5),
          pointwise_initializer=I.RandomUniform(-1.0, 1.0),
          name="s_inner"),
      L.ReLU(),
      L.SeparableConv2D(3, 2, padding="same", strides=(1, 2),
                        dtype="mixed_bfloat16", name="s_bf16"),
  ], name="block")
  x = block(x)
  x = keras.ops.add(x, 1.0)
  out = L.SeparableConv2D(
      2, 3, padding="same", activation="softmax",
      depthwise_initializer=I.GlorotNormal(input_axes=[0, 1, 2],
                                           output_axes=[3]),
      name="s_head")(x)
  return keras.Model(inp, out)


# The path of each SeparableConv2D in the model, and the spatial size fed to
# it in the per-layer comparison.
_LAYERS = {"s_stride": 9, "s_dilated": 7, "s_first": 6, "block/s_inner": 4,
           "block/s_bf16": 5, "s_head": 4}


def _keras_layer(model, path):
  layer = model
  for part in path.split("/"):
    layer = layer.get_layer(part)
  return layer


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
  keras.utils.set_random_seed(0)
  model = _build_model()
  # Perturb every weight so that no zero bias or unit BN hides a mistake.
  model.set_weights([w + 0.1 * _random(w.shape, i)
                     for i, w in enumerate(model.get_weights())])
  path = tmp_path_factory.mktemp("keras") / "model.keras"
  model.save(path)
  return model, path


@pytest.fixture(scope="module")
def loaded(saved_model):
  return sepconv_jax.load_keras_layers(saved_model[1])


def test_load_finds_every_separable_layer(loaded):
  assert list(loaded) == list(_LAYERS)
  module, variables = loaded["block/s_inner"]
  assert isinstance(module, SeparableConv2D)
  assert module.name == "s_inner"
  assert set(variables["params"]) == {"depthwise_kernel", "pointwise_kernel"}


@pytest.mark.parametrize("path", list(_LAYERS))
def test_loaded_layer_matches_keras(saved_model, loaded, path):
  model, _ = saved_model
  layer = _keras_layer(model, path)
  module, variables = loaded[path]
  channels = layer.get_weights()[0].shape[2]
  size = _LAYERS[path]
  if layer.data_format == "channels_first":
    shape = (2, channels, size, size)
  else:
    shape = (2, size, size, channels)
  x = _random(shape, seed=len(path))

  expected = np.asarray(layer(x))
  got, state = module.apply(variables, jnp.asarray(x), mutable=["losses"])
  assert got.dtype == expected.dtype
  if layer.dtype_policy.name == "mixed_bfloat16":
    tolerances.assert_within(
        np.float32(got), np.float32(expected),
        tolerances.keras_magnitude(layer, x),
        tolerances.bfloat16_layer_bound(), what=path)
  else:
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

  # The penalties: weights, bias and activity, as Keras adds them up.
  np.testing.assert_allclose(
      float(sepconv_jax.regularization_loss(state)), _keras_losses(layer),
      rtol=1e-5, atol=1e-8)

  # The constraints, applied to the same (perturbed) weights.
  ours = module.keras_constraints()
  for name in ("depthwise", "pointwise", "bias"):
    constraint = getattr(layer, f"{name}_constraint")
    param = "bias" if name == "bias" else f"{name}_kernel"
    assert (constraint is None) == (param not in ours), param
    if constraint is not None:
      w = variables["params"][param] + 0.3
      np.testing.assert_allclose(ours[param](w), constraint(w), rtol=1e-6,
                                 atol=1e-7)


def test_load_as_nnx_layers(saved_model, loaded):
  """`sepconv_jax.nnx.load_keras_layers`: the same layers as NNX modules,
  `in_channels` read off the saved kernel, Keras's config and weights."""
  model, path = saved_model
  nnx_layers = sepconv_jax.nnx.load_keras_layers(path)
  assert list(nnx_layers) == list(loaded)
  for name, layer in nnx_layers.items():
    keras_layer = _keras_layer(model, name)
    assert isinstance(layer, sepconv_jax.nnx.SeparableConv2D), name
    assert layer.in_channels == keras_layer.get_weights()[0].shape[2], name
    assert _json(layer.to_keras_config()) == _json(keras_layer.get_config())
    params = {p: getattr(layer, p)[...] for p in loaded[name][1]["params"]}
    for ours, theirs in zip(sepconv_jax.params_to_keras(params),
                            keras_layer.get_weights()):
      np.testing.assert_array_equal(ours, theirs)  # the weights, unchanged
  # One layer run against Keras (channels_first, depth multiplier 3); the
  # NNX and linen layers' equality is tested elsewhere (test_module.py).
  keras_layer = _keras_layer(model, "s_first")
  x = _random((2, keras_layer.get_weights()[0].shape[2], 6, 6), seed=3)
  np.testing.assert_allclose(  # float32, one layer
      nnx_layers["s_first"](jnp.asarray(x)), keras_layer(x), rtol=1e-5,
      atol=1e-5)


def test_loaded_configs_round_trip(saved_model, loaded):
  """Each ported module writes back the config Keras saved."""
  model, _ = saved_model
  for path, (module, _) in loaded.items():
    assert _json(module.to_keras_config()) == _json(
        _keras_layer(model, path).get_config()), path


def test_weights_file_with_config(saved_model, tmp_path):
  """A .weights.h5 file with its config, in every accepted form."""
  model, _ = saved_model
  weights = tmp_path / "model.weights.h5"
  model.save_weights(weights)
  config_file = tmp_path / "config.json"
  config_file.write_text(model.to_json())
  for config in (model.to_json(), json.loads(model.to_json()),
                 model.get_config(), str(config_file)):
    got = sepconv_jax.load_keras_layers(weights, config)
    assert list(got) == list(_LAYERS)
    for path, (_, variables) in got.items():
      expected = _keras_layer(model, path).get_weights()
      for ours, theirs in zip(sepconv_jax.params_to_keras(variables),
                              expected):
        np.testing.assert_array_equal(ours, theirs)


def test_sequential_get_config_and_unzipped_archive(tmp_path):
  model = keras.Sequential([keras.Input((6, 6, 2)),
                            L.SeparableConv2D(3, 3, name="a"),
                            L.SeparableConv2D(2, 1, name="b",
                                              dtype="bfloat16")])
  model.save_weights(tmp_path / "s.weights.h5")
  got = sepconv_jax.load_keras_layers(tmp_path / "s.weights.h5",
                                      model.get_config())
  assert list(got) == ["a", "b"]
  module, variables = got["b"]  # bfloat16 weights, stored as opaque bytes.
  assert module.param_dtype == jnp.bfloat16
  assert variables["params"]["bias"].dtype == jnp.bfloat16
  model.save(tmp_path / "s.keras")
  folder = tmp_path / "unzipped"
  zipfile.ZipFile(tmp_path / "s.keras").extractall(folder)
  got = sepconv_jax.load_keras_layers(folder)
  np.testing.assert_array_equal(got["b"][1]["params"]["pointwise_kernel"],
                                model.get_layer("b").get_weights()[1])


# ---------------------------------------------------------------------------
# from_keras_config / to_keras_config round trips.

_CONFIGS = {
    "defaults": dict(filters=4, kernel_size=3),
    "strided": dict(filters=3, kernel_size=(2, 3), strides=(2, 1),
                    padding="same", use_bias=False, activation="elu"),
    "dilated_first": dict(
        filters=5, kernel_size=3, dilation_rate=(1, 2), depth_multiplier=2,
        data_format="channels_first", activation="leaky_relu",
        depthwise_initializer=I.HeUniform(seed=4),
        pointwise_initializer=I.LecunNormal(),
        bias_initializer=I.RandomNormal(0.5, 0.1)),
    "objects": dict(
        filters=4, kernel_size=3, padding="same", activation="selu",
        depthwise_initializer=I.VarianceScaling(2.0, "fan_avg", "normal",
                                                seed=7),
        pointwise_initializer=I.Constant(0.25),
        bias_initializer=I.Ones(),
        depthwise_regularizer=R.L1L2(0.01, 0.02),
        pointwise_regularizer="l2", bias_regularizer=R.L1(0.3),
        activity_regularizer=R.L1(1e-3),
        depthwise_constraint=C.UnitNorm(axis=[0, 1]),
        pointwise_constraint=C.MinMaxNorm(0.1, 0.9, 0.7, axis=2),
        bias_constraint=C.MaxNorm(0.5)),
    "mixed_float16": dict(filters=2, kernel_size=1, dtype="mixed_float16",
                          depthwise_initializer="orthogonal"),
    "bfloat16": dict(filters=2, kernel_size=2, dtype="bfloat16",
                     depthwise_initializer=I.GlorotUniform(
                         input_axes=(0, 1), output_axes=(3,))),
}


# Every config key is in "objects" or "dilated_first"; the others repeat
# those with other values: the full profile.
@pytest.mark.parametrize("case", [
    c if c in ("objects", "dilated_first", "bfloat16") else pytest.param(
        c, marks=pytest.mark.full("other values of the same keys"))
    for c in _CONFIGS])
def test_config_round_trip(case):
  keras_layer = L.SeparableConv2D(**_CONFIGS[case], name=f"layer_{case}")
  config = keras_layer.get_config()
  module = SeparableConv2D.from_keras_config(config)
  assert module.name == f"layer_{case}"
  back = module.to_keras_config()
  assert _json(back) == _json(config)
  # Through JSON too, as a saved model holds it.
  assert _json(SeparableConv2D.from_keras_config(
      _json(config)).to_keras_config()) == _json(config)

  rebuilt = L.SeparableConv2D.from_config(back)
  channels_first = config["data_format"] == "channels_first"
  x = _random((2, 3, 7, 7) if channels_first else (2, 7, 7, 3), seed=5)
  keras_layer(x)
  rebuilt(x)
  variables = module.init(jax.random.key(0), jnp.asarray(x))
  weights = sepconv_jax.params_to_keras(variables)
  keras_layer.set_weights(weights)
  rebuilt.set_weights(weights)
  expected = np.asarray(keras_layer(x))
  np.testing.assert_array_equal(np.asarray(rebuilt(x)), expected)
  got = module.apply(variables, jnp.asarray(x))
  assert got.dtype == expected.dtype
  if got.dtype == jnp.float32:
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  else:
    tolerances.assert_within(
        np.float32(got), np.float32(expected),
        tolerances.keras_magnitude(keras_layer, x),
        tolerances.bfloat16_layer_bound(), what=str(got.dtype))


def test_default_initializers_become_names():
  module = SeparableConv2D.from_keras_config(
      L.SeparableConv2D(4, 3, bias_initializer="ones").get_config())
  assert module.depthwise_initializer == "glorot_uniform"
  assert module.bias_initializer == "ones"
  seeded = SeparableConv2D.from_keras_config(L.SeparableConv2D(
      4, 3, depthwise_initializer=I.GlorotUniform(seed=3)).get_config())
  assert seeded.depthwise_initializer == KerasInitializer(
      "GlorotUniform",
      (("input_axes", None), ("output_axes", None), ("seed", 3)))


def test_module_strings_and_functions_export():
  module = SeparableConv2D(
      4, 3, data_format="channels_last", activation=jax.nn.relu,
      depthwise_initializer="normal", depthwise_regularizer="l1_l2",
      pointwise_constraint="max_norm",
      pointwise_regularizer=sepconv_jax.regularizers.L2(0.5),
      bias_constraint=sepconv_jax.constraints.MaxNorm(3.0, axis=(0,)),
      dtype=jnp.bfloat16)
  config = module.to_keras_config()
  assert "name" not in config
  assert config["activation"] == "relu"
  assert config["dtype"]["config"] == {"name": "mixed_bfloat16"}
  assert config["depthwise_initializer"]["class_name"] == "RandomNormal"
  assert config["depthwise_regularizer"]["config"] == {"l1": 0.01,
                                                       "l2": 0.01}
  keras_layer = L.SeparableConv2D.from_config(config)
  assert keras_layer.dtype_policy.name == "mixed_bfloat16"
  assert keras_layer.pointwise_regularizer.l2 == 0.5
  assert keras_layer.bias_constraint.get_config() == {"max_value": 3.0,
                                                      "axis": [0]}


def _depthwise_init(initializer, shape):
  """Our draw for `initializer`, carried across a Keras layer config."""
  module = SeparableConv2D.from_keras_config(L.SeparableConv2D(
      4, 3, depthwise_initializer=initializer).get_config())
  init = sepconv_jax._initializers.get(module.depthwise_initializer, "x")
  return np.asarray(init(jax.random.key(1), shape, jnp.float32), np.float64)


# Keras's formulas for each initializer's config, on shape (3, 3, 64, 64):
# fan_in = 3*3*64 = 576 = fan_out, or 9 with input_axes=[0, 1].
_SHAPE = (3, 3, 64, 64)


def test_initializer_configs_are_honoured():
  w = _depthwise_init(I.VarianceScaling(3.0, "fan_in", "uniform",
                                        input_axes=[0, 1], output_axes=[3]),
                      _SHAPE)
  assert np.abs(w).max() <= 1.0 and np.abs(w).max() > 0.99  # sqrt(3*3/9).
  w = _depthwise_init(I.VarianceScaling(0.5, "fan_out", "untruncated_normal"),
                      _SHAPE)
  np.testing.assert_allclose(w.std(), np.sqrt(0.5 / 576), rtol=0.02)
  assert np.abs(w).max() > 2.5 * np.sqrt(0.5 / 576)  # Not truncated.
  w = _depthwise_init(I.TruncatedNormal(0.2, 0.3), _SHAPE)
  np.testing.assert_allclose(w.mean(), 0.2, atol=0.01)
  assert w.min() >= 0.2 - 0.6 and w.max() <= 0.2 + 0.6
  np.testing.assert_allclose(w.std(), 0.3 * 0.87962566, rtol=0.02)
  w = _depthwise_init(I.RandomUniform(-0.4, 0.1), _SHAPE)
  assert -0.4 <= w.min() < -0.399 and 0.099 < w.max() <= 0.1
  w = _depthwise_init(I.Orthogonal(gain=1.7), _SHAPE).reshape(576, 64)
  np.testing.assert_allclose(w.T @ w, 1.7 ** 2 * np.eye(64), atol=1e-4)
  w = _depthwise_init(I.Constant(0.3), (2, 2, 1, 1))
  np.testing.assert_array_equal(w, np.float32(0.3))


# ---------------------------------------------------------------------------
# Penalties and constraints carried across a config.


def test_penalties_and_constraints_match_keras():
  config = L.SeparableConv2D(**_CONFIGS["objects"]).get_config()
  keras_layer = L.SeparableConv2D.from_config(config)
  module = SeparableConv2D.from_keras_config(config)
  x = _random((3, 6, 6, 2), seed=8)
  keras_layer(x)
  weights = [w + _random(w.shape, i) for i, w in
             enumerate(keras_layer.get_weights())]
  keras_layer.set_weights(weights)
  keras_layer(x)
  variables = {"params": sepconv_jax.params_from_keras(weights,
                                                       module=module)}
  _, state = module.apply(variables, x, mutable=["losses"])
  losses = state["losses"]
  # Each penalty on its own: the weights' in Keras's order, then activity.
  keras_each = [float(v) for v in keras_layer.losses]
  ours_each = [float(losses[k]) for k in ("depthwise_regularizer",
                                          "pointwise_regularizer",
                                          "bias_regularizer")]
  ours_each.append(float(losses["activity_regularizer"][0]))
  np.testing.assert_allclose(sorted(ours_each), sorted(keras_each),
                             rtol=1e-5)
  constraints = module.keras_constraints()
  for (name, w) in zip(("depthwise_kernel", "pointwise_kernel", "bias"),
                       weights):
    keras_constraint = getattr(keras_layer,
                               name.replace("_kernel", "") + "_constraint")
    np.testing.assert_allclose(constraints[name](jnp.asarray(w)),
                               keras_constraint(w), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------
# Weight converters.


def test_params_match_keras_weights_and_back():
  keras_layer = L.SeparableConv2D(6, (3, 2), depth_multiplier=2)
  x = _random((1, 5, 5, 4))
  keras_layer(x)
  weights = keras_layer.get_weights()
  module = SeparableConv2D(6, (3, 2), depth_multiplier=2)
  params = sepconv_jax.params_from_keras(weights, module=module)
  assert {k: v.shape for k, v in params.items()} == jax.tree.map(
      jnp.shape, module.init(jax.random.key(0), x)["params"])
  back = sepconv_jax.params_to_keras({"params": params}, module=module)
  for ours, theirs in zip(back, weights):
    assert isinstance(ours, np.ndarray)
    np.testing.assert_array_equal(ours, theirs)
  keras_layer.set_weights(back)


# ---------------------------------------------------------------------------
# Errors, with their messages.

_BASE = {"filters": 4, "kernel_size": [3, 3],
         "data_format": "channels_last"}


def _keras_object(module, class_name, config, registered_name=None):
  return {"module": module, "class_name": class_name, "config": config,
          "registered_name": registered_name}


@pytest.mark.parametrize("extra, match", [
    ({"foo": 1}, r"cannot honour: `foo` \(=1\)"),
    ({"kernel_initializer": "ones"},
     r"`kernel_initializer` \(='ones'\)"),
    ({"trainable": False}, r"`trainable` \(=False\).*allow_frozen=True"),
    ({"trainable": "yes"}, r"`trainable` \(='yes'\) must be a bool"),
    ({"activation": "threshold"}, r"`activation` \(='threshold'\)"),
    ({"activation": _keras_object("my_pkg", "function", "my_act",
                                  "Custom>my_act")},
     r"`activation` .* custom Keras activation"),
    ({"depthwise_initializer": _keras_object(
        "keras.initializers", "RandomNormal", {"mean": 0.0, "foo": 2})},
     r"`depthwise_initializer` \(RandomNormal.*unknown|cannot honour.*"
     r"\['foo'\]"),
    ({"depthwise_initializer": _keras_object(
        "keras.initializers", "Identity", {"gain": 1.0})},
     r"`depthwise_initializer` .*'Identity' cannot be honoured"),
    ({"pointwise_initializer": _keras_object(
        "my_pkg", "MyInit", {}, "MyPackage>MyInit")},
     r"`pointwise_initializer` .*custom initializer class"
     r" 'MyPackage>MyInit'"),
    ({"bias_initializer": _keras_object(
        "keras.initializers", "RandomNormal", {"seed": {"class_name": "x"}})},
     r"`bias_initializer` \(RandomNormal\) config `seed`"),
    ({"depthwise_initializer": _keras_object(
        "keras.initializers", "VarianceScaling", {"mode": "fan_sideways"})},
     r"config `mode` \(='fan_sideways'\)"),
    ({"depthwise_regularizer": _keras_object(
        "keras.regularizers", "OrthogonalRegularizer",
        {"factor": 0.01, "mode": "rows"})},
     r"`depthwise_regularizer` .*'OrthogonalRegularizer' cannot be"
     r" honoured"),
    ({"bias_regularizer": _keras_object("keras.regularizers", "L2",
                                        {"l2": "big"})},
     r"`bias_regularizer` \(L2\) config `l2` \(='big'\) must be a number"),
    ({"pointwise_constraint": _keras_object(
        "keras.constraints", "RadialConstraint", {})},
     r"`pointwise_constraint` .*'RadialConstraint' cannot be honoured"),
    ({"depthwise_constraint": _keras_object(
        "keras.constraints", "MaxNorm", {"max_value": 2, "axis": "rows"})},
     r"`depthwise_constraint` \(MaxNorm\) config `axis` \(='rows'\)"),
    ({"dtype": _keras_object("keras", "QuantizedDTypePolicy",
                             {"mode": "int8", "source_name": "float32"})},
     r"`dtype` .*'QuantizedDTypePolicy' cannot be honoured"),
    ({"dtype": "int8"}, r"`dtype` \(='int8'\) must be one of"),
    ({"depthwise_regularizer": 0.01},
     r"`depthwise_regularizer` \(=0.01\) must be None, a regularizer name"
     r" or a serialized Keras regularizer"),
    ({"bias_constraint": ["max_norm"]},
     r"`bias_constraint` \(=\['max_norm'\]\) must be None, a constraint"
     r" name or a serialized Keras constraint"),
    ({"padding": "causal"}, r"`padding` \(='causal'\)"),
    ({"dtype": _keras_object("keras", "DTypePolicy",
                             {"name": "float32", "x": 1})},
     r"`dtype` \(DTypePolicy.*\['x'\]"),
])
def test_from_keras_config_errors(extra, match):
  with pytest.raises(ValueError, match=match):
    SeparableConv2D.from_keras_config({**_BASE, **extra})


def test_from_keras_config_other_errors():
  with pytest.raises(TypeError, match=r"`config` \(=\[1\]\) must be the dict"):
    SeparableConv2D.from_keras_config([1])
  with pytest.raises(ValueError, match=r"lacks the required keys \['filters'\]"):
    SeparableConv2D.from_keras_config({"kernel_size": 3})
  whole = _keras_object("keras.layers", "SeparableConv2D", _BASE)
  with pytest.raises(ValueError, match=r"pass its 'config' entry"):
    SeparableConv2D.from_keras_config(whole)
  frozen = SeparableConv2D.from_keras_config(
      {**_BASE, "trainable": False}, allow_frozen=True)
  assert frozen.to_keras_config()["trainable"] is True


def test_from_keras_config_names_keras_custom_class():
  @keras.saving.register_keras_serializable(package="InteropTest")
  class Halve(keras.constraints.Constraint):
    def __call__(self, w):
      return w / 2

  config = L.SeparableConv2D(2, 3, bias_constraint=Halve()).get_config()
  with pytest.raises(ValueError,
                     match=r"`bias_constraint` .*'InteropTest>Halve'"):
    SeparableConv2D.from_keras_config(config)


@pytest.mark.parametrize("kwargs, match", [
    (dict(activation=lambda x: x), r"`activation` \(=<function"),
    (dict(depthwise_initializer=lambda k, s, d: jnp.zeros(s, d)),
     r"`depthwise_initializer` \(=<function"),
    (dict(pointwise_regularizer=lambda w: 0.0),
     r"`pointwise_regularizer` \(=<function"),
    (dict(bias_constraint=jnp.abs), r"`bias_constraint` \(="),
    (dict(dtype=jnp.float16, param_dtype=jnp.bfloat16),
     r"`dtype` \(=<class 'jax.numpy.float16'>\) and `param_dtype`"),
    (dict(padding_mode="reflect"), r"`padding_mode` \(='reflect'\)"),
    (dict(padding=((1, 1), (0, 2))), r"`padding` \(=\(\(1, 1\), \(0, 2\)\)\)"),
])
def test_to_keras_config_errors(kwargs, match):
  module = SeparableConv2D(4, 3, **kwargs)
  with pytest.raises(ValueError, match=match):
    module.to_keras_config()


def test_params_from_keras_errors():
  dk, pk, b = (np.ones((3, 3, 2, 3), np.float32),
               np.ones((1, 1, 6, 4), np.float32), np.ones((4,), np.float32))
  with pytest.raises(ValueError, match=(
      r"`weights` \(=4 arrays of shapes \[\(3, 3, 2, 3\), \(1, 1, 6, 4\),"
      r" \(4,\), \(4,\)\]\) must be, in the order of Keras's get_weights\(\),"
      r" a separable layer's \[depthwise_kernel, pointwise_kernel\(, bias\)\]"
      r" or a depthwise layer's \[kernel\(, bias\)\]")):
    sepconv_jax.params_from_keras([dk, pk, b, b])
  with pytest.raises(ValueError, match=(
      r"`pointwise_kernel` \(weights\[1\], shape=\(1, 4\)\) has rank 2, but"
      r" rank 4 is needed")):
    sepconv_jax.params_from_keras([dk, np.ones((1, 4), np.float32)])
  with pytest.raises(ValueError, match=r"`weights` \(=2 arrays .* must be,"):
    sepconv_jax.params_from_keras([np.ones((3, 4), np.float32), dk])
  with pytest.raises(ValueError, match=r"`weights` \(=0 arrays .* must be,"):
    sepconv_jax.params_from_keras([])
  with pytest.raises(ValueError, match=(
      r"must hold 3 arrays, in the order of Keras's get_weights\(\):"
      r" depthwise_kernel, pointwise_kernel, bias \(use_bias=True\)")):
    sepconv_jax.params_from_keras([dk, pk],
                                  module=SeparableConv2D(4, 3,
                                                         depth_multiplier=3))
  with pytest.raises(ValueError, match=(
      r"must hold 1 arrays, in the order of Keras's get_weights\(\): kernel"
      r" \(use_bias=False\)")):
    sepconv_jax.params_from_keras(
        [dk, np.ones(6, np.float32)],
        module=sepconv_jax.DepthwiseConv2D(3, 3, use_bias=False))
  with pytest.raises(ValueError, match=(
      r"`pointwise_kernel` \(weights\[1\], shape=\(1, 1, 2, 4\)\) does not"
      r" fit: expected shape \(1, 1, 6, \?\), Keras's \(1 per spatial dim,"
      r" in_channels \* depth_multiplier, filters\) with the weights'"
      r" kernel_size=\(3, 3\), in_channels=2, depth_multiplier=3,"
      r" filters=\?$")):
    sepconv_jax.params_from_keras([dk, np.ones((1, 1, 2, 4), np.float32)])
  with pytest.raises(ValueError, match=(
      r"`bias` \(weights\[2\], shape=\(5,\)\) does not fit: expected shape"
      r" \(4,\), Keras's \(filters,\) with the weights' .* filters=4$")):
    sepconv_jax.params_from_keras([dk, pk, np.ones(5, np.float32)])
  with pytest.raises(ValueError, match=(
      r"`depthwise_kernel` \(weights\[0\], shape=\(3, 3, 2, 3\)\) does not"
      r" fit: expected shape \(5, 5, \?, 3\), Keras's \(\*kernel_size,"
      r" in_channels, depth_multiplier\) with the module's"
      r" kernel_size=\(5, 5\), depth_multiplier=3, filters=4 and the"
      r" weights' in_channels=\?$")):
    sepconv_jax.params_from_keras(
        [dk, pk, b], module=SeparableConv2D(4, 5, depth_multiplier=3))
  with pytest.raises(ValueError, match=(
      r"`pointwise_kernel` \(weights\[1\], shape=\(1, 1, 6, 4\)\) does not"
      r" fit: expected shape \(1, 1, 6, 8\),")):
    sepconv_jax.params_from_keras(
        [dk, pk, b], module=SeparableConv2D(8, 3, depth_multiplier=3))
  with pytest.raises(ValueError, match=(
      r"`pointwise_kernel` \(weights\[1\], shape=\(1, 6, 4\)\) has rank 3,"
      r" but rank 4 is needed: expected shape \(1, 1, 6, \?\)")):
    sepconv_jax.params_from_keras([dk, np.ones((1, 6, 4), np.float32), b])
  with pytest.raises(ValueError, match=(
      r"`bias` \(weights\[1\], shape=\(3,\)\) does not fit: expected shape"
      r" \(6,\), Keras's \(in_channels \* depth_multiplier,\)")):
    sepconv_jax.params_from_keras([dk, np.ones(3, np.float32)])
  with pytest.raises(ValueError, match=(
      r"`bias` \(weights\[2\], dtype=int32, shape=\(4,\)\) must be a"
      r" floating-point array")):
    sepconv_jax.params_from_keras([dk, pk, np.ones(4, np.int32)])
  with pytest.raises(ValueError, match=(
      r"`pointwise_kernel` \(weights\[1\], dtype=float64, shape=\(1, 1, 6,"
      r" 4\)\) must have dtype float32")):
    sepconv_jax.params_from_keras([dk, pk.astype(np.float64), b])
  with pytest.raises(ValueError, match=(
      r"`depthwise_kernel` \(weights\[0\], dtype=float32.*must have dtype"
      r" bfloat16, the module's `param_dtype`")):
    sepconv_jax.params_from_keras(
        [dk, pk, b], module=SeparableConv2D(4, 3, depth_multiplier=3,
                                            param_dtype=jnp.bfloat16))
  with pytest.raises(TypeError, match=r"`weights` \(a dict\) must be a list"):
    sepconv_jax.params_from_keras({"depthwise_kernel": dk})


def test_params_to_keras_errors():
  params = {"depthwise_kernel": jnp.ones((3, 3, 2, 1)),
            "pointwise_kernel": jnp.ones((1, 1, 2, 4))}
  with pytest.raises(ValueError, match=r"unknown: \['kernel'\]"):
    sepconv_jax.params_to_keras({**params, "kernel": jnp.ones(3)})
  with pytest.raises(ValueError, match=r"missing: \['pointwise_kernel'\]"):
    sepconv_jax.params_to_keras({"depthwise_kernel": jnp.ones((3, 3, 2, 1))})
  with pytest.raises(ValueError, match=r"missing: \['bias'\]"):
    sepconv_jax.params_to_keras(params, module=SeparableConv2D(4, 3))
  with pytest.raises(ValueError, match=(
      r"`params` \(keys=\['bias', 'kernel'\]\) must hold kernel and, if the"
      r" layer has"
      r" one, bias; unknown: \['bias'\]")):
    sepconv_jax.params_to_keras(
        {"kernel": jnp.ones((3, 3, 2, 1)), "bias": jnp.ones(2)},
        module=sepconv_jax.DepthwiseConv2D(3, use_bias=False))
  with pytest.raises(ValueError, match=(
      r"`params` \(keys=\['bias', 'weights'\]\) must hold a separable layer's"
      r" \[depthwise_kernel, pointwise_kernel\(, bias\)\] or a depthwise"
      r" layer's \[kernel\(, bias\)\]")):
    sepconv_jax.params_to_keras({"weights": jnp.ones(3), "bias": jnp.ones(3)})
  with pytest.raises(ValueError, match=(
      r"`pointwise_kernel` \(params\['pointwise_kernel'\], shape=\(1, 1, 3,"
      r" 4\)\) does not fit: expected shape \(1, 1, 2, \?\)")):
    sepconv_jax.params_to_keras({**params,
                                 "pointwise_kernel": jnp.ones((1, 1, 3, 4))})
  with pytest.raises(TypeError, match=r"`params` \(a list\) must be a mapping"):
    sepconv_jax.params_to_keras([1, 2])


def test_load_errors(saved_model, tmp_path):
  model, archive = saved_model
  with pytest.raises(FileNotFoundError, match=r"`path` \(=.*nope.keras'\)"
                     r" does not exist"):
    sepconv_jax.load_keras_layers(tmp_path / "nope.keras")
  text = tmp_path / "notes.keras"
  text.write_text("hello")
  with pytest.raises(ValueError, match=r"is neither a .keras archive nor a"
                     r" .weights.h5 file"):
    sepconv_jax.load_keras_layers(text)
  bare_zip = tmp_path / "other.keras"
  with zipfile.ZipFile(bare_zip, "w") as z:
    z.writestr("readme.txt", "hi")
  with pytest.raises(ValueError, match=r"is not a Keras 3 archive: it has no"
                     r" config.json"):
    sepconv_jax.load_keras_layers(bare_zip)
  npz_zip = tmp_path / "npz.keras"
  with zipfile.ZipFile(npz_zip, "w") as z:
    z.writestr("config.json", "{}")
    z.writestr("model.weights.npz", "")
  with pytest.raises(ValueError, match=r"holds no model.weights.h5"):
    sepconv_jax.load_keras_layers(npz_zip)
  with pytest.raises(ValueError, match=r"`config` is only for .weights.h5"):
    sepconv_jax.load_keras_layers(archive, model.to_json())

  weights = tmp_path / "m.weights.h5"
  model.save_weights(weights)
  with pytest.raises(ValueError, match=r"`config` is needed for the weights"
                     r" file"):
    sepconv_jax.load_keras_layers(weights)
  with pytest.raises(ValueError, match=r"`config` for .* is not a Functional"
                     r" or Sequential model config"):
    sepconv_jax.load_keras_layers(weights, {"foo": 1})
  with pytest.raises(FileNotFoundError, match=r"`config` \(='missing.json'\)"):
    sepconv_jax.load_keras_layers(weights, "missing.json")
  other = keras.Sequential([keras.Input((5, 5, 3)),
                            L.SeparableConv2D(2, 3, name="x")])
  with pytest.raises(ValueError, match=r"holds the weights of layer"
                     r" 's_stride' .* where the model config puts layer 'x'"):
    sepconv_jax.load_keras_layers(weights, other.to_json())

  legacy = tmp_path / "legacy.h5"
  with h5py.File(legacy, "w") as f:
    f.attrs["layer_names"] = [b"dense"]
    f.create_group("model_weights")
  with pytest.raises(ValueError, match=r"legacy Keras 2 HDF5 file"):
    sepconv_jax.load_keras_layers(legacy, model.to_json())


def test_load_unsupported_layers(tmp_path):
  wrapped = keras.Sequential([
      keras.Input((3, 6, 6, 2)),
      L.TimeDistributed(L.SeparableConv2D(2, 3, name="inner"), name="td")])
  wrapped.save(tmp_path / "td.keras")
  with pytest.raises(ValueError, match=r"layer 'td' .* is a 'TimeDistributed'"
                     r" holding a SeparableConv2D"):
    sepconv_jax.load_keras_layers(tmp_path / "td.keras")

  frozen = keras.Sequential([keras.Input((6, 6, 2)),
                             L.SeparableConv2D(2, 3, name="f")])
  frozen.trainable = False
  frozen.save(tmp_path / "frozen.keras")
  with pytest.raises(ValueError, match=r"layer 'f' in .*`trainable` \(=False\)"):
    sepconv_jax.load_keras_layers(tmp_path / "frozen.keras")
  assert list(sepconv_jax.load_keras_layers(tmp_path / "frozen.keras",
                                            allow_frozen=True)) == ["f"]

  # A custom class that calls itself SeparableConv2D is not Keras's.
  with zipfile.ZipFile(tmp_path / "frozen.keras") as z:
    files = {n: z.read(n) for n in z.namelist()}
  config = json.loads(files["config.json"])
  config["config"]["layers"][-1].update(module="my_pkg",
                                        registered_name="MyPkg>SeparableConv2D")
  files["config.json"] = json.dumps(config).encode()
  with zipfile.ZipFile(tmp_path / "impostor.keras", "w") as z:
    for n, data in files.items():
      z.writestr(n, data)
  with pytest.raises(ValueError, match=r"layer 'f' .* is the custom class"
                     r" 'MyPkg>SeparableConv2D', not Keras's SeparableConv2D"):
    sepconv_jax.load_keras_layers(tmp_path / "impostor.keras",
                                  allow_frozen=True)

  @keras.saving.register_keras_serializable(package="InteropTest")
  class Block(L.Layer):
    def __init__(self, **kwargs):
      super().__init__(**kwargs)
      self.conv = L.SeparableConv2D(2, 3)

    def call(self, x):
      return self.conv(x)

  custom = keras.Sequential([keras.Input((6, 6, 2)), Block(name="blk")])
  custom.save(tmp_path / "custom.keras")
  with pytest.raises(ValueError, match=r"layer 'blk' .* custom class"
                     r" 'InteropTest>Block', which holds sublayers"):
    sepconv_jax.load_keras_layers(tmp_path / "custom.keras")

  @keras.saving.register_keras_serializable(package="InteropTest")
  class Negate(keras.constraints.Constraint):
    def __call__(self, w):
      return -w

  odd = keras.Sequential([keras.Input((6, 6, 2)),
                          L.SeparableConv2D(2, 3, name="odd",
                                            depthwise_constraint=Negate())])
  odd.save(tmp_path / "odd.keras")
  with pytest.raises(ValueError, match=r"layer 'odd' in .*"
                     r"`depthwise_constraint` .*'InteropTest>Negate'"):
    sepconv_jax.load_keras_layers(tmp_path / "odd.keras")


def test_load_without_h5py(saved_model, monkeypatch):
  monkeypatch.setitem(sys.modules, "h5py", None)
  with pytest.raises(ImportError, match=r"needs h5py: pip install h5py"
                     r" .*pip install -e \"\.\[keras\]\""):
    sepconv_jax.load_keras_layers(saved_model[1])
