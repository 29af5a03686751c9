"""1-D and 3-D separable layers, DepthwiseConv1D/2D, richer padding, and NNX.

Expected values come from the N-D float64 reference (tests/reference_nd.py)
or from the real Keras layers (SeparableConv1D, DepthwiseConv1D/2D).
"""

import copy
import itertools
import pickle
import re

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
import pytest
from flax import nnx

import sepconv_jax
from implementations import BROAD
from reference_nd import depthwise as ref_depthwise
from reference_nd import separable as ref_separable

LINEN = {1: sepconv_jax.SeparableConv1D, 2: sepconv_jax.SeparableConv2D,
         3: sepconv_jax.SeparableConv3D}
NNX = {1: sepconv_jax.nnx.SeparableConv1D, 2: sepconv_jax.nnx.SeparableConv2D,
       3: sepconv_jax.nnx.SeparableConv3D}
SPATIAL = {1: (9,), 2: (7, 6), 3: (5, 6, 5)}
KERNEL = {1: (3,), 2: (3, 2), 3: (2, 3, 2)}
TOL = dict(rtol=1e-5, atol=1e-5)


def _rng(seed):
  return np.random.default_rng(seed)


def _arrays(rank, channels, multiplier, filters, channels_last, seed=0,
            batch=2, kernel=None):
  rng = _rng(seed)
  kernel = KERNEL[rank] if kernel is None else kernel
  spatial = SPATIAL[rank]
  shape = ((batch, *spatial, channels) if channels_last
           else (batch, channels, *spatial))
  x = rng.standard_normal(shape).astype(np.float32)
  dk = rng.standard_normal((*kernel, channels, multiplier)).astype(np.float32)
  pk = rng.standard_normal(
      (*(1,) * rank, channels * multiplier, filters)).astype(np.float32)
  b = rng.standard_normal((filters,)).astype(np.float32)
  return x, dk, pk, b


def _explicit(rank):
  return tuple(((i % 3), (i + 1) % 2 + 1) for i in range(rank))


def _cases():
  """(rank, padding, padding_mode, strides, dilation, channels_last)."""
  cases = []
  for rank in (1, 2, 3):
    paddings = ["valid", "same", _explicit(rank)]
    if rank == 1:
      paddings.append("causal")
    for padding, mode in itertools.product(paddings, sepconv_jax.PADDING_MODES):
      if padding == "valid" and mode != "zeros":
        continue  # nothing is padded, so the mode cannot matter
      for k, (strides, dilation, last) in enumerate(
          ((1, 1, True), (2, 1, False), (1, 2, True))):
        # One geometry per (rank, padding, mode) by default, cycling; the
        # other two in the full profile.
        marks = () if k == len(cases) // 3 % 3 else pytest.mark.full(
            "the other geometries")
        cases.append(pytest.param(rank, padding, mode, strides, dilation,
                                  last, marks=marks))
  return cases


@pytest.mark.parametrize("rank,padding,mode,strides,dilation,last", _cases())
def test_separable_layers_match_reference(rank, padding, mode, strides,
                                          dilation, last):
  x, dk, pk, b = _arrays(rank, 3, 2, 4, last, seed=rank)
  layer = LINEN[rank](
      4, KERNEL[rank], strides=strides, padding=padding, padding_mode=mode,
      dilation_rate=dilation, depth_multiplier=2,
      data_format="channels_last" if last else "channels_first")
  params = {"depthwise_kernel": dk, "pointwise_kernel": pk, "bias": b}
  y = layer.apply({"params": params}, x)
  expected = ref_separable(x, dk, pk, b, (strides,) * rank, padding,
                           (dilation,) * rank, last, mode)
  np.testing.assert_allclose(y, expected, **TOL)
  assert y.shape == layer.compute_output_shape(x.shape)


@pytest.mark.parametrize("padding", ["same", ((2, 0), (1, 3))])
@pytest.mark.parametrize("mode", sepconv_jax.PADDING_MODES)
@pytest.mark.parametrize("implementation", ("auto",) + BROAD)
def test_functional_padding_modes_match_reference(padding, mode,
                                                  implementation):
  x, dk, pk, b = _arrays(2, 3, 1, 5, True, seed=7)
  y = sepconv_jax.separable_conv2d(x, dk, pk, b, strides=2, padding=padding,
                                   padding_mode=mode,
                                   implementation=implementation)
  expected = ref_separable(x, dk, pk, b, (2, 2), padding, (1, 1), True, mode)
  np.testing.assert_allclose(y, expected, **TOL)
  d = sepconv_jax.depthwise_conv2d(x, dk, padding=padding, padding_mode=mode,
                                   implementation=implementation)
  np.testing.assert_allclose(
      d, ref_depthwise(x, dk, (1, 1), padding, (1, 1), True, mode), **TOL)


def test_same_padding_accounts_for_stride_in_every_mode():
  # Size 8, kernel 3, stride 2: TF SAME pads (0, 1), not (1, 1).
  x = np.arange(8, dtype=np.float32).reshape(1, 8, 1)
  k = np.ones((3, 1, 1), np.float32)
  for mode in sepconv_jax.PADDING_MODES:
    layer = sepconv_jax.SeparableConv1D(1, 3, strides=2, padding="same",
                                        padding_mode=mode, use_bias=False)
    y = layer.apply({"params": {"depthwise_kernel": k,
                                "pointwise_kernel": np.ones((1, 1, 1))}}, x)
    np.testing.assert_allclose(
        y, ref_separable(x, k, np.ones((1, 1, 1)), None, (2,), "same", (1,),
                         True, mode), **TOL)
    # The first window starts at the first element in every mode.
    assert float(y[0, 0, 0]) == 0 + 1 + 2


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(padding="causal"), dict(padding="same", strides=2),
     dict(padding="causal", dilation_rate=2, depth_multiplier=3),
     dict(data_format="channels_first", padding="same", activation="relu"),
     dict(padding="valid", strides=3, activation="gelu", use_bias=False)])
def test_separable_conv1d_matches_keras(kwargs):
  channels_first = kwargs.get("data_format") == "channels_first"
  x = _rng(3).standard_normal((2, 4, 11) if channels_first
                              else (2, 11, 4)).astype(np.float32)
  if kwargs.get("padding") == "causal":
    # Keras 3 rejects "causal" for SeparableConv1D (tf.keras accepted it);
    # its definition is "valid" after (kernel - 1) * dilation zeros on the
    # left, so that is the oracle.
    k_layer = keras.layers.SeparableConv1D(5, 3, **{**kwargs,
                                                   "padding": "valid"},
                                           **_keras_bias(3))
    left = 2 * kwargs.get("dilation_rate", 1)
    expected = np.asarray(k_layer(np.pad(x, ((0, 0), (left, 0), (0, 0)))))
  else:
    k_layer = keras.layers.SeparableConv1D(5, 3, **kwargs, **_keras_bias(3))
    expected = np.asarray(k_layer(x))
    assert sepconv_jax.SeparableConv1D(5, 3, **kwargs).compute_output_shape(
        (None, *x.shape[1:])) == tuple(
            k_layer.compute_output_shape((None, *x.shape[1:])))
  weights = k_layer.get_weights()
  _nonzero_bias(weights, kwargs)
  names = ["depthwise_kernel", "pointwise_kernel", "bias"]
  params = dict(zip(names, weights))
  ours = sepconv_jax.SeparableConv1D(5, 3, **kwargs)
  y = ours.apply({"params": params}, x)
  np.testing.assert_allclose(y, expected, **TOL)
  assert y.shape == ours.compute_output_shape(x.shape)
  assert sepconv_jax.SeparableConvolution1D is sepconv_jax.SeparableConv1D


def _keras_bias(seed):
  """A non-zero bias for Keras's layer (its default is zeros), so that the
  comparison checks the bias's wiring too: standard normal, the outputs'
  own scale."""
  return {"bias_initializer": keras.initializers.RandomNormal(
      stddev=1.0, seed=seed)}


def _nonzero_bias(weights, kwargs):
  if kwargs.get("use_bias", True):
    assert np.min(np.abs(weights[-1])) > 0, "Keras's bias is zero"


def _depthwise_matches_keras(layer, kwargs, spatial, seed, batch):
  """Keras's `layer` and ours (same class name) on 3 channels: params'
  names and shapes, outputs with Keras's weights, and the output shape
  (for an input whose batch size is `batch`: an int or None)."""
  kwargs = dict(kwargs)
  kernel_size = kwargs.pop("kernel_size", 3)
  channels_first = kwargs.get("data_format") == "channels_first"
  shape = (2, 3, *spatial) if channels_first else (2, *spatial, 3)
  x = _rng(seed).standard_normal(shape).astype(np.float32)
  k_layer = getattr(keras.layers, layer)(kernel_size, **kwargs,
                                         **_keras_bias(seed))
  expected = np.asarray(k_layer(x))
  _nonzero_bias(k_layer.get_weights(), kwargs)
  params = dict(zip(["kernel", "bias"], k_layer.get_weights()))
  ours = getattr(sepconv_jax, layer)(kernel_size, **kwargs)
  variables = ours.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, variables["params"]) == jax.tree.map(
      jnp.shape, params)
  np.testing.assert_allclose(ours.apply({"params": params}, x), expected,
                             **TOL)
  asked = (batch, *x.shape[1:])
  assert ours.compute_output_shape(asked) == tuple(
      k_layer.compute_output_shape(asked))


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(depth_multiplier=2, padding="same"),
     dict(strides=2, padding="same", activation="relu6"),
     dict(dilation_rate=2, depth_multiplier=3, use_bias=False),
     dict(data_format="channels_first", strides=(1, 2)),
     dict(kernel_size=(1, 3), activation="tanh")])
def test_depthwise_conv2d_matches_keras(kwargs):
  _depthwise_matches_keras("DepthwiseConv2D", kwargs, (9, 8), seed=4,
                           batch=2)


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(depth_multiplier=2, padding="same"),
     dict(strides=2, padding="same", activation="relu"),
     dict(dilation_rate=2, depth_multiplier=3, use_bias=False),
     dict(data_format="channels_first", strides=3, kernel_size=4)])
def test_depthwise_conv1d_matches_keras(kwargs):
  _depthwise_matches_keras("DepthwiseConv1D", kwargs, (11,), seed=5,
                           batch=None)


def test_depthwise_conv1d_explicit_pads_stand_for_causal():
  """Keras refuses "causal" for DepthwiseConv1D; the explicit pair the
  message suggests is what "causal" would be: zeros on the left only."""
  x = _rng(6).standard_normal((2, 9, 3)).astype(np.float32)
  k = _rng(7).standard_normal((3, 3, 2)).astype(np.float32)
  layer = sepconv_jax.DepthwiseConv1D(3, padding=((4, 0),), dilation_rate=2,
                                      depth_multiplier=2, use_bias=False)
  y = layer.apply({"params": {"kernel": k}}, x)
  expected = ref_depthwise(np.pad(x, ((0, 0), (4, 0), (0, 0))), k, (1,),
                           "valid", (2,))
  np.testing.assert_allclose(y, expected, **TOL)
  assert y.shape == (2, 9, 6)


@pytest.mark.parametrize("mode", sepconv_jax.PADDING_MODES)
def test_depthwise_conv2d_padding_matches_reference(mode):
  x, dk, _, _ = _arrays(2, 3, 2, 1, False, seed=5)
  bias = _rng(6).standard_normal(6).astype(np.float32)
  pads = ((1, 2), (0, 1))
  layer = sepconv_jax.DepthwiseConv2D(
      KERNEL[2], depth_multiplier=2, padding=pads, padding_mode=mode,
      data_format="channels_first")
  y = layer.apply({"params": {"kernel": dk, "bias": bias}}, x)
  expected = ref_depthwise(x, dk, (1, 1), pads, (1, 1), False, mode)
  np.testing.assert_allclose(y, expected + bias[:, None, None], **TOL)


def test_separable_conv3d_leading_dims_and_unbatched():
  x, dk, pk, b = _arrays(3, 2, 2, 3, True, seed=8, batch=4)
  layer = sepconv_jax.SeparableConv3D(3, KERNEL[3], padding="same",
                                      depth_multiplier=2)
  params = {"depthwise_kernel": dk, "pointwise_kernel": pk, "bias": b}
  expected = ref_separable(x, dk, pk, b, (1,) * 3, "same", (1,) * 3)
  stacked = layer.apply({"params": params}, x.reshape(2, 2, *x.shape[1:]))
  np.testing.assert_allclose(stacked.reshape(expected.shape), expected, **TOL)
  np.testing.assert_allclose(layer.apply({"params": params}, x[0]),
                             expected[0], **TOL)


# ----------------------------------------------------------------- NNX


def _nnx_layers(index):
  """The `index`-th (NNX layer, linen twin, input shape); only it is built."""
  rngs = nnx.Rngs(0)
  common = dict(depthwise_regularizer="l2", bias_regularizer="l1",
                activity_regularizer=sepconv_jax.regularizers.L2(0.1),
                activation="relu", bias_initializer="random_normal")
  return [
      lambda: (NNX[1](3, 4, 3, padding="causal", depth_multiplier=2,
                      **common, rngs=rngs),
               LINEN[1](4, 3, padding="causal", depth_multiplier=2, **common),
               (2, 9, 3)),
      lambda: (NNX[2](3, 4, (3, 2), strides=2, padding="same", **common,
                      rngs=rngs),
               LINEN[2](4, (3, 2), strides=2, padding="same", **common),
               (2, 7, 6, 3)),
      lambda: (NNX[3](2, 3, 2, padding=((1, 0), (0, 1), (1, 1)),
                      padding_mode="reflect", data_format="channels_first",
                      **common, rngs=rngs),
               LINEN[3](3, 2, padding=((1, 0), (0, 1), (1, 1)),
                        padding_mode="reflect", data_format="channels_first",
                        **common), (2, 2, 4, 5, 4)),
      lambda: (sepconv_jax.nnx.DepthwiseConv2D(3, 3, depth_multiplier=2,
                                               **common, rngs=rngs),
               sepconv_jax.DepthwiseConv2D(3, depth_multiplier=2, **common),
               (2, 7, 6, 3)),
      lambda: (sepconv_jax.nnx.DepthwiseConv1D(3, 3, strides=2,
                                               padding="same", **common,
                                               rngs=rngs),
               sepconv_jax.DepthwiseConv1D(3, strides=2, padding="same",
                                           **common), (2, 9, 3)),
  ][index]()


@pytest.mark.parametrize("index", range(5))
def test_nnx_matches_linen_for_the_same_weights(index):
  nnx_layer, linen_layer, shape = _nnx_layers(index)
  x = _rng(index).standard_normal(shape).astype(np.float32)
  params = {name: value[...] for name, value in
            nnx.to_flat_state(nnx.state(nnx_layer, nnx.Param))
            for name in [name[-1]]}
  variables = linen_layer.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, variables["params"]) == jax.tree.map(
      jnp.shape, params)
  y_linen, state = linen_layer.apply({"params": params}, x,
                                     mutable=["losses"])
  y_nnx, losses = nnx.capture(nnx_layer, sepconv_jax.nnx.Losses)(x)
  np.testing.assert_array_equal(np.asarray(y_nnx), np.asarray(y_linen))
  np.testing.assert_array_equal(np.asarray(nnx_layer(x)), np.asarray(y_nnx))
  assert y_nnx.shape == nnx_layer.compute_output_shape(x.shape)
  assert len(jax.tree_util.tree_leaves(losses)) == 3  # depthwise, bias, activity
  np.testing.assert_allclose(sepconv_jax.regularization_loss(losses),
                             sepconv_jax.regularization_loss(state), rtol=1e-6)


def test_nnx_resolves_once_and_again_after_an_argument_is_set(monkeypatch):
  made = []
  resolve = sepconv_jax._layers.layer_config

  def counting(layer, rank, family):
    made.append(id(layer))
    return resolve(layer, rank, family)

  monkeypatch.setattr(sepconv_jax._layers, "layer_config", counting)
  layer = sepconv_jax.nnx.DepthwiseConv1D(3, 3, rngs=nnx.Rngs(0))
  assert len(made) == 1
  x = -np.abs(_rng(8).standard_normal((2, 9, 3))).astype(np.float32) - 1.0
  for _ in range(3):
    layer(x)
    layer.compute_output_shape(x.shape)
    layer.keras_constraints()
  assert len(made) == 1
  assert float(np.min(layer(x))) < 0  # Linear.
  layer.activation = "relu"  # Resolved again, when next used.
  assert float(np.min(layer(x))) == 0.0
  assert len(made) == 2
  layer.kernel = nnx.Param(layer.kernel[...] * 2)  # A param: nothing to do.
  layer(x)
  assert len(made) == 2
  layer.dilation_rate = 0  # A bad value fails when next used.
  with pytest.raises(ValueError, match=re.escape("`dilation_rate` (=0)")):
    layer(x)


def test_nnx_graph_jit_pickle_and_copy_ignore_the_resolved_config():
  x = _rng(9).standard_normal((2, 7, 6, 3)).astype(np.float32)
  a = sepconv_jax.nnx.DepthwiseConv2D(3, 3, activation="relu",
                                      rngs=nnx.Rngs(0))
  b = sepconv_jax.nnx.DepthwiseConv2D(3, 3, activation="relu",
                                      rngs=nnx.Rngs(1))
  graph_a, state_a = nnx.split(a)
  graph_b, _ = nnx.split(b)
  assert graph_a == graph_b and hash(graph_a) == hash(graph_b)
  assert {path[-1] for path, _ in nnx.to_flat_state(state_a)} == {"kernel",
                                                                  "bias"}
  traces = []

  @nnx.jit
  def run(layer, x):
    traces.append(None)
    return layer(x)

  for layer in (a, b, a):
    np.testing.assert_allclose(np.asarray(run(layer, x)),
                               np.asarray(layer(x)), **TOL)
  assert len(traces) == 1  # Equal layers share one trace.
  for twin in (pickle.loads(pickle.dumps(a)), copy.deepcopy(a)):
    np.testing.assert_array_equal(np.asarray(twin(x)), np.asarray(a(x)))
    assert twin.to_keras_config() == a.to_keras_config()


def test_nnx_trains_under_jit_with_optimizer_and_constraints():

  class Net(nnx.Module):

    def __init__(self, rngs):
      self.conv = sepconv_jax.nnx.SeparableConv2D(
          1, 8, 3, padding="same", activation="relu",
          pointwise_constraint="non_neg", rngs=rngs)
      self.depthwise = sepconv_jax.nnx.DepthwiseConv2D(
          8, 3, strides=2, padding="same", depthwise_constraint="max_norm",
          rngs=rngs)
      self.head = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
      return self.head(self.depthwise(self.conv(x)).mean(axis=(1, 2)))

  net = Net(nnx.Rngs(0))
  constraints = sepconv_jax.collect_constraints(net)
  assert set(constraints) == {("conv", "pointwise_kernel"),
                              ("depthwise", "kernel")}
  optimizer = nnx.Optimizer(
      net, optax.chain(optax.adam(5e-2),
                       sepconv_jax.apply_constraints(constraints)),
      wrt=nnx.Param)
  rng = _rng(0)
  labels = rng.integers(0, 2, 32)
  x = (rng.standard_normal((32, 8, 8, 1)) + 2.0 * labels[:, None, None, None]
       ).astype(np.float32)

  @nnx.jit
  def step(net, optimizer, x, labels):

    def loss_fn(net):
      return optax.softmax_cross_entropy_with_integer_labels(
          net(x), labels).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(net)
    optimizer.update(net, grads)
    return loss

  losses = [float(step(net, optimizer, x, labels)) for _ in range(30)]
  assert losses[-1] < 0.5 * losses[0], losses
  assert float(net.conv.pointwise_kernel[...].min()) >= 0.0
  norms = np.sqrt((np.asarray(net.depthwise.kernel[...]) ** 2).sum(axis=0))
  assert norms.max() <= 2.0 + 1e-5


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "make,match",
    [(lambda: sepconv_jax.SeparableConv2D(2, 3, padding="causal"),
      "`padding` (='causal')"),
     (lambda: sepconv_jax.SeparableConv3D(2, 3, padding="CAUSAL"),
      "`padding` (='CAUSAL')"),
     (lambda: sepconv_jax.SeparableConv2D(2, 3, padding=((1, 1),)),
      "`padding` (=((1, 1),))"),
     (lambda: sepconv_jax.SeparableConv2D(2, 3, padding=((1, -1), (0, 0))),
      "`padding` (=((1, -1), (0, 0)))"),
     (lambda: sepconv_jax.SeparableConv1D(2, 3, padding=((1, 2, 3),)),
      "`padding` (=((1, 2, 3),))"),
     (lambda: sepconv_jax.DepthwiseConv2D(3, padding_mode="edge"),
      "`padding_mode` (='edge')"),
     (lambda: sepconv_jax.DepthwiseConv2D(3, depth_multiplier=0),
      "`depth_multiplier` (=0)"),
     (lambda: sepconv_jax.nnx.SeparableConv2D(0, 2, 3, rngs=nnx.Rngs(0)),
      "`in_channels` (=0)"),
     (lambda: sepconv_jax.nnx.SeparableConv1D(2, 2, 3, strides=2,
                                              dilation_rate=2,
                                              rngs=nnx.Rngs(0)),
      "`strides` (=2) and `dilation_rate` (=2)"),
     (lambda: sepconv_jax.nnx.DepthwiseConv2D(2, 3, activation="nope",
                                              rngs=nnx.Rngs(0)),
      "`activation` (='nope')")])
def test_bad_arguments_are_rejected_at_construction(make, match):
  with pytest.raises(ValueError, match=re.escape(match)):
    make()


def test_bad_padding_types_and_channel_mismatch():
  with pytest.raises(TypeError, match=re.escape("`padding` (=((1.5, 1), (0, 0)))")):
    sepconv_jax.SeparableConv2D(2, 3, padding=((1.5, 1), (0, 0)))
  with pytest.raises(TypeError, match=re.escape("`padding_mode` (=None)")):
    sepconv_jax.separable_conv2d(np.ones((1, 4, 4, 1)), np.ones((3, 3, 1, 1)),
                                 np.ones((1, 1, 1, 1)), padding_mode=None)
  layer = sepconv_jax.nnx.SeparableConv2D(3, 2, 3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=re.escape("`depthwise_kernel` (shape=(3, 3, 3, 1))")):
    layer(np.ones((1, 5, 5, 4)))


def test_param_dtype_none_is_rejected_not_read_as_float64():
  with pytest.raises(TypeError, match=re.escape("`param_dtype` (=None)")):
    sepconv_jax.SeparableConv2D(2, 3, param_dtype=None)
  with pytest.raises(TypeError, match=re.escape("`param_dtype` (=None)")):
    sepconv_jax.nnx.DepthwiseConv2D(2, 3, param_dtype=None, rngs=nnx.Rngs(0))
