"""Weight constraints of `sepconv_jax.SeparableConv2D` against Keras 3.

The oracle is Keras: `keras.constraints` applied to the same arrays, and a
Keras `SeparableConv2D` stepped by `keras.optimizers.SGD`, which applies each
variable's constraint after the update.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
import pytest

import sepconv_jax
from sepconv_jax import constraints as sjc

# Keras's own random initializers cost seconds of compiling per shape; the
# weights are replaced by set_weights() anyway.
_KERAS_FAST_INIT = dict(depthwise_initializer="zeros",
                        pointwise_initializer="zeros")

DW, PW, B = (3, 3, 4, 2), (1, 1, 8, 5), (5,)
ATOL = 1e-6


def _clip(w):
  """A plain callable constraint (works on jax arrays)."""
  return jnp.clip(w, -0.3, 0.4)


def _keras_clip(w):
  return _clip(keras.ops.convert_to_tensor(w))


# id -> (factory of ours, factory of the Keras equivalent, fits rank 1).
CASES = {
    "max_norm": (lambda: "max_norm",
                 lambda: keras.constraints.get("max_norm"), True),
    "non_neg": (lambda: "non_neg",
                lambda: keras.constraints.get("non_neg"), True),
    "unit_norm": (lambda: "unit_norm",
                  lambda: keras.constraints.get("unit_norm"), True),
    "min_max_norm": (lambda: "min_max_norm",
                     lambda: keras.constraints.get("min_max_norm"), True),
    "MaxNorm(1.5)": (lambda: sjc.MaxNorm(1.5),
                     lambda: keras.constraints.MaxNorm(1.5), True),
    "MaxNorm(0.8,axis=[0,1,2])": (
        lambda: sjc.MaxNorm(0.8, axis=[0, 1, 2]),
        lambda: keras.constraints.MaxNorm(0.8, axis=[0, 1, 2]), False),
    "MaxNorm(max_value=1,axis=-1)": (
        lambda: sjc.MaxNorm(max_value=1, axis=-1),
        lambda: keras.constraints.MaxNorm(max_value=1, axis=-1), True),
    "NonNeg()": (lambda: sjc.NonNeg(), lambda: keras.constraints.NonNeg(),
                 True),
    "UnitNorm(axis=(0,1,2))": (
        lambda: sjc.UnitNorm(axis=(0, 1, 2)),
        lambda: keras.constraints.UnitNorm(axis=(0, 1, 2)), False),
    "UnitNorm(axis=2)": (lambda: sjc.UnitNorm(axis=2),
                         lambda: keras.constraints.UnitNorm(axis=2), False),
    "MinMaxNorm(0.5,1.2,rate=0.7,axis=[0,1])": (
        lambda: sjc.MinMaxNorm(0.5, 1.2, rate=0.7, axis=[0, 1]),
        lambda: keras.constraints.MinMaxNorm(0.5, 1.2, rate=0.7, axis=[0, 1]),
        False),
    "MinMaxNorm(min_value=1.0,max_value=2.0)": (
        lambda: sjc.MinMaxNorm(min_value=1.0, max_value=2.0),
        lambda: keras.constraints.MinMaxNorm(min_value=1.0, max_value=2.0),
        True),
    "callable": (lambda: _clip, lambda: _keras_clip, True),
}


def _collect(dw=None, pw=None, b=None):
  layer = sepconv_jax.SeparableConv2D(
      5, 3, depth_multiplier=2, data_format="channels_last",
      depthwise_constraint=dw, pointwise_constraint=pw, bias_constraint=b)
  return sepconv_jax.collect_constraints(layer, jnp.zeros((1, 5, 5, 4)))


def test_keras_defaults():
  """The Keras defaults the names stand for (the oracle's own)."""
  mn = keras.constraints.get("max_norm")
  assert (mn.max_value, mn.axis) == (2, 0)
  assert keras.constraints.get("unit_norm").axis == 0
  mmn = keras.constraints.get("min_max_norm")
  assert (mmn.min_value, mmn.max_value, mmn.rate, mmn.axis) == (0, 1, 1, 0)


@pytest.mark.parametrize("case", list(CASES))
def test_constraint_matches_keras(case):
  ours_f, keras_f, fits_bias = CASES[case]
  cons = _collect(ours_f(), ours_f(), ours_f() if fits_bias else None)
  shapes = {"depthwise_kernel": DW, "pointwise_kernel": PW}
  if fits_bias:
    shapes["bias"] = B
  for key in shapes:
    assert (key,) in cons, (key, sorted(cons))
  keras_c = keras_f()
  rng = np.random.default_rng(0)
  for key, shape in shapes.items():
    for scale in (0.3, 2.0):
      w = (scale * rng.normal(size=shape)).astype(np.float32)
      expected = np.asarray(keras_c(w))
      actual = cons[(key,)](jnp.asarray(w))
      assert actual.shape == shape and actual.dtype == jnp.float32
      np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6,
                                 err_msg=f"{key} scale={scale}")
      if scale == 2.0:  # the constraint does change these arrays
        assert not np.allclose(expected, w), key


def test_only_constrained_params_are_collected():
  cons = _collect(dw="non_neg")
  assert ("depthwise_kernel",) in cons
  w = np.random.default_rng(1).normal(size=PW).astype(np.float32)
  for path in (("pointwise_kernel",), ("bias",)):
    if path in cons:  # allowed only as the identity
      np.testing.assert_array_equal(cons[path](w), w)
  assert not _collect() or all(
      np.array_equal(fn(w), w) for fn in _collect().values())


# A nested model; its layers have all kinds of constraints, or none.
class Inner(nn.Module):
  @nn.compact
  def __call__(self, x):
    return sepconv_jax.SeparableConv2D(
        4, 3, depth_multiplier=2, padding="same", data_format="channels_last",
        depthwise_constraint=sjc.UnitNorm(axis=[0, 1]),
        pointwise_constraint=sjc.MinMaxNorm(0.5, 1.0, rate=0.7, axis=2),
        bias_constraint="non_neg")(x)


class Block(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = sepconv_jax.SeparableConv2D(
        3, 3, depth_multiplier=1, padding="same", data_format="channels_last",
        depthwise_constraint="max_norm")(x)
    return Inner()(x)


class _Net(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = sepconv_jax.SeparableConv2D(
        5, 3, depth_multiplier=2, padding="same", data_format="channels_last",
        pointwise_constraint=sjc.MaxNorm(0.5, axis=[0, 1, 2]),
        bias_constraint=_clip)(x)
    x = Block()(x)
    return sepconv_jax.SeparableConv2D(  # no constraints at all
        2, 3, depth_multiplier=1, padding="same",
        data_format="channels_last")(x)


# Layer path -> (in channels, Keras config with the same constraints).
_KERAS_LAYERS = {
    ("SeparableConv2D_0",): (3, lambda: dict(
        filters=5, kernel_size=3, depth_multiplier=2,
        pointwise_constraint=keras.constraints.MaxNorm(0.5, axis=[0, 1, 2]),
        bias_constraint=_keras_clip)),
    ("Block_0", "SeparableConv2D_0"): (5, lambda: dict(
        filters=3, kernel_size=3, depth_multiplier=1,
        depthwise_constraint="max_norm")),
    ("Block_0", "Inner_0", "SeparableConv2D_0"): (3, lambda: dict(
        filters=4, kernel_size=3, depth_multiplier=2,
        depthwise_constraint=keras.constraints.UnitNorm(axis=[0, 1]),
        pointwise_constraint=keras.constraints.MinMaxNorm(
            0.5, 1.0, rate=0.7, axis=2),
        bias_constraint="non_neg")),
    ("SeparableConv2D_1",): (4, lambda: dict(
        filters=2, kernel_size=3, depth_multiplier=1)),
}
_CONSTRAINED = {
    ("SeparableConv2D_0", "pointwise_kernel"),
    ("SeparableConv2D_0", "bias"),
    ("Block_0", "SeparableConv2D_0", "depthwise_kernel"),
    ("Block_0", "Inner_0", "SeparableConv2D_0", "depthwise_kernel"),
    ("Block_0", "Inner_0", "SeparableConv2D_0", "pointwise_kernel"),
    ("Block_0", "Inner_0", "SeparableConv2D_0", "bias"),
}
_NAMES = ("depthwise_kernel", "pointwise_kernel", "bias")
_X = np.zeros((1, 7, 7, 3), np.float32)


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _setup(seed):
  model = _Net()
  shapes = jax.eval_shape(model.init, jax.random.key(0), _X)["params"]
  rng = np.random.default_rng(seed)
  params = jax.tree_util.tree_map(
      lambda s: jnp.asarray(rng.normal(0, 0.7, s.shape), jnp.float32), shapes)
  grads = [jax.tree_util.tree_map(
      lambda s: jnp.asarray(rng.normal(0, 2.0, s.shape), jnp.float32), shapes)
           for _ in range(2)]
  return model, params, grads


def _keras_steps(params, grads, lr, momentum):
  """Keras layers with these weights after len(grads) SGD steps."""
  layers, variables, grad_lists = {}, [], [[] for _ in grads]
  for path, (c_in, config) in _KERAS_LAYERS.items():
    layer = keras.layers.SeparableConv2D(
        padding="same", data_format="channels_last", **_KERAS_FAST_INIT,
        **config())
    layer.build((None, 7, 7, c_in))
    p = _get(params, path)
    layer.set_weights([np.asarray(p[n]) for n in _NAMES])
    assert [v.path.split("/")[-1] for v in layer.trainable_variables] == list(
        _NAMES)
    layers[path] = layer
    variables += layer.trainable_variables
    for g, lst in zip(grads, grad_lists):
      lst += [np.asarray(_get(g, path)[n]) for n in _NAMES]
  opt = keras.optimizers.SGD(learning_rate=lr, momentum=momentum)
  for lst in grad_lists:
    opt.apply_gradients(list(zip(lst, variables)))
  return {path: dict(zip(_NAMES, (np.asarray(w) for w in layer.get_weights())))
          for path, layer in layers.items()}


def test_collect_constraints_paths():
  model, params, _ = _setup(0)
  cons = sepconv_jax.collect_constraints(model, _X)
  assert _CONSTRAINED <= set(cons), sorted(cons)
  w = np.random.default_rng(1).normal(size=(3, 3, 4, 1)).astype(np.float32)
  for path, fn in cons.items():
    assert isinstance(path, tuple) and all(isinstance(k, str) for k in path)
    _get(params, path)  # a real param path
    if path not in _CONSTRAINED:  # allowed only as the identity
      np.testing.assert_array_equal(fn(w), w)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_optax_chain_matches_keras_sgd(momentum):
  lr = 0.1
  model, params, grads = _setup(2)
  cons = sepconv_jax.collect_constraints(model, _X)
  tx = optax.chain(optax.sgd(lr, momentum=momentum or None),
                   sepconv_jax.apply_constraints(cons))
  plain = optax.sgd(lr, momentum=momentum or None)
  state, plain_state = tx.init(params), plain.init(params)
  update = jax.jit(tx.update)
  ours, plain_params = params, params
  for g in grads:
    updates, state = update(g, state, ours)
    ours = optax.apply_updates(ours, updates)
    plain_updates, plain_state = plain.update(g, plain_state, plain_params)
    plain_params = optax.apply_updates(plain_params, plain_updates)
  expected = _keras_steps(params, grads, lr, momentum)
  for layer_path, weights in expected.items():
    for name, value in weights.items():
      path = layer_path + (name,)
      actual = _get(ours, path)
      assert actual.dtype == jnp.float32
      np.testing.assert_allclose(actual, value, rtol=1e-6, atol=ATOL,
                                 err_msg=str(path))
      if path not in _CONSTRAINED:
        # Untouched by apply_constraints: the plain optax step.
        np.testing.assert_allclose(actual, _get(plain_params, path),
                                   rtol=0, atol=ATOL, err_msg=str(path))
      elif momentum == 0.0:
        # The constraint did change this param (the test can fail).
        assert not np.allclose(value, _get(plain_params, path), atol=1e-3), (
            path)


def test_update_is_jittable_and_matches_eager():
  lr = 0.05
  model, params, grads = _setup(3)
  tx = optax.chain(optax.sgd(lr),
                   sepconv_jax.apply_constraints(
                       sepconv_jax.collect_constraints(model, _X)))
  state = tx.init(params)
  eager_updates, _ = tx.update(grads[0], state, params)
  jit_updates, _ = jax.jit(tx.update)(grads[0], state, params)
  eager = optax.apply_updates(params, eager_updates)
  jitted = optax.apply_updates(params, jit_updates)
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=ATOL),
      eager, jitted)
  expected = _keras_steps(params, grads[:1], lr, 0.0)
  for layer_path, weights in expected.items():
    for name, value in weights.items():
      np.testing.assert_allclose(_get(jitted, layer_path + (name,)), value,
                                 rtol=1e-6, atol=ATOL)


def test_constraints_not_applied_in_forward_pass():
  """As in Keras, the forward pass uses the params as they are."""
  rng = np.random.default_rng(4)
  params = {"depthwise_kernel": rng.normal(size=DW).astype(np.float32),
            "pointwise_kernel": rng.normal(size=PW).astype(np.float32),
            "bias": rng.normal(size=B).astype(np.float32)}
  x = rng.normal(size=(2, 5, 5, 4)).astype(np.float32)
  kw = dict(filters=5, kernel_size=3, depth_multiplier=2,
            data_format="channels_last")
  constrained = sepconv_jax.SeparableConv2D(
      **kw, depthwise_constraint="non_neg", pointwise_constraint="unit_norm",
      bias_constraint="non_neg")
  bare = sepconv_jax.SeparableConv2D(**kw)
  y = constrained.apply({"params": params}, x)
  np.testing.assert_array_equal(y, bare.apply({"params": params}, x))
  # Whereas constraining the params first does change the output.
  cons = sepconv_jax.collect_constraints(constrained, x)
  projected = {k: cons[(k,)](v) for k, v in params.items()}
  assert not np.allclose(y, bare.apply({"params": projected}, x), atol=1e-3)


def test_list_axis_is_stored_as_a_tuple_so_constraints_stay_hashable():
  # Keras accepts a list `axis`; a list would make the constraint (and any
  # module holding it) unhashable, breaking jit with static arguments.
  w = jnp.arange(72.0).reshape(3, 3, 4, 2)
  c = sepconv_jax.constraints.MaxNorm(0.8, axis=[0, 1, 2])
  assert c.axis == (0, 1, 2)
  np.testing.assert_allclose(
      jax.jit(c)(w), keras.constraints.MaxNorm(0.8, axis=[0, 1, 2])(w),
      rtol=1e-6)
  hash(sepconv_jax.SeparableConv2D(2, 3, depthwise_constraint=c))
