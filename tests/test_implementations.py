"""Every `implementation=` agrees with the reference, in values and gradients.

"lax" (`lax.conv_general_dilated` with ``feature_group_count``) is the
reference implementation; each other one is checked against it and against
the independent float64 NumPy reference of ``tests/reference.py``:

* outputs, over strides 1-3, dilations 1-3, both paddings, both data
  formats, depth multipliers 1-3 and non-square kernels;
* VJPs (input, both kernels, bias) equal to those of "lax" (second-order
  `check_grads` in float64 is in `test_numerics.py`);
* rank-3 (unbatched) inputs and extra leading batch dims, jit, vmap
  (per-example gradients and vmapped kernels too);
* bfloat16, with the tolerance stated at `test_bfloat16_against_float64`;
* the "auto" policy and the forward pass's memory (no im2col copy).
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sepconv_jax
from sepconv_jax import _ops
from sepconv_jax import _implementations
from sepconv_jax import _taps
from sepconv_jax import _taps_policy
from sepconv_jax import _taps_primitives

try:
  from tests import implementations
  from tests import reference as ref
  from tests import reference_nd as ref_nd
  from tests import tolerances
except ImportError:  # run from inside tests/
  import implementations
  import reference as ref
  import reference_nd as ref_nd
  import tolerances

FAST = [i for i in implementations.BROAD if i != "lax"]
ALL = list(implementations.BROAD)

# (strides, dilation_rate, kernel (kh, kw), depth multiplier): strides and
# dilation never both exceed 1 (the Keras rule).
_GEOMETRIES = [
    (1, 1, (3, 3), 1),
    (2, 1, (3, 3), 2),
    (3, 1, (3, 2), 1),
    ((1, 2), 1, (2, 3), 3),
    ((3, 2), 1, (1, 3), 2),
    (1, 2, (3, 3), 1),
    (1, 3, (2, 2), 2),
    (1, (1, 3), (3, 2), 3),
    (1, (2, 1), (1, 1), 1),
    (2, 1, (4, 5), 1),
]
_PADDINGS = ("same", "valid")
_FORMATS = ("channels_last", "channels_first")
# Every geometry with both paddings. The default profile runs every other
# case (`_every_other`: the first of each geometry's two), so the first
# padding alternates with the geometry and the data format every two
# geometries: the default cases meet both paddings in both formats.
_CASES = [
    (impl, *geom, _PADDINGS[(i + j) % 2], _FORMATS[(i // 2 + j) % 2])
    for impl in FAST
    for i, geom in enumerate(_GEOMETRIES)
    for j in range(2)
]
_MORE = pytest.mark.full("the other padding of each geometry")


def _every_other(cases):
  """Every other case by default, the rest in the full profile."""
  return [c if k % 2 == 0 else pytest.param(c, marks=_MORE)
          for k, c in enumerate(cases)]


def _ids(case):
  impl, s, d, k, m, padding, fmt = case
  return f"{impl}-s{s}-d{d}-k{k[0]}x{k[1]}-m{m}-{padding}-{fmt[9:]}"


def _make(rng, n, h, w, c, k, m, f, fmt, dtype=np.float32):
  shape = (n, h, w, c) if fmt == "channels_last" else (n, c, h, w)
  x = rng.standard_normal(shape).astype(dtype)
  dk = rng.standard_normal((*k, c, m)).astype(dtype)
  pk = rng.standard_normal((1, 1, c * m, f)).astype(dtype)
  b = rng.standard_normal((f,)).astype(dtype)
  return x, dk, pk, b


def _seed(*parts) -> int:
  return abs(hash(tuple(str(p) for p in parts))) % (2**32)


@pytest.mark.parametrize("case", _every_other(_CASES), ids=_ids)
def test_matches_lax_and_float64_reference(case):
  _check_against_references(case)


@pytest.fixture
def taps_boxes(monkeypatch):
  """The output boxes (lo, hi) that "taps"'s split forward pass computes.

  Eager calls run the primitive through cached `jax.jit`s, which would not
  trace the patched functions again: the cache is emptied before and after.
  """
  boxes = []
  box = _taps._box

  def counted(*args):
    boxes.append(args[3:])
    return box(*args)

  monkeypatch.setattr(_taps, "_box", counted)
  _taps_primitives._compiled.cache_clear()
  yield boxes
  _taps_primitives._compiled.cache_clear()


@pytest.fixture
def taps_split_everywhere(monkeypatch, taps_boxes):
  """"taps" with the interior/border split at every shape and stride (by
  default only stride-1 outputs that are large or have large kernels)."""
  split = lambda *args: _taps_policy.TapsPolicy(True, True, 8, (5, 14), 9)
  monkeypatch.setattr(_taps_policy, "policy", split)
  return taps_boxes


@pytest.mark.parametrize("size,kernel,strides,splits", [
    (56, 3, 1, True), (28, 3, 1, False), (112, 3, 2, False), (14, 5, 1, True),
    (14, 5, 2, False)])
def test_taps_splits_large_stride_1_outputs_and_kernels(
    size, kernel, strides, splits, taps_boxes):
  x = jnp.ones((1, size, size, 2))
  y = sepconv_jax.depthwise_conv2d(x, jnp.ones((kernel, kernel, 2, 1)),
                                   strides=strides, padding="same",
                                   implementation="taps")
  assert bool(taps_boxes) == splits
  if splits:  # the interior, then the four borders
    edge = kernel // 2
    assert taps_boxes[0] == ((edge, edge), (size - edge, size - edge))
    assert len(taps_boxes) == 5
  # Closed form: each output counts the non-padding inputs of its window
  # ("same": ceil(size / strides) outputs, the padding split low-first).
  out = -(-size // strides)
  before = max((out - 1) * strides + kernel - size, 0) // 2
  starts = np.arange(out) * strides - before
  count = sum((0 <= starts + i) & (starts + i < size) for i in range(kernel))
  np.testing.assert_array_equal(y[0, ..., 0], np.outer(count, count))


# Every geometry once; the default profile runs every other one, so the
# padding alternates every two geometries and the format every four: the
# default cases meet both paddings and both formats.
_SPLIT_CASES = [("taps", *geom, _PADDINGS[(i // 2) % 2],
                 _FORMATS[(i // 4 + i) % 2])
                for i, geom in enumerate(_GEOMETRIES)]


@pytest.mark.parametrize("case", _every_other(_SPLIT_CASES), ids=_ids)
def test_taps_split_forward_matches_references(case, taps_split_everywhere):
  _check_against_references(case)
  assert taps_split_everywhere, "the split forward pass did not run"


def _default_profile(cases):
  return [c for c in _every_other(cases) if not hasattr(c, "marks")]


@pytest.mark.parametrize("cases", [_CASES, _SPLIT_CASES],
                         ids=["grid", "split"])
def test_default_profile_meets_both_paddings_in_both_formats(cases):
  """A regression that breaks "valid" (or one format) alone must fail the
  default suite, not only the full profile."""
  for impl in {c[0] for c in cases}:
    seen = {(c[5], c[6]) for c in _default_profile(cases) if c[0] == impl}
    assert seen == {(p, f) for p in _PADDINGS for f in _FORMATS}, (impl,
                                                                   seen)


@pytest.mark.parametrize("rank,strides,dilation,padding,channels_last", [
    (1, 1, 1, "causal", True), (1, 2, 1, ((4, 5),), False),
    (1, 1, 2, "same", True), (3, 1, 1, "same", False),
    (3, 2, 1, ((3, 0), (1, 4), (0, 2)), True),
    (3, 1, (2, 1, 1), "same", False)])
def test_taps_split_forward_in_1d_and_3d(rank, strides, dilation, padding,
                                         channels_last,
                                         taps_split_everywhere):
  # Padding wider than the kernel's reach leaves border outputs that read
  # nothing but padding; each border box must still land in its place.
  rng = np.random.default_rng(rank)
  spatial = {1: (13,), 3: (6, 7, 5)}[rank]
  kernel = {1: (3,), 3: (2, 3, 3)}[rank]
  x = rng.standard_normal((2, *spatial, 3) if channels_last
                          else (2, 3, *spatial)).astype(np.float32)
  dk = rng.standard_normal((*kernel, 3, 2)).astype(np.float32)
  y = sepconv_jax.depthwise_conv(
      x, dk, strides=strides, padding=padding,
      data_format="channels_last" if channels_last else "channels_first",
      dilation_rate=dilation, implementation="taps")
  expected = ref_nd.depthwise(
      x, dk, (strides,) * rank,
      padding, dilation if isinstance(dilation, tuple) else (dilation,) * rank,
      channels_last)
  np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5,
                             atol=1e-5 * np.max(np.abs(expected)))
  assert len(taps_split_everywhere) > 1  # an interior and its borders


def _check_against_references(case):
  """Output, VJP and depthwise step of `case` against float64 and "lax"."""
  impl, strides, dilation, k, m, padding, fmt = case
  rng = np.random.default_rng(_seed(case))
  x, dk, pk, b = _make(rng, 2, 9, 8, 3, k, m, 4, fmt)
  kw = dict(strides=strides, padding=padding, dilation_rate=dilation,
            data_format=fmt)

  ct = rng.standard_normal(
      jax.eval_shape(lambda *a: sepconv_jax.separable_conv2d(*a, **kw),
                     x, dk, pk, b).shape).astype(np.float32)

  @functools.partial(jax.jit, static_argnums=0)
  def run(impl, x, dk, pk, b):
    """Output, VJP at `ct` and the depthwise step alone, in one program."""
    y, vjp = jax.vjp(lambda *a: sepconv_jax.separable_conv2d(
        *a, **kw, implementation=impl), x, dk, pk, b)
    return y, vjp(ct), sepconv_jax.depthwise_conv2d(
        x, dk, **kw, implementation=impl)

  expected = ref.separable_conv2d(x, dk, pk, b, strides, padding, dilation,
                                  fmt)
  expected_dw = ref.depthwise_conv2d(x, dk, strides, padding, dilation, fmt)
  y, grads, y_dw = run(impl, x, dk, pk, b)
  y_lax, grads_lax, _ = run("lax", x, dk, pk, b)
  scale = np.max(np.abs(expected))
  np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5,
                             atol=1e-5 * scale)
  np.testing.assert_allclose(np.asarray(y), np.asarray(y_lax), rtol=1e-5,
                             atol=1e-5 * scale)
  np.testing.assert_allclose(
      np.asarray(y_dw), expected_dw, rtol=1e-5,
      atol=1e-5 * np.max(np.abs(expected_dw)))
  for name, got, want in zip(("inputs", "depthwise", "pointwise", "bias"),
                             grads, grads_lax):
    np.testing.assert_allclose(
        np.asarray(got), np.asarray(want), rtol=1e-4,
        atol=1e-4 * np.max(np.abs(want)), err_msg=name)


@pytest.mark.parametrize("impl", FAST)
def test_forward_mode_and_transforms_match_lax(impl):
  rng = np.random.default_rng(_seed("transforms", impl))
  x, dk, pk, b = _make(rng, 3, 7, 6, 2, (3, 3), 2, 3, "channels_last")
  kw = dict(strides=(2, 1), padding="same")

  def f(impl):
    return jax.jit(lambda x, dk, pk, b: sepconv_jax.separable_conv2d(
        x, dk, pk, b, **kw, implementation=impl))

  tangents = tuple(rng.standard_normal(a.shape).astype(np.float32)
                   for a in (x, dk, pk, b))
  _, t = jax.jvp(f(impl), (x, dk, pk, b), tangents)
  _, t_lax = jax.jvp(f("lax"), (x, dk, pk, b), tangents)
  np.testing.assert_allclose(t, t_lax, rtol=1e-4, atol=1e-4)

  def loss(impl):
    return lambda dk: jnp.sum(jnp.tanh(f(impl)(x, dk, pk, b)))

  # Forward-over-reverse (jax.hessian) and reverse-over-reverse.
  h = jax.jit(jax.hessian(loss(impl)))(dk)
  h_lax = jax.jit(jax.hessian(loss("lax")))(dk)
  gg = jax.jit(jax.grad(
      lambda dk: jnp.sum(jax.grad(loss(impl))(dk) ** 2)))(dk)
  gg_lax = jax.jit(jax.grad(
      lambda dk: jnp.sum(jax.grad(loss("lax"))(dk) ** 2)))(dk)
  # Tolerance: float32 at "highest" (2**-24) on both sides. With J the
  # Jacobian of the 216 outputs y in dk (y is linear in dk), the Hessian is
  # J^T diag(tanh''(y)) J and the second loss's gradient 2 H J^T tanh'(y):
  # sums of 216 products, of y's own 9 + 4 + 2 term sums, three roundings
  # deep. Each side is within `bound` of the magnitudes below, built from
  # |J| (the NumPy reference on absolute values), |tanh''| <= 0.77 and
  # |tanh'| <= 1; the two sides differ by at most twice that.
  bound = 2 * tolerances.contraction_bound(216 + 15, "highest", chained=3)
  j_abs = np.stack([ref.separable_conv2d(
      np.abs(x), np.abs(one), np.abs(pk), None, **kw).ravel()
      for one in np.eye(dk.size).reshape(dk.size, *dk.shape)], axis=1)
  h_abs = 0.77 * j_abs.T @ j_abs
  g_abs = j_abs.sum(axis=0)
  tolerances.assert_within(h.reshape(h_abs.shape), h_lax.reshape(h_abs.shape),
                           h_abs, bound, "hessian")
  tolerances.assert_within(gg.ravel(), gg_lax.ravel(), 4 * h_abs @ g_abs,
                           bound, "grad of grad")

  vm = jax.vmap(f(impl), in_axes=(0, None, None, None))(x[:, None], dk, pk, b)
  np.testing.assert_allclose(vm[:, 0], f("lax")(x, dk, pk, b), rtol=1e-5,
                             atol=1e-5)


@pytest.mark.full("per-example gradients: test_functional.py too")
@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("fmt", ["channels_last", "channels_first"])
def test_vmapped_gradients_and_batched_kernels(impl, fmt):
  # Per-example gradients (vmap of grad: the kernel gradient is batched)
  # and a vmapped kernel (one depthwise kernel per vmapped member), eager
  # and under jit, against "lax".
  rng = np.random.default_rng(_seed("vmap-grad", impl, fmt))
  x, dk, pk, b = _make(rng, 4, 7, 6, 3, (3, 2), 2, 2, fmt)
  dks = rng.standard_normal((5,) + dk.shape).astype(np.float32)
  kw = dict(strides=(1, 2), padding="same", data_format=fmt)

  def loss(impl):
    return lambda x, dk, pk, b: jnp.sum(jnp.sin(sepconv_jax.separable_conv2d(
        x[None], dk, pk, b, **kw, implementation=impl)))

  per_example = jax.vmap(jax.grad(loss(impl), argnums=(0, 1, 2, 3)),
                         in_axes=(0, None, None, None))
  want = jax.vmap(jax.grad(loss("lax"), argnums=(0, 1, 2, 3)),
                  in_axes=(0, None, None, None))(x, dk, pk, b)
  for run in (per_example, jax.jit(per_example)):
    for got, w in zip(run(x, dk, pk, b), want):
      np.testing.assert_allclose(got, w, rtol=1e-4,
                                 atol=1e-4 * np.max(np.abs(w)))

  def members(impl):
    return jax.vmap(lambda dk: sepconv_jax.depthwise_conv2d(
        x, dk, **kw, implementation=impl))

  np.testing.assert_allclose(members(impl)(dks), members("lax")(dks),
                             rtol=1e-5, atol=1e-5)
  g = jax.grad(lambda dks: jnp.sum(jnp.sin(members(impl)(dks))))(dks)
  g_lax = jax.grad(lambda dks: jnp.sum(jnp.sin(members("lax")(dks))))(dks)
  np.testing.assert_allclose(g, g_lax, rtol=1e-4, atol=1e-4)


def test_taps_backward_pass_runs_the_kernel_gradient_primitive():
  # The reverse-mode kernel gradient must be `_taps.kernel_grad` (one
  # variadic reduction per 9 taps), not autodiff's reduction per tap.
  x = jnp.ones((2, 8, 8, 4))
  dk = jnp.ones((3, 3, 4, 1))
  grad = jax.grad(lambda dk: jnp.sum(sepconv_jax.depthwise_conv2d(
      x, dk, padding="same", implementation="taps")))
  assert "sepconv_taps_depthwise_kernel_grad" in str(jax.make_jaxpr(grad)(dk))
  # Closed form: with ones everywhere, each tap's gradient counts the
  # output positions whose input at that tap is not padding (8x8 grid,
  # 3x3 window, "same"): corners 7*7, edges 7*8, centre 8*8, per image.
  counts = np.array([[49, 56, 49], [56, 64, 56], [49, 56, 49]]) * 2
  np.testing.assert_array_equal(
      grad(dk), np.broadcast_to(counts[:, :, None, None], dk.shape))


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("fmt", ["channels_last", "channels_first"])
def test_unbatched_and_leading_batch_dims(impl, fmt):
  rng = np.random.default_rng(_seed("rank", impl, fmt))
  x, dk, pk, b = _make(rng, 6, 5, 7, 2, (2, 3), 2, 3, fmt)
  kw = dict(strides=2, padding="same", data_format=fmt)
  x5 = x.reshape((2, 3) + x.shape[1:])

  def run(impl, inputs):
    y = sepconv_jax.separable_conv2d(inputs, dk, pk, b, **kw,
                                     implementation=impl)
    g = jax.grad(lambda x: jnp.sum(sepconv_jax.depthwise_conv2d(
        x, dk, **kw, implementation=impl) ** 2))(inputs)
    return y, g

  for inputs in (x[0], x5):
    (got, g), (want, g_lax) = (jax.jit(run, static_argnums=0)(i, inputs)
                               for i in (impl, "lax"))
    assert got.shape == want.shape
    assert g.shape == inputs.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g, g_lax, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", FAST)
def test_taps_that_only_see_padding(impl):
  # A kernel much wider than the input: many taps read nothing but padding.
  rng = np.random.default_rng(_seed("padding-only", impl))
  x, dk, pk, b = _make(rng, 2, 2, 3, 2, (5, 4), 1, 2, "channels_last")
  for kw in (dict(padding="same", dilation_rate=3),
             dict(padding="same", strides=3)):
    f = lambda impl: jax.jit(lambda *a: sepconv_jax.separable_conv2d(
        *a, **kw, implementation=impl))
    y, vjp = jax.vjp(f(impl), x, dk, pk, b)
    y_lax, vjp_lax = jax.vjp(f("lax"), x, dk, pk, b)
    np.testing.assert_allclose(y, y_lax, rtol=1e-5, atol=1e-5)
    for got, want in zip(vjp(jnp.ones_like(y)), vjp_lax(jnp.ones_like(y))):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("fmt", ["channels_last", "channels_first"])
def test_row_counts_without_a_small_divisor(impl, fmt):
  # 2 x 19 (channels_last chunks batch x rows) and 19 rows have no divisor
  # between 5 and 14: the kernel gradient then uses a shorter tail chunk.
  rng = np.random.default_rng(_seed("tail", impl, fmt))
  x, dk, pk, b = _make(rng, 2, 19, 4, 3, (3, 3), 2, 2, fmt)

  @functools.partial(jax.jit, static_argnums=0)
  def grads(impl, x, dk, pk, b):
    return jax.grad(lambda *a: jnp.sum(jnp.sin(sepconv_jax.separable_conv2d(
        *a, padding="same", data_format=fmt, implementation=impl))),
        argnums=(0, 1, 2, 3))(x, dk, pk, b)

  for got, want in zip(grads(impl, x, dk, pk, b),
                       grads("lax", x, dk, pk, b)):
    np.testing.assert_allclose(got, want, rtol=1e-4,
                               atol=1e-4 * np.max(np.abs(want)))


@pytest.mark.parametrize("impl", ALL)
def test_bfloat16_against_float64(impl):
  """bfloat16: within 2**-6 of the largest |output| (a few bf16 ulps).

  The inputs are rounded to bfloat16 first and the float64 reference uses
  the rounded values, so the error is the implementation's own: the
  depthwise result is rounded to bfloat16 once before the pointwise step
  and the output once more (the fast paths accumulate in float32).
  """
  rng = np.random.default_rng(_seed("bf16", impl))
  x, dk, pk, b = (jnp.asarray(a, jnp.bfloat16) for a in
                  _make(rng, 2, 9, 9, 8, (3, 3), 2, 8, "channels_last"))
  y = jax.jit(lambda *a: sepconv_jax.separable_conv2d(
      *a, strides=2, padding="same", implementation=impl))(x, dk, pk, b)
  assert y.dtype == jnp.bfloat16
  as64 = lambda a: np.asarray(a.astype(jnp.float32), np.float64)
  want = ref.separable_conv2d(as64(x), as64(dk), as64(pk), as64(b), 2,
                              "same", 1, "channels_last")
  err = np.max(np.abs(as64(y) - want))
  assert err <= 2**-6 * np.max(np.abs(want)), err
  g = jax.jit(jax.grad(lambda dk: jnp.sum(sepconv_jax.separable_conv2d(
      x, dk, pk, b, strides=2, padding="same", implementation=impl
  ).astype(jnp.float32))))(dk)
  assert g.dtype == jnp.bfloat16
  g_lax = jax.jit(jax.grad(lambda dk: jnp.sum(sepconv_jax.separable_conv2d(
      x, dk, pk, b, strides=2, padding="same", implementation="lax"
  ).astype(jnp.float32))))(dk)
  np.testing.assert_allclose(as64(g), as64(g_lax),
                             atol=2**-6 * np.max(np.abs(as64(g_lax))))


@pytest.mark.parametrize("impl", FAST)
def test_module_implementations_agree(impl):
  rng = np.random.default_rng(_seed("module", impl))
  x = rng.standard_normal((2, 8, 7, 3)).astype(np.float32)
  layer = sepconv_jax.SeparableConv2D(4, (3, 2), strides=2, padding="same",
                                      depth_multiplier=2,
                                      implementation=impl)
  params = layer.init(jax.random.PRNGKey(0), x)
  ref_layer = layer.clone(implementation="lax")
  np.testing.assert_allclose(jax.jit(layer.apply)(params, x),
                             jax.jit(ref_layer.apply)(params, x), rtol=1e-5,
                             atol=1e-5)
  g = jax.jit(jax.grad(lambda p: jnp.sum(layer.apply(p, x) ** 2)))(params)
  g_lax = jax.jit(jax.grad(
      lambda p: jnp.sum(ref_layer.apply(p, x) ** 2)))(params)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_lax)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_auto_policy():
  assert "taps" in sepconv_jax.IMPLEMENTATIONS
  assert _ops.auto_implementation("cpu") == "taps"
  for platform in ("gpu", "cuda", "rocm", "tpu"):
    assert _ops.auto_implementation(platform) == "lax"
  # None: the default backend's.
  assert _ops.auto_implementation() == _ops.auto_implementation(
      jax.default_backend())
  assert set(_implementations.REGISTRY) | {"auto"} == set(
      sepconv_jax.IMPLEMENTATIONS)


@pytest.mark.cpu_only("XLA:CPU's compiled temporaries")
@pytest.mark.parametrize("impl", FAST + ["auto"])
def test_forward_temporaries_no_larger_than_output(impl):
  # No im2col (k*k copies of the input) and no padded copy: the only
  # temporary of the forward pass is the depthwise result. (60x60 outputs
  # take the interior/border split of "taps"; "auto" stages both of its
  # platforms' branches, and the one not lowered must cost nothing.)
  for (size, strides) in itertools.product((20, 60), (1, 2)):
    x = jnp.zeros((2, size, size, 16))
    dk = jnp.zeros((3, 3, 16, 1))
    pk = jnp.zeros((1, 1, 16, 16))
    f = jax.jit(lambda x, dk, pk: sepconv_jax.separable_conv2d(
        x, dk, pk, strides=strides, padding="same", implementation=impl))
    compiled = f.lower(x, dk, pk).compile()
    out = jax.eval_shape(f, x, dk, pk)
    out_bytes = np.prod(out.shape) * 4
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp <= out_bytes, (size, strides, temp, out_bytes)


@pytest.mark.cpu_only("the taps split's XLA:CPU temporaries")
@pytest.mark.parametrize("strides", [1, 2])
def test_taps_split_training_step_makes_no_padded_input_copy(monkeypatch,
                                                             strides):
  # With the interior split, the kernel gradient reads the interior from
  # the input itself (at every stride), so a training step (the output and
  # its VJP, as the benchmark times it) saves most of a padded copy of the
  # input.
  size = 64 * strides  # 64x64 outputs and >= 2**20 inputs: the split is on
  x = jnp.zeros((8, size, size, 32))
  dk, pk = jnp.zeros((3, 3, 32, 1)), jnp.zeros((1, 1, 32, 64))

  def temporaries():
    jax.clear_caches()  # trace again under the current policy

    def step(x, dk, pk, g):
      y, vjp = jax.vjp(lambda *a: sepconv_jax.separable_conv2d(
          *a, strides=strides, padding="same", implementation="taps"),
                       x, dk, pk)
      return y, vjp(g)

    g = jnp.zeros((8, 64, 64, 64))
    compiled = jax.jit(step).lower(x, dk, pk, g).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  split = temporaries()
  policy = _taps_policy.policy
  monkeypatch.setattr(_taps_policy, "policy", lambda *args: policy(
      *args)._replace(split_kernel_grad=False))
  plain = temporaries()
  jax.clear_caches()
  assert split <= plain - 0.8 * x.nbytes, (split, plain, x.nbytes)
