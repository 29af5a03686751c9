"""Serialization round trips and JAX/Flax transforms.

* flax.serialization (msgpack bytes and state dicts) and orbax checkpoints
  give back the params bit for bit (same dtypes, same bytes), and the
  outputs after the round trip are bit-identical.
* jax.eval_shape of init, apply and the function equals the real shapes and
  dtypes, and compiles nothing.
* jax.checkpoint and nn.remat: same values and gradients as without.
* nn.scan over a stack of layers (with nn.remat inside, too) equals the loop.
* jax.jit with the module as a static argument: equal modules share one
  compiled program; a different configuration gets its own.

The transforms run under "auto" and every implementation of
``tests/implementations.py``'s `BROAD` with primitives of its own (see
`TRANSFORMED`); the round trips do not depend on the implementation.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sepconv_jax

try:
  from tests import implementations
except ImportError:  # tests/ itself on sys.path
  import implementations

IMPLS = ("auto",) + implementations.BROAD
# The transforms (eval_shape, checkpoint, remat, scan) meet "lax" as JAX's
# own ops; they are checked on "auto" (its platform branch under each
# transform) and on the implementations with primitives of their own. "auto"
# runs one of those bit for bit (tests/test_numerics.py), so the costlier
# tests run the concrete ones only.
TRANSFORMED = ("auto",) + tuple(i for i in implementations.BROAD
                                if i != "lax")
CONCRETE = tuple(i for i in TRANSFORMED if i != "auto")
KEY = jax.random.key(0)


def _x(shape=(2, 9, 8, 3), seed=0, dtype=np.float32):
  return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _layer(impl, **kw):
  config = dict(filters=4, kernel_size=3, padding="same", depth_multiplier=2,
                bias_initializer="random_normal", implementation=impl)
  return sepconv_jax.SeparableConv2D(**dict(config, **kw))


def _assert_bit_identical(a, b):
  """Same tree structure, dtypes, shapes and bytes."""
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for u, v in zip(leaves_a, leaves_b):
    u, v = np.asarray(u), np.asarray(v)
    assert u.dtype == v.dtype and u.shape == v.shape, (u.dtype, v.dtype)
    assert u.tobytes() == v.tobytes()


class TwoLayers(nn.Module):
  """A small nested model, so params have non-trivial paths."""

  impl: str
  param_dtype: type = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = _layer(self.impl, activation="relu", param_dtype=self.param_dtype)(x)
    return _layer(self.impl, filters=5, strides=2,
                  param_dtype=self.param_dtype)(x)


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16,
           "float16": jnp.float16}


# --------------------------------------------------------------------------
# Serialization.
# --------------------------------------------------------------------------
# Params are data: every dtype once, every implementation once.
# The params do not depend on the implementation, and an output computed
# again from restored params is bit for bit the same whichever computes it:
# "auto" in every param dtype.
_ROUND_TRIPS = [("auto", d) if d == "bfloat16" else pytest.param(
    "auto", d, marks=pytest.mark.full("bfloat16 keeps a dtype already"))
                for d in sorted(_DTYPES)]


@pytest.mark.parametrize("impl,dtype", _ROUND_TRIPS)
def test_msgpack_round_trip(impl, dtype):
  model = TwoLayers(impl, _DTYPES[dtype])
  x = _x()
  variables = model.init(KEY, x)
  apply = jax.jit(model.apply)
  y = apply(variables, x)

  data = flax.serialization.to_bytes(variables)
  template = jax.tree.map(jnp.zeros_like, variables)
  restored = flax.serialization.from_bytes(template, data)
  _assert_bit_identical(restored, variables)
  _assert_bit_identical(apply(restored, x), y)

  # The state-dict form, with no template at all.
  state = flax.serialization.msgpack_restore(
      flax.serialization.msgpack_serialize(
          flax.serialization.to_state_dict(variables)))
  _assert_bit_identical(state, jax.tree.map(np.asarray, dict(variables)))
  _assert_bit_identical(apply(state, x), y)


@pytest.mark.parametrize("impl,dtype", [("auto", "bfloat16")])
def test_orbax_round_trip(impl, dtype, tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  model = TwoLayers(impl, _DTYPES[dtype])
  x = _x()
  variables = model.init(KEY, x)
  apply = jax.jit(model.apply)
  y = apply(variables, x)

  checkpointer = ocp.StandardCheckpointer()
  path = tmp_path / "params"
  checkpointer.save(path, variables)
  checkpointer.wait_until_finished()
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, variables)
  restored = checkpointer.restore(path, abstract)
  checkpointer.close()
  _assert_bit_identical(restored, variables)
  _assert_bit_identical(apply(restored, x), y)


def test_params_of_every_implementation_are_interchangeable():
  """Params are data only: one init, any implementation, close outputs."""
  x = _x()
  variables = TwoLayers("auto").init(KEY, x)
  outputs = [np.asarray(jax.jit(TwoLayers(impl).apply)(variables, x))
             for impl in IMPLS]
  for y in outputs[1:]:
    np.testing.assert_allclose(y, outputs[0], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------
# eval_shape.
# --------------------------------------------------------------------------
@pytest.mark.parametrize("impl", TRANSFORMED)
def test_eval_shape_matches_real_shapes(impl):
  model = TwoLayers(impl, jnp.bfloat16)
  x = _x((3, 2, 11, 10, 3))  # two leading batch dims
  abstract_vars = jax.eval_shape(model.init, KEY, x)
  variables = model.init(KEY, x)
  same = jax.tree.map(lambda a, s: (a.shape, a.dtype) == (s.shape, s.dtype),
                      variables, abstract_vars)
  assert all(jax.tree.leaves(same))

  y = jax.jit(model.apply)(variables, x)
  out = jax.eval_shape(model.apply, abstract_vars, x)
  assert (out.shape, out.dtype) == (y.shape, y.dtype) == (
      (3, 2, 6, 5, 5), jnp.float32)

  grads = jax.eval_shape(jax.grad(lambda v, x: jnp.sum(model.apply(v, x))),
                         abstract_vars, x)
  same = jax.tree.map(lambda g, s: (g.shape, g.dtype) == (s.shape, s.dtype),
                      grads, abstract_vars)
  assert all(jax.tree.leaves(same))

  fn = jax.eval_shape(
      functools.partial(sepconv_jax.separable_conv2d, strides=2,
                        padding="valid", data_format="channels_first",
                        implementation=impl),
      jax.ShapeDtypeStruct((4, 3, 9, 7), jnp.float16),
      jax.ShapeDtypeStruct((3, 2, 3, 2), jnp.float16),
      jax.ShapeDtypeStruct((1, 1, 6, 8), jnp.float16),
      jax.ShapeDtypeStruct((8,), jnp.float16))
  assert (fn.shape, fn.dtype) == ((4, 8, 4, 3), jnp.float16)


def test_eval_shape_compiles_nothing():
  """Shapes only: a layer far too large to run is still evaluated."""
  layer = sepconv_jax.SeparableConv2D(1024, 7, padding="same",
                                      depth_multiplier=4)
  x = jax.ShapeDtypeStruct((64, 1024, 1024, 256), jnp.float32)  # 64 GiB
  variables = jax.eval_shape(layer.init, KEY, x)
  assert variables["params"]["pointwise_kernel"].shape == (1, 1, 1024, 1024)
  assert jax.eval_shape(layer.apply, variables, x).shape == (
      64, 1024, 1024, 1024)


# --------------------------------------------------------------------------
# jax.checkpoint / nn.remat.
# --------------------------------------------------------------------------
@pytest.mark.parametrize("impl", TRANSFORMED)
@pytest.mark.parametrize("policy", [None, "dots_saveable"])
def test_jax_checkpoint_function(impl, policy):
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 10, 9, 3)).astype(np.float32)
  dk = rng.standard_normal((3, 3, 3, 2)).astype(np.float32)
  pk = rng.standard_normal((1, 1, 6, 4)).astype(np.float32)
  b = rng.standard_normal((4,)).astype(np.float32)

  def loss(x, dk, pk, b):
    y = sepconv_jax.separable_conv2d(x, dk, pk, b, strides=2, padding="same",
                                     implementation=impl)
    return jnp.sum(jnp.tanh(y))

  kwargs = {} if policy is None else dict(
      policy=getattr(jax.checkpoint_policies, policy))
  plain = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
  remat = jax.jit(jax.value_and_grad(jax.checkpoint(loss, **kwargs),
                                     argnums=(0, 1, 2, 3)))
  for u, v in zip(jax.tree.leaves(plain(x, dk, pk, b)),
                  jax.tree.leaves(remat(x, dk, pk, b))):
    np.testing.assert_allclose(np.asarray(v), np.asarray(u), rtol=1e-5,
                               atol=1e-6)


class RematStack(nn.Module):
  impl: str
  remat: bool

  @nn.compact
  def __call__(self, x):
    cls = nn.remat(sepconv_jax.SeparableConv2D) if self.remat else (
        sepconv_jax.SeparableConv2D)
    for i in range(2):
      x = cls(3, 3, padding="same", activation="gelu",
              depthwise_regularizer="l2", activity_regularizer="l1",
              implementation=self.impl, name=f"conv{i}")(x)
    return x


@pytest.mark.parametrize("impl", CONCRETE)
def test_nn_remat_module(impl):
  x = _x((2, 8, 8, 3))
  plain, remat = RematStack(impl, False), RematStack(impl, True)
  variables = plain.init(KEY, x)
  assert jax.tree.map(jnp.shape, jax.eval_shape(remat.init, KEY, x)) == (
      jax.tree.map(jnp.shape, variables))
  params = variables["params"]

  def loss(model, params):
    y, state = model.apply({"params": params}, x, mutable=["losses"])
    return jnp.sum(y ** 2) + sepconv_jax.regularization_loss(state)

  ref_value, ref_grads = jax.jit(jax.value_and_grad(
      functools.partial(loss, plain)))(params)
  value, grads = jax.jit(jax.value_and_grad(
      functools.partial(loss, remat)))(params)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  for u, v in zip(jax.tree.leaves(ref_grads), jax.tree.leaves(grads)):
    np.testing.assert_allclose(np.asarray(v), np.asarray(u), rtol=1e-4,
                               atol=1e-5)


# --------------------------------------------------------------------------
# nn.scan over a stack of layers.
# --------------------------------------------------------------------------
class Block(nn.Module):
  impl: str

  @nn.compact
  def __call__(self, x, _):
    y = sepconv_jax.SeparableConv2D(
        x.shape[-1], 3, padding="same", activation="relu",
        depthwise_regularizer="l2", bias_initializer="random_normal",
        implementation=self.impl)(x)
    return x + y, None


def _scanned(impl, depth, remat=False):
  block = nn.remat(Block) if remat else Block
  return nn.scan(block, variable_axes={"params": 0, "losses": 0},
                 split_rngs={"params": True}, length=depth)(impl)


@pytest.mark.parametrize("impl", CONCRETE)
@pytest.mark.parametrize("remat", [False, True], ids=["scan", "scan+remat"])
def test_nn_scan_over_a_stack(impl, remat):
  depth = 4
  x = _x((2, 7, 6, 3))
  stack = _scanned(impl, depth, remat)
  variables = stack.init(KEY, x, None)
  params = variables["params"]
  shapes = jax.tree.map(jnp.shape, params)
  assert shapes == {"SeparableConv2D_0": {
      "depthwise_kernel": (depth, 3, 3, 3, 1),
      "pointwise_kernel": (depth, 1, 1, 3, 3), "bias": (depth, 3)}}
  # Each layer got its own random init.
  dks = np.asarray(params["SeparableConv2D_0"]["depthwise_kernel"])
  assert len({dks[i].tobytes() for i in range(depth)}) == depth

  (y, _), state = jax.jit(
      lambda p, x: stack.apply({"params": p}, x, None, mutable=["losses"]))(
          params, x)

  # The same stack as a Python loop over the sliced params.
  block = jax.jit(functools.partial(Block(impl).apply, mutable=["losses"]))
  expected, penalties = x, []
  for i in range(depth):
    p = jax.tree.map(lambda a, i=i: a[i], params)
    (expected, _), s = block({"params": p}, expected, None)
    penalties.append(sepconv_jax.regularization_loss(s))
  np.testing.assert_allclose(np.asarray(y), np.asarray(expected), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(sepconv_jax.regularization_loss(state),
                             np.sum(penalties), rtol=1e-5)

  def loss(p):
    (y, _), _ = stack.apply({"params": p}, x, None, mutable=["losses"])
    return jnp.sum(y ** 2)

  grads = jax.jit(jax.grad(loss))(params)
  assert jax.tree.map(jnp.shape, grads) == shapes
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


# --------------------------------------------------------------------------
# jit with the module as a static argument.
# --------------------------------------------------------------------------
@pytest.mark.parametrize("impl", TRANSFORMED)
def test_jit_with_module_static(impl):
  traces = []

  @functools.partial(jax.jit, static_argnums=0)
  def apply(layer, params, x):
    traces.append(layer)
    return layer.apply({"params": params}, x)

  x = _x()
  layer = _layer(impl, activation="relu")
  params = layer.init(KEY, x)["params"]
  y = apply(layer, params, x)
  np.testing.assert_array_equal(np.asarray(y),
                                np.asarray(jax.jit(layer.apply)(
                                    {"params": params}, x)))
  # An equal but distinct module: the compiled program is reused.
  twin = _layer(impl, activation="relu")
  assert twin is not layer and twin == layer and hash(twin) == hash(layer)
  apply(twin, params, x)
  assert len(traces) == 1
  # A different configuration (same param shapes) is traced anew.
  other = _layer(impl, activation="tanh")
  y_other = apply(other, params, x)
  assert len(traces) == 2
  assert not np.allclose(np.asarray(y_other), np.asarray(y))

  # Static module and static kwargs through a grad, too.
  @functools.partial(jax.jit, static_argnums=(0,))
  def grad(layer, params, x):
    return jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, x)))(params)

  g = grad(layer, params, x)
  assert jax.tree.map(jnp.shape, g) == jax.tree.map(jnp.shape, params)
