"""Regularization penalties of `sepconv_jax.SeparableConv2D` against Keras 3.

The oracle is `keras.layers.SeparableConv2D(...).losses` for the same weights
and input (Keras divides an activity penalty by the batch size), plus a few
closed forms (sums of a nested mapping, gradients of L2).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

import sepconv_jax
from sepconv_jax import regularizers as sj_regularizers

# Keras's own random initializers cost seconds of compiling per shape; the
# weights are replaced by set_weights() anyway.
_KERAS_FAST_INIT = dict(depthwise_initializer="zeros",
                        pointwise_initializer="zeros")

N, H, W, C, M, F, K = 3, 6, 6, 3, 2, 4, 3
RTOL, ATOL = 2e-5, 1e-6
SLOTS = ("depthwise_regularizer", "pointwise_regularizer", "bias_regularizer",
         "activity_regularizer")


def _cubic(w):
  """A plain callable regularizer (not a Keras name or class)."""
  return 0.25 * jnp.sum(jnp.abs(w) ** 3) + 0.5 * jnp.max(w)


def _keras_cubic(w):
  return _cubic(keras.ops.convert_to_tensor(w))


# id -> (factory of ours, factory of the Keras equivalent). Factories, so
# that every layer gets fresh objects.
REGULARIZERS = {
    "l1": (lambda: "l1", lambda: "l1"),
    "l2": (lambda: "l2", lambda: "l2"),
    # Keras 3.15's get() rejects "l1_l2"; the spec gives it tf.keras's
    # documented defaults, l1 = l2 = 0.01.
    "l1_l2": (lambda: "l1_l2", lambda: keras.regularizers.L1L2(0.01, 0.01)),
    # Keras 3's own names of the L1L2 class: l1 = l2 = 0 (no penalty).
    "l1l2": (lambda: "l1l2", lambda: "l1l2"),
    "L1L2": (lambda: "L1L2", lambda: "L1L2"),
    "L1(0.1)": (lambda: sj_regularizers.L1(0.1),
                lambda: keras.regularizers.L1(0.1)),
    "L2(0.3)": (lambda: sj_regularizers.L2(0.3),
                lambda: keras.regularizers.L2(0.3)),
    "L1L2(0.1,0.2)": (lambda: sj_regularizers.L1L2(0.1, 0.2),
                      lambda: keras.regularizers.L1L2(0.1, 0.2)),
    "L1L2(l2=0.05)": (lambda: sj_regularizers.L1L2(l2=0.05),
                      lambda: keras.regularizers.L1L2(l2=0.05)),
    "callable": (lambda: _cubic, lambda: _keras_cubic),
}


def _params(seed, c=C, m=M, f=F, k=K):
  rng = np.random.default_rng(seed)
  return {
      "depthwise_kernel": rng.normal(0, 0.5, (k, k, c, m)).astype(np.float32),
      "pointwise_kernel": rng.normal(0, 0.5, (1, 1, c * m, f)).astype(
          np.float32),
      "bias": rng.normal(0, 0.5, (f,)).astype(np.float32),
  }


def _input(seed, shape=(N, H, W, C)):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _ours(params, x, **kw):
  layer = sepconv_jax.SeparableConv2D(
      F, K, depth_multiplier=M, data_format="channels_last", **kw)
  jparams = jax.tree_util.tree_map(jnp.asarray, params)
  y, state = layer.apply({"params": jparams}, jnp.asarray(x),
                         mutable=["losses"])
  return y, state


def _keras(params, x, **kw):
  """Keras layer with these weights, called on x: (losses, output)."""
  layer = keras.layers.SeparableConv2D(
      F, K, depth_multiplier=M, data_format="channels_last",
      **_KERAS_FAST_INIT, **kw)
  layer.build(x.shape)
  layer.set_weights([params["depthwise_kernel"], params["pointwise_kernel"],
                     params["bias"]])
  y = layer(x)
  return [float(v) for v in layer.losses], np.asarray(y)


def _close(actual, expected):
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected,
                             rtol=RTOL, atol=ATOL)


def test_keras_names_and_defaults():
  """The Keras objects the names stand for (the oracle's own defaults)."""
  assert float(keras.regularizers.get("l1").l1) == pytest.approx(0.01)
  assert float(keras.regularizers.get("l2").l2) == pytest.approx(0.01)
  for name in ("l1l2", "L1L2"):
    assert keras.regularizers.get(name).l1 == 0.0
    assert keras.regularizers.get(name).l2 == 0.0
  assert keras.regularizers.L1L2(0.01, 0.01).l1 == pytest.approx(0.01)


@pytest.mark.parametrize("slot", SLOTS)
@pytest.mark.parametrize("reg", sorted(REGULARIZERS))
def test_single_penalty_matches_keras(reg, slot):
  ours_f, keras_f = REGULARIZERS[reg]
  params, x = _params(0), _input(1)
  y, state = _ours(params, x, **{slot: ours_f()})
  keras_losses, keras_y = _keras(params, x, **{slot: keras_f()})
  assert len(keras_losses) == 1
  _close(y, keras_y)
  losses = state["losses"]
  if slot == "activity_regularizer":
    assert isinstance(losses[slot], tuple) and len(losses[slot]) == 1
    assert jnp.ndim(losses[slot][0]) == 0
    _close(losses[slot][0], keras_losses[0])
  else:
    assert jnp.ndim(losses[slot]) == 0
    _close(losses[slot], keras_losses[0])
  # No other penalty is recorded (absent, or zero).
  for other in SLOTS:
    if other != slot:
      assert float(sepconv_jax.regularization_loss(
          {other: losses.get(other, ())})) == 0.0, other
  _close(sepconv_jax.regularization_loss(state), keras_losses[0])
  _close(sepconv_jax.regularization_loss(state["losses"]), keras_losses[0])


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("reg", sorted(REGULARIZERS))
def test_all_penalties_with_activation_match_keras(reg, activation):
  ours_f, keras_f = REGULARIZERS[reg]
  params, x = _params(2), _input(3)
  _, state = _ours(params, x, activation=activation,
                   **{slot: ours_f() for slot in SLOTS})
  keras_losses, _ = _keras(params, x, activation=activation,
                           **{slot: keras_f() for slot in SLOTS})
  assert len(keras_losses) == 4
  losses = state["losses"]
  assert len(losses["activity_regularizer"]) == 1
  ours = [losses["depthwise_regularizer"], losses["pointwise_regularizer"],
          losses["bias_regularizer"], losses["activity_regularizer"][0]]
  # Compared as multisets: Keras lists its activity loss first.
  _close(sorted(float(v) for v in ours), sorted(keras_losses))
  _close(sepconv_jax.regularization_loss(state), sum(keras_losses))


def test_activity_penalty_uses_activated_output():
  """relu changes the L1 activity penalty; Keras penalizes after it."""
  params, x = _params(4), _input(5)
  reg = lambda: sj_regularizers.L1(0.1)
  _, plain = _ours(params, x, activity_regularizer=reg())
  _, relu = _ours(params, x, activation="relu", activity_regularizer=reg())
  keras_plain, _ = _keras(params, x,
                          activity_regularizer=keras.regularizers.L1(0.1))
  keras_relu, _ = _keras(params, x, activation="relu",
                         activity_regularizer=keras.regularizers.L1(0.1))
  assert keras_relu[0] < 0.9 * keras_plain[0]  # the test can tell them apart
  _close(plain["losses"]["activity_regularizer"][0], keras_plain[0])
  _close(relu["losses"]["activity_regularizer"][0], keras_relu[0])


@pytest.mark.parametrize("batch_shape", [(3,), (2, 3), ()])
def test_activity_penalty_divided_by_batch_size(batch_shape):
  """Keras divides by shape[0]; with several batch dims, by their product."""
  params = _params(6)
  x = _input(7, batch_shape + (H, W, C))
  n = int(np.prod(batch_shape))
  _, state = _ours(params, x, activation="sigmoid",
                   activity_regularizer=sj_regularizers.L2(0.3))
  keras_losses, _ = _keras(
      params, x.reshape((n, H, W, C)), activation="sigmoid",
      activity_regularizer=keras.regularizers.L2(0.3))
  _close(state["losses"]["activity_regularizer"][0], keras_losses[0])
  # And it really is divided: the undivided sum is n times as large.
  _, keras_y = _keras(params, x.reshape((n, H, W, C)), activation="sigmoid")
  _close(keras_losses[0] * n, 0.3 * np.sum(np.square(keras_y, dtype=np.float64)))


def test_shared_layer_called_twice():
  """Weight penalties once per layer, one activity entry per call."""

  class Twice(nn.Module):
    @nn.compact
    def __call__(self, x1, x2):
      conv = sepconv_jax.SeparableConv2D(
          F, K, depth_multiplier=M, data_format="channels_last",
          activation="relu", depthwise_regularizer="l2",
          pointwise_regularizer=sj_regularizers.L1(0.1),
          activity_regularizer=sj_regularizers.L2(0.3), name="conv")
      return conv(x1), conv(x2)

  params = _params(8)
  x1, x2 = _input(9), _input(10, (2, H, W, C))
  _, state = Twice().apply({"params": {"conv": params}}, x1, x2,
                           mutable=["losses"])
  losses = state["losses"]["conv"]
  k1, _ = _keras(params, x1, activation="relu", depthwise_regularizer="l2",
                 pointwise_regularizer=keras.regularizers.L1(0.1))
  act1, _ = _keras(params, x1, activation="relu",
                   activity_regularizer=keras.regularizers.L2(0.3))
  act2, _ = _keras(params, x2, activation="relu",
                   activity_regularizer=keras.regularizers.L2(0.3))
  assert len(k1) == 2 and len(act1) == 1 and len(act2) == 1
  assert jnp.ndim(losses["depthwise_regularizer"]) == 0
  assert jnp.ndim(losses["pointwise_regularizer"]) == 0
  _close(sorted([float(losses["depthwise_regularizer"]),
                 float(losses["pointwise_regularizer"])]), sorted(k1))
  assert len(losses["activity_regularizer"]) == 2
  _close(losses["activity_regularizer"][0], act1[0])
  _close(losses["activity_regularizer"][1], act2[0])
  _close(sepconv_jax.regularization_loss(state), sum(k1) + act1[0] + act2[0])


class _Block(nn.Module):
  @nn.compact
  def __call__(self, x):
    return sepconv_jax.SeparableConv2D(
        4, 3, depth_multiplier=1, padding="same", data_format="channels_last",
        depthwise_regularizer=sj_regularizers.L2(0.3), bias_regularizer="l1",
        activity_regularizer=sj_regularizers.L1(0.1), activation="tanh",
        name="conv1")(x)


class _Outer(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = _Block(name="block")(x)
    return sepconv_jax.SeparableConv2D(
        2, 3, depth_multiplier=3, padding="valid", data_format="channels_last",
        pointwise_regularizer=_cubic, bias_regularizer="l2",
        activity_regularizer="l2", name="conv2")(x)


class _Net(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = sepconv_jax.SeparableConv2D(
        5, 3, depth_multiplier=2, padding="same", data_format="channels_last",
        activation="relu", pointwise_regularizer=sj_regularizers.L1L2(0.1, 0.2),
        name="conv0")(x)
    x = _Outer(name="outer")(x)
    return x


def _keras_chain(params, x):
  """The same three layers in Keras: per-layer losses and the output."""
  configs = [
      (params["conv0"], dict(
          filters=5, kernel_size=3, depth_multiplier=2, padding="same",
          activation="relu",
          pointwise_regularizer=keras.regularizers.L1L2(0.1, 0.2))),
      (params["outer"]["block"]["conv1"], dict(
          filters=4, kernel_size=3, depth_multiplier=1, padding="same",
          depthwise_regularizer=keras.regularizers.L2(0.3),
          bias_regularizer="l1", activation="tanh",
          activity_regularizer=keras.regularizers.L1(0.1))),
      (params["outer"]["conv2"], dict(
          filters=2, kernel_size=3, depth_multiplier=3, padding="valid",
          pointwise_regularizer=_keras_cubic, bias_regularizer="l2",
          activity_regularizer="l2")),
  ]
  all_losses = []
  for p, kw in configs:
    layer = keras.layers.SeparableConv2D(
        data_format="channels_last", **_KERAS_FAST_INIT, **kw)
    layer.build(x.shape)
    layer.set_weights([np.asarray(p["depthwise_kernel"]),
                       np.asarray(p["pointwise_kernel"]),
                       np.asarray(p["bias"])])
    x = np.asarray(layer(x))
    all_losses.append([float(v) for v in layer.losses])
  return all_losses, x


def test_nested_model_matches_keras():
  x = _input(11, (2, 7, 7, 3))
  model = _Net()
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  # Not sown at init.
  assert not shapes.get("losses")
  # Random params (biases too, so that their penalties are not zero).
  rng = np.random.default_rng(19)
  params = jax.tree_util.tree_map(
      lambda s: rng.normal(0, 0.5, s.shape).astype(np.float32),
      shapes["params"])
  y, state = jax.jit(lambda p, x: model.apply({"params": p}, x,
                                             mutable=["losses"]))(params, x)
  keras_losses, keras_y = _keras_chain(params, x)
  _close(y, keras_y)
  losses = state["losses"]
  assert set(losses) == {"conv0", "outer"}
  _close(losses["conv0"]["pointwise_regularizer"], keras_losses[0][0])
  block = losses["outer"]["block"]["conv1"]
  _close(sorted([float(block["depthwise_regularizer"]),
                 float(block["bias_regularizer"]),
                 float(block["activity_regularizer"][0])]),
         sorted(keras_losses[1]))
  conv2 = losses["outer"]["conv2"]
  _close(sorted([float(conv2["pointwise_regularizer"]),
                 float(conv2["bias_regularizer"]),
                 float(conv2["activity_regularizer"][0])]),
         sorted(keras_losses[2]))
  total = sum(sum(l) for l in keras_losses)
  _close(sepconv_jax.regularization_loss(state), total)
  _close(sepconv_jax.regularization_loss(losses), total)
  _close(jax.jit(sepconv_jax.regularization_loss)(state), total)


def test_penalty_recorded_on_each_apply():
  layer = sepconv_jax.SeparableConv2D(
      F, K, depth_multiplier=M, data_format="channels_last",
      depthwise_regularizer="l1", activity_regularizer="l2")
  x = _input(12)
  # Not sown at init (the shapes are enough to tell).
  variables = jax.eval_shape(layer.init, jax.random.key(0), x)
  assert set(variables) == {"params"}
  for seed in (13, 14):
    params = _params(seed)
    y, state = _ours(params, x, depthwise_regularizer="l1",
                     activity_regularizer="l2")
    # Without a mutable "losses" collection, apply just returns the output.
    y_plain = layer.apply({"params": jax.tree_util.tree_map(jnp.asarray,
                                                            params)}, x)
    np.testing.assert_array_equal(y_plain, y)
    keras_losses, _ = _keras(params, x, depthwise_regularizer="l1",
                             activity_regularizer="l2")
    # A fresh record each time, not accumulated over applies.
    assert len(state["losses"]["activity_regularizer"]) == 1
    _close(sepconv_jax.regularization_loss(state), sum(keras_losses))


def test_no_regularizers_gives_zero():
  params, x = _params(15), _input(16)
  _, state = _ours(params, x)
  assert float(sepconv_jax.regularization_loss(state)) == 0.0
  assert float(sepconv_jax.regularization_loss({})) == 0.0
  assert float(sepconv_jax.regularization_loss({"losses": {}})) == 0.0
  assert jnp.ndim(sepconv_jax.regularization_loss({})) == 0


def test_regularization_loss_sums_every_leaf():
  losses = {"a": {"b": jnp.float32(1.0), "c": (jnp.float32(2.0),
                                              jnp.float32(3.0))},
            "d": {"e": {"f": {"g": jnp.float32(4.0)}}}}
  assert float(sepconv_jax.regularization_loss(losses)) == 10.0
  assert float(sepconv_jax.regularization_loss({"losses": losses})) == 10.0


def test_gradient_of_penalty():
  """d/dw of L2(0.3) is 0.6 w; of "l1" is 0.01 sign(w); jit-able."""
  layer = sepconv_jax.SeparableConv2D(
      F, K, depth_multiplier=M, data_format="channels_last",
      depthwise_regularizer=sj_regularizers.L2(0.3), bias_regularizer="l1")
  params = jax.tree_util.tree_map(jnp.asarray, _params(17))
  x = jnp.asarray(_input(18))

  @jax.jit
  def penalty(p):
    _, state = layer.apply({"params": p}, x, mutable=["losses"])
    return sepconv_jax.regularization_loss(state)

  grads = jax.grad(penalty)(params)
  _close(grads["depthwise_kernel"], 0.6 * np.asarray(params["depthwise_kernel"]))
  _close(grads["bias"], 0.01 * np.sign(np.asarray(params["bias"])))
  _close(grads["pointwise_kernel"], 0.0)
  expected = (0.3 * np.sum(np.square(params["depthwise_kernel"],
                                     dtype=np.float64))
              + 0.01 * np.sum(np.abs(params["bias"], dtype=np.float64)))
  _close(penalty(params), expected)
