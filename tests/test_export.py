"""`jax.export` for GPU and TPU from a CPU: what each platform would run.

A CI machine has no accelerator, yet it lowers for one. These tests export
the jitted functions, the linen and NNX modules and a training step of
every implementation for ``cuda`` and ``tpu``, and read the lowered
modules:

* ``implementation="auto"`` is chosen per lowering platform: traced on a
  CPU and exported for CUDA or TPU, it runs "lax" there (XLA's grouped
  convolution), not the CPU's "taps";
* a multi-platform export carries each platform's path, and the CPU
  branch of it computes, bit for bit, what "taps" computes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax import export

import sepconv_jax

try:
  from tests import lowered
except ImportError:  # tests/ itself on sys.path
  import lowered

ACCELERATORS = ("cuda", "tpu")
C = 3  # input channels: the lax path's `feature_group_count`


def _arrays(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((2, 9, 8, C)).astype(np.float32)
  dk = rng.standard_normal((3, 3, C, 2)).astype(np.float32)
  pk = rng.standard_normal((1, 1, 2 * C, 4)).astype(np.float32)
  b = rng.standard_normal((4,)).astype(np.float32)
  return x, dk, pk, b


def _sep(impl):
  return functools.partial(sepconv_jax.separable_conv2d, strides=1,
                           padding="same", implementation=impl)


def _runs_lax(text):
  """Whether the module is the "lax" path: grouped convolutions only."""
  return C in lowered.grouped_convolutions(text) and (
      "stablehlo.slice" not in text)


def _runs_taps(text):
  """Whether the module is the "taps" path: slices and a dot, no conv."""
  return "stablehlo.convolution" not in text and (
      "stablehlo.slice" in text and "stablehlo.dot_general" in text)


@pytest.mark.parametrize("platform", ACCELERATORS)
def test_auto_runs_lax_when_exported_for_an_accelerator(platform):
  x, dk, pk, b = _arrays()
  text = lowered.lower(_sep("auto"), x, dk, pk, b, platforms=(platform,))
  assert _runs_lax(text), text[:2000]
  # ... and its training step too.
  step = jax.grad(lambda *a: jnp.sum(_sep("auto")(*a) ** 2), (0, 1, 2, 3))
  text = lowered.lower(step, x, dk, pk, b, platforms=(platform,))
  assert C in lowered.grouped_convolutions(text)
  assert "stablehlo.slice" not in text


def test_auto_runs_taps_when_lowered_for_cpu():
  x, dk, pk, b = _arrays()
  assert _runs_taps(lowered.lower(_sep("auto"), x, dk, pk, b))


def test_multi_platform_export_carries_each_platforms_path():
  x, dk, pk, b = _arrays(1)
  exported = export.export(jax.jit(_sep("auto")),
                           platforms=("cpu", "cuda", "tpu"))(x, dk, pk, b)
  text = exported.mlir_module()
  assert exported.platforms == ("cpu", "cuda", "tpu")
  assert C in lowered.grouped_convolutions(text)   # the accelerators' lax
  assert "stablehlo.slice" in text                 # the CPU's taps
  assert "stablehlo.case" in text                  # chosen by platform
  # Run here, on the CPU, it is "taps", bit for bit.
  y = exported.call(x, dk, pk, b)
  want = jax.jit(_sep("taps"))(x, dk, pk, b)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(want))


def _train_step(impl):
  """A jitted SGD step of a SeparableConv2D on a squared loss."""
  layer = sepconv_jax.SeparableConv2D(4, 3, depth_multiplier=2,
                                      padding="same", implementation=impl)
  tx = optax.sgd(0.1)

  def step(params, opt_state, x, target):
    def loss(params):
      y = layer.apply({"params": params}, x)
      return jnp.mean((y - target) ** 2)
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  x = _arrays()[0]
  params = layer.init(jax.random.key(0), x)["params"]
  target = np.zeros((2, 9, 8, 4), np.float32)
  return step, (params, tx.init(params), x, target)


def _nnx_forward(impl):
  model = sepconv_jax.nnx.SeparableConv2D(C, 4, 3, depth_multiplier=2,
                                          padding="same",
                                          implementation=impl,
                                          rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  return (lambda state, x: nnx.merge(graphdef, state)(x)), state


@pytest.mark.parametrize("platform", ACCELERATORS)
@pytest.mark.parametrize("impl", sepconv_jax.IMPLEMENTATIONS)
def test_function_modules_and_training_step_export(impl, platform):
  x, dk, pk, b = _arrays()
  programs = {"function": (_sep(impl), (x, dk, pk, b))}
  layer = sepconv_jax.SeparableConv2D(4, 3, depth_multiplier=2,
                                      padding="same", implementation=impl)
  programs["linen"] = (layer.apply, (layer.init(jax.random.key(0), x), x))
  forward, state = _nnx_forward(impl)
  programs["nnx"] = (forward, (state, x))
  programs["training step"] = _train_step(impl)
  for what, (fn, args) in programs.items():
    text = lowered.lower(fn, *args, platforms=(platform,))
    if impl in ("auto", "lax"):
      assert C in lowered.grouped_convolutions(text), (what, platform)
    if impl == "taps":  # asked for by name, taps runs anywhere
      assert "stablehlo.convolution" not in text, (what, platform)
    if impl == "pallas":  # the kernels, compiled for the platform
      assert {"cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}[
          platform] in lowered.custom_calls(text), (what, platform)
      assert "stablehlo.convolution" not in text, (what, platform)


def test_pallas_exports_for_cuda_with_the_documented_triton_opt_in():
  """docs/performance.md's form: JAX refuses to export the Triton custom
  call (no compatibility guarantee) unless the caller opts in."""
  x, dk, pk, b = _arrays()
  forward = jax.jit(_sep("pallas"))
  with pytest.raises(ValueError, match="custom calls whose targets have no"
                     " compatibility guarantees"):
    export.export(forward, platforms=("cuda",))(x, dk, pk, b)
  exported = export.export(
      forward, platforms=("cuda",),
      disabled_checks=[
          export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
  )(x, dk, pk, b)
  assert exported.platforms == ("cuda",)
  assert "__gpu$xla.gpu.triton" in lowered.custom_calls(
      exported.mlir_module())
