"""Property-based tests: random valid configurations against float64.

Every example draws a whole configuration (kernel size, strides or dilation,
padding, depth multiplier, filters, data format, leading batch dims, odd and
tiny spatial sizes, input dtype, value scale and the implementation, from
``tests/implementations.py``'s `BROAD`, so new implementations are covered
as soon as they are registered) and checks the result against the independent float64
NumPy reference of ``tests/reference.py``.

The tolerance is a forward-error bound, not a fudge factor: a float32 sum
of ``n`` products is within ``n * eps * sum|terms|`` of the exact value,
whatever the order of summation. With ``|y|_ref`` the reference run on the
absolute values of every operand, the check is

    |y - y_float64| <= 2 * (kh*kw + C*M + 2) * eps_float32 * |y|_ref + 1e-30

(``kh*kw + 2`` terms for the depthwise step alone). A wrong tap, a wrong
padding or a channel mix-up is off by O(|y|_ref), far above the bound.

Profiles (``tests/conftest_hypothesis.py``): ``ci`` by default, and
``SEPCONV_HYPOTHESIS_PROFILE=thorough`` for the long run.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example
from hypothesis import given
from hypothesis import note
from hypothesis import settings
from hypothesis import strategies as st

import sepconv_jax

try:
  from tests import conftest_hypothesis as hyp
  from tests import implementations
  from tests import reference as ref
  from tests import reference_nd as ref_nd
  from tests import tolerances
except ImportError:  # tests/ itself on sys.path
  import conftest_hypothesis as hyp
  import implementations
  import reference as ref
  import reference_nd as ref_nd
  import tolerances

IMPLS = ("auto",) + implementations.BROAD
CL, CF = "channels_last", "channels_first"
EPS32 = float(np.finfo(np.float32).eps)

# A long thorough run compiles thousands of distinct shapes; clearing jax's
# caches now and then keeps the process's memory flat.
_CLEAR_EVERY = 250
_calls = itertools.count(1)


def _maybe_clear_caches():
  if next(_calls) % _CLEAR_EVERY == 0:
    jax.clear_caches()


# --------------------------------------------------------------------------
# Strategies.
# --------------------------------------------------------------------------
def _pair_or_int(draw, values):
  """An int, a tuple or a list, all meaning the same pair."""
  a, b = values
  form = draw(st.sampled_from(["int", "tuple", "list"] if a == b
                              else ["tuple", "list"]))
  if form == "int":
    return a
  return (a, b) if form == "tuple" else [a, b]


@st.composite
def conv_configs(draw, max_kernel=4, max_step=3, max_extra=6):
  """A valid convolution configuration and input geometry."""
  kh = draw(st.integers(1, max_kernel))
  kw = draw(st.integers(1, max_kernel))
  strided = draw(st.booleans())
  steps = (draw(st.integers(1, max_step)), draw(st.integers(1, max_step)))
  strides, dilation = (steps, (1, 1)) if strided else ((1, 1), steps)
  padding = draw(st.sampled_from(["valid", "same", "SAME", "Valid"]))
  data_format = draw(st.sampled_from([CL, CF, None, "Channels_First",
                                      "CHANNELS_LAST"]))
  sizes = []
  for k, d in zip((kh, kw), dilation):
    low = (k - 1) * d + 1 if padding.lower() == "valid" else 1
    sizes.append(draw(st.integers(low, low + max_extra)))
  leading = draw(st.sampled_from([(), (1,), (2,), (3,), (2, 1), (1, 2)]))
  return dict(
      kh=kh, kw=kw,
      strides=_pair_or_int(draw, strides),
      dilation_rate=_pair_or_int(draw, dilation),
      padding=padding,
      data_format=data_format,
      h=sizes[0], w=sizes[1],
      c=draw(st.integers(1, 4)),
      m=draw(st.integers(1, 3)),
      f=draw(st.integers(1, 4)),
      leading=leading,
      x_dtype=draw(st.sampled_from(["float32"] * 4 + ["int32", "int8",
                                                      "bool"])),
      scale=draw(st.sampled_from([1.0, 1.0, 1e-3, 1e3])),
      seed=draw(st.integers(0, 2**32 - 1)),
      implementation=draw(st.sampled_from(IMPLS)),
      # One example in five runs op by op; the others under jax.jit (one
      # compiled program: several times cheaper to build than eager
      # dispatch of every small op, and what users run).
      eager=draw(st.integers(0, 4)) == 0,
  )


def _compiled(cfg, fn, **kwargs):
  """fn with static `kwargs` bound: eager or jitted, per `cfg`."""
  fn = functools.partial(fn, **kwargs)
  return fn if cfg["eager"] else jax.jit(fn)


def _run(cfg, fn, *args, **kwargs):
  return _compiled(cfg, fn, **kwargs)(*args)


def _fmt(cfg):
  data_format = cfg["data_format"]
  return CL if data_format is None else data_format.lower()


def _arrays(cfg, with_bias=True):
  """Inputs, kernels and a bias, in NumPy, from the config's seed."""
  rng = np.random.default_rng(cfg["seed"])
  c, h, w = cfg["c"], cfg["h"], cfg["w"]
  spatial = (h, w, c) if _fmt(cfg) == CL else (c, h, w)
  shape = tuple(cfg["leading"]) + spatial
  if cfg["x_dtype"] == "float32":
    x = (rng.standard_normal(shape) * cfg["scale"]).astype(np.float32)
  elif cfg["x_dtype"] == "bool":
    x = rng.integers(0, 2, shape).astype(bool)
  else:
    x = rng.integers(-100, 100, shape).astype(cfg["x_dtype"])
  kh, kw, m, f = cfg["kh"], cfg["kw"], cfg["m"], cfg["f"]
  dk = (rng.standard_normal((kh, kw, c, m)) / math.sqrt(kh * kw)).astype(
      np.float32)
  pk = (rng.standard_normal((1, 1, c * m, f)) / math.sqrt(c * m)).astype(
      np.float32)
  b = rng.standard_normal((f,)).astype(np.float32) if with_bias else None
  return x, dk, pk, b


def _conv_kwargs(cfg):
  return dict(strides=cfg["strides"], padding=cfg["padding"],
              data_format=cfg["data_format"],
              dilation_rate=cfg["dilation_rate"])


def _reference(fn, cfg, x, *weights):
  """Runs a rank-4 reference function on any number of leading dims."""
  x = np.asarray(x).astype(np.float64)
  leading = tuple(cfg["leading"])
  x4 = x.reshape((-1,) + x.shape[len(leading):])
  y = fn(x4, *weights, strides=cfg["strides"], padding=cfg["padding"],
         dilation_rate=cfg["dilation_rate"], data_format=_fmt(cfg))
  return y.reshape(leading + y.shape[1:])


def _bound(cfg, x, dk, pk=None, b=None):
  """The float32 forward-error bound, elementwise (see the module doc)."""
  absolute = [np.abs(np.asarray(a).astype(np.float64))
              for a in (x, dk, pk, b) if a is not None]
  if pk is None:
    magnitude = _reference(ref.depthwise_conv2d, cfg, *absolute)
    terms = cfg["kh"] * cfg["kw"] + 2
  else:
    magnitude = _reference(ref.separable_conv2d, cfg, *absolute)
    terms = cfg["kh"] * cfg["kw"] + cfg["c"] * cfg["m"] + 2
  return 2 * terms * EPS32 * magnitude + 1e-30


def _expected_shape(cfg, channels_out):
  padding = cfg["padding"].lower()
  strides = ref.pair(cfg["strides"])
  dilation = ref.pair(cfg["dilation_rate"])
  out = tuple(ref.output_size(n, k, s, d, padding) for n, k, s, d in zip(
      (cfg["h"], cfg["w"]), (cfg["kh"], cfg["kw"]), strides, dilation))
  spatial = out + (channels_out,) if _fmt(cfg) == CL else (
      (channels_out,) + out)
  return tuple(cfg["leading"]) + spatial


def _assert_within(actual, expected, bound, what):
  actual = np.asarray(actual, dtype=np.float64)
  assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
  assert np.all(np.isfinite(actual)), what
  err = np.abs(actual - expected)
  worst = np.unravel_index(np.argmax(err - bound), err.shape)
  assert np.all(err <= bound), (
      f"{what}: |error| {err[worst]:.3g} > bound {bound[worst]:.3g} at"
      f" {worst} (got {actual[worst]!r}, float64 {expected[worst]!r})")


# --------------------------------------------------------------------------
# Properties.
# --------------------------------------------------------------------------
#: Examples per property test: 100 in all under the ci profile (about 20 s
#: on two cores; the costlier a test's examples, the fewer), 10,000 under
#: the thorough one.
EXAMPLES = {
    "ci": {"function": 14, "module": 8, "shapes": 66, "batch": 6,
           "gradients": 6},
    "thorough": {"function": 2500, "module": 2000, "shapes": 3000,
                 "batch": 1250, "gradients": 1250},
}


def _examples(name):
  return settings(max_examples=EXAMPLES[hyp.PROFILE][name])


@given(cfg=conv_configs(), use_bias=st.booleans())
@_examples("function")
def test_function_matches_float64_reference(cfg, use_bias):
  """separable_conv2d and depthwise_conv2d, any valid configuration."""
  _maybe_clear_caches()
  note(repr(cfg))
  x, dk, pk, b = _arrays(cfg, with_bias=use_bias)
  kw = _conv_kwargs(cfg)
  impl = cfg["implementation"]

  y = _run(cfg, sepconv_jax.separable_conv2d, x, dk, pk, b,
           implementation=impl, **kw)
  assert y.dtype == jnp.float32
  assert y.shape == _expected_shape(cfg, cfg["f"])
  expected = _reference(ref.separable_conv2d, cfg, x, dk, pk, b)
  _assert_within(y, expected, _bound(cfg, x, dk, pk, b), "separable_conv2d")

  d = _run(cfg, sepconv_jax.depthwise_conv2d, x, dk, implementation=impl,
           **kw)
  assert d.dtype == jnp.float32
  assert d.shape == _expected_shape(cfg, cfg["c"] * cfg["m"])
  expected = _reference(ref.depthwise_conv2d, cfg, x, dk)
  _assert_within(d, expected, _bound(cfg, x, dk), "depthwise_conv2d")


_ACTIVATIONS = {None: lambda v: v, "linear": lambda v: v,
                "relu": lambda v: np.maximum(v, 0.0)}


@given(cfg=conv_configs(), use_bias=st.booleans(),
       activation=st.sampled_from(sorted(_ACTIVATIONS, key=str)),
       int_kernel_size=st.booleans(), real_init=st.integers(0, 3))
@_examples("module")
def test_module_matches_float64_reference(cfg, use_bias, activation,
                                          int_kernel_size, real_init):
  """SeparableConv2D: params of the right shapes, outputs as the reference."""
  _maybe_clear_caches()
  note(repr(cfg))
  x, dk, pk, b = _arrays(cfg, with_bias=use_bias)
  kernel_size = (cfg["kh"], cfg["kw"])
  if int_kernel_size and cfg["kh"] == cfg["kw"]:
    kernel_size = cfg["kh"]
  layer = sepconv_jax.SeparableConv2D(
      filters=cfg["f"], kernel_size=kernel_size,
      depth_multiplier=cfg["m"], use_bias=use_bias, activation=activation,
      implementation=cfg["implementation"], **_conv_kwargs(cfg))

  # A real init on one example in four (it compiles the initializers); the
  # others only trace it.
  init = layer.init if real_init == 0 else functools.partial(
      jax.eval_shape, layer.init)
  variables = init(jax.random.key(cfg["seed"] % 1000), x)
  shapes = jax.tree.map(jnp.shape, variables["params"])
  expected_shapes = {"depthwise_kernel": dk.shape,
                     "pointwise_kernel": pk.shape}
  if use_bias:
    expected_shapes["bias"] = b.shape
  assert shapes == expected_shapes

  params = {"depthwise_kernel": jnp.asarray(dk),
            "pointwise_kernel": jnp.asarray(pk)}
  if use_bias:
    params["bias"] = jnp.asarray(b)
  y = _run(cfg, layer.apply, {"params": params}, x)
  assert y.dtype == jnp.float32
  assert y.shape == _expected_shape(cfg, cfg["f"])
  assert tuple(layer.compute_output_shape(x.shape)) == y.shape

  expected = _ACTIVATIONS[activation](
      _reference(ref.separable_conv2d, cfg, x, dk, pk, b))
  # relu is 1-Lipschitz, so the bound of the linear part still holds.
  _assert_within(y, expected, _bound(cfg, x, dk, pk, b), "SeparableConv2D")


@given(cfg=conv_configs(max_kernel=7, max_step=4, max_extra=40),
       batch=st.one_of(st.none(), st.integers(0, 5)),
       unknown_spatial=st.booleans())
@_examples("shapes")
def test_output_shape_agrees_everywhere(cfg, batch, unknown_spatial):
  """compute_output_shape == eval_shape == the spec's formulas.

  Only shapes are traced, so this covers larger and more varied geometry
  than the value tests (sizes up to ~60, kernels up to 7, steps up to 4,
  batch 0).
  """
  note(repr(cfg))
  layer = sepconv_jax.SeparableConv2D(
      filters=cfg["f"], kernel_size=(cfg["kh"], cfg["kw"]),
      depth_multiplier=cfg["m"], implementation=cfg["implementation"],
      **_conv_kwargs(cfg))
  c, h, w = cfg["c"], cfg["h"], cfg["w"]
  in_shape = ((h, w, c) if _fmt(cfg) == CL else (c, h, w))
  concrete_batch = 2 if batch is None else batch
  x = jax.ShapeDtypeStruct((concrete_batch,) + in_shape, jnp.float32)
  variables = jax.eval_shape(layer.init, jax.random.key(0), x)
  y = jax.eval_shape(layer.apply, variables, x)
  expected = _expected_shape(dict(cfg, leading=(concrete_batch,)), cfg["f"])
  assert y.shape == expected
  assert tuple(layer.compute_output_shape(x.shape)) == expected

  # Unknown (None) sizes stay None; known ones are unchanged.
  query = [batch] + list(in_shape)
  spatial_axes = (1, 2) if _fmt(cfg) == CL else (2, 3)
  if unknown_spatial:
    query[spatial_axes[0]] = None
  got = tuple(layer.compute_output_shape(tuple(query)))
  want = list(expected)
  want[0] = batch
  if unknown_spatial:
    want[spatial_axes[0]] = None
  assert got == tuple(want)

  dk = jax.ShapeDtypeStruct((cfg["kh"], cfg["kw"], c, cfg["m"]), jnp.float32)
  pk = jax.ShapeDtypeStruct((1, 1, c * cfg["m"], cfg["f"]), jnp.float32)
  fn_out = jax.eval_shape(
      lambda x, dk, pk: sepconv_jax.separable_conv2d(
          x, dk, pk, implementation=cfg["implementation"],
          **_conv_kwargs(cfg)), x, dk, pk)
  assert fn_out.shape == expected


@given(cfg=conv_configs(), use_bias=st.booleans())
@_examples("batch")
def test_leading_batch_dims_and_module_agree_with_function(cfg, use_bias):
  """One call on (*leading, ...) == per-example calls; module == function.

  Each example of a batch is computed independently of the others, and the
  module adds nothing but params to the function (same numbers to float32
  rounding, whichever implementation).
  """
  _maybe_clear_caches()
  note(repr(cfg))
  x, dk, pk, b = _arrays(cfg, with_bias=use_bias)
  kw = _conv_kwargs(cfg)
  impl = cfg["implementation"]
  sep = _compiled(cfg, sepconv_jax.separable_conv2d, implementation=impl,
                  **kw)
  y = np.asarray(sep(x, dk, pk, b))
  leading = tuple(cfg["leading"])
  flat_x = np.asarray(x).reshape((-1,) + x.shape[len(leading):])
  flat_y = y.reshape((-1,) + y.shape[len(leading):])
  bound = _bound(dict(cfg, leading=()), flat_x[0], dk, pk, b)
  for i in range(flat_x.shape[0]):
    # An unbatched (rank-3) call on one example gives that example's output.
    yi = sep(flat_x[i], dk, pk, b)
    np.testing.assert_allclose(np.asarray(yi), flat_y[i], rtol=0,
                               atol=float(np.max(2 * bound)) + 1e-30)

  layer = sepconv_jax.SeparableConv2D(
      filters=cfg["f"], kernel_size=(cfg["kh"], cfg["kw"]),
      depth_multiplier=cfg["m"], use_bias=use_bias, implementation=impl,
      **kw)
  params = {"depthwise_kernel": dk, "pointwise_kernel": pk}
  if use_bias:
    params["bias"] = b
  ym = np.asarray(_run(cfg, layer.apply, {"params": params}, x))
  np.testing.assert_allclose(ym, y, rtol=0,
                             atol=float(np.max(2 * bound)) + 1e-30)


@given(cfg=conv_configs())
@_examples("gradients")
def test_gradients_satisfy_the_adjoint_identity(cfg):
  """Reverse-mode gradients against the float64 reference, any config.

  The layer is linear in each of the input, the depthwise kernel, the
  pointwise kernel and the bias, so for a cotangent g and any direction v,
  <grad_x <g, y>, v> must equal <g, y(v)> with y(v) the reference run on v
  in place of x (likewise for the kernels; the bias gradient is g summed
  over everything but the channels). Each identity is checked to the
  float32 forward-error bound of the sums involved.
  """
  _maybe_clear_caches()
  # Always jitted: eager vjps of every small op would cost 5x the time.
  cfg = dict(cfg, x_dtype="float32", eager=False)
  note(repr(cfg))
  x, dk, pk, b = _arrays(cfg)
  fn = _compiled(cfg, sepconv_jax.separable_conv2d,
                 implementation=cfg["implementation"], **_conv_kwargs(cfg))
  y, pullback = jax.vjp(fn, x, dk, pk, b)
  rng = np.random.default_rng(cfg["seed"] + 1)
  g = rng.standard_normal(y.shape).astype(np.float32)
  dx, ddk, dpk, db = (np.asarray(a, np.float64) for a in pullback(g))
  g64 = g.astype(np.float64)

  def sep(*operands):
    return _reference(ref.separable_conv2d, cfg, *operands)

  terms = math.prod(y.shape) + cfg["kh"] * cfg["kw"] + cfg["c"] * cfg["m"] + 2
  tol = 4 * terms * EPS32
  for name, grad, direction, linear, magnitude in [
      ("inputs", dx, rng.standard_normal(x.shape),
       lambda v: sep(v, dk, pk), lambda v: sep(v, abs(dk), abs(pk))),
      ("depthwise_kernel", ddk, rng.standard_normal(dk.shape),
       lambda w: sep(x, w, pk), lambda w: sep(abs(x), w, abs(pk))),
      ("pointwise_kernel", dpk, rng.standard_normal(pk.shape),
       lambda u: sep(x, dk, u), lambda u: sep(abs(x), abs(dk), u)),
  ]:
    assert grad.shape == direction.shape, name
    lhs = float(np.sum(grad * direction))
    rhs = float(np.sum(g64 * linear(direction)))
    bound = tol * float(np.sum(np.abs(g64) * magnitude(np.abs(direction))))
    assert abs(lhs - rhs) <= bound + 1e-30, (name, lhs, rhs, bound)
  channel_axis = -1 if _fmt(cfg) == CL else -3
  expected_db = np.moveaxis(g64, channel_axis, -1).reshape(-1, cfg["f"]).sum(0)
  np.testing.assert_allclose(db, expected_db, rtol=0, atol=tol * float(
      np.abs(g64).sum()) + 1e-30)


# --------------------------------------------------------------------------
# Every implementation by name, over what the 2-D strategies leave out:
# 1-D and 3-D, explicit pad pairs, "causal", padding modes, bfloat16 and
# `precision=`.
# --------------------------------------------------------------------------
@st.composite
def nd_configs(draw, ranks=(1, 2, 3)):
  """A valid N-D configuration, with the arguments beyond Keras's."""
  rank = draw(st.sampled_from(ranks))
  kernel = tuple(draw(st.integers(1, 3)) for _ in range(rank))
  steps = tuple(draw(st.integers(1, 3)) for _ in range(rank))
  strided = draw(st.booleans())
  strides = steps if strided else (1,) * rank
  dilation = (1,) * rank if strided else steps
  kind = draw(st.sampled_from(["valid", "same", "pairs"]
                              + (["causal"] if rank == 1 else [])))
  mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "symmetric",
                               "circular"]))
  if kind == "pairs":
    padding = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2)))
                    for _ in range(rank))
  else:
    padding = kind
  sizes = []
  for i, (k, d) in enumerate(zip(kernel, dilation)):
    eff = (k - 1) * d + 1
    pads = padding[i] if kind == "pairs" else (0, 0)
    low = max(1, eff - sum(pads))
    if mode != "zeros":  # NumPy's reflect needs pads < size
      low = max(low, eff, max(pads) + 1)
    sizes.append(draw(st.integers(low, low + 3)))
  return dict(
      rank=rank, kernel=kernel, strides=strides, dilation=dilation,
      padding=padding, padding_mode=mode, sizes=tuple(sizes),
      channels_last=draw(st.booleans()), c=draw(st.integers(1, 3)),
      m=draw(st.integers(1, 2)), f=draw(st.integers(1, 3)),
      batch=draw(st.integers(1, 2)), use_bias=draw(st.booleans()),
      dtype=draw(st.sampled_from(["float32", "float32", "bfloat16"])),
      precision=draw(st.sampled_from([None, "highest", "default",
                                      jax.lax.Precision.HIGHEST])),
      seed=draw(st.integers(0, 2**32 - 1)))


#: Examples of `test_every_implementation_nd`, per implementation. The
#: interpreted Pallas kernels compile for seconds each on a CPU: fewer.
ND_EXAMPLES = {
    "ci": {"auto": 5, "lax": 5, "taps": 5, "pallas": 3},
    "thorough": {"auto": 500, "lax": 500, "taps": 500, "pallas": 200},
}


def _nd_bound(cfg, magnitude):
  """The forward-error bound: float32 as `tolerances.separable_bound` at the
  contraction precision asked for; bfloat16 as a bfloat16 sum of the same
  terms (machine epsilon 2**-7 per term), the operands being the same
  bfloat16 values on both sides."""
  taps, cm = math.prod(cfg["kernel"]), cfg["c"] * cfg["m"]
  if cfg["dtype"] == "bfloat16":
    return 2 * (taps + cm + 2) * 2.0**-7 * magnitude + 1e-30
  precision = ("default" if cfg["precision"] == "default" else "highest")
  return tolerances.separable_bound(taps, cm, precision) * magnitude + 1e-30


#: Run for every implementation (of that rank) before the drawn examples,
#: so that the default profile meets each argument beyond Keras's: causal
#: with reflect, explicit pairs with circular in bfloat16, 3-D symmetric
#: pads at the default precision.
_ND_EXAMPLES_ALWAYS = [
    dict(rank=1, kernel=(3,), strides=(1,), dilation=(2,), padding="causal",
         padding_mode="reflect", sizes=(6,), channels_last=False, c=2, m=2,
         f=3, batch=2, use_bias=True, dtype="float32", precision="highest",
         seed=1),
    dict(rank=2, kernel=(2, 3), strides=(2, 1), dilation=(1, 1),
         padding=((1, 0), (2, 1)), padding_mode="circular", sizes=(5, 4),
         channels_last=True, c=3, m=1, f=2, batch=1, use_bias=True,
         dtype="bfloat16", precision=jax.lax.Precision.HIGHEST, seed=2),
    dict(rank=3, kernel=(2, 1, 2), strides=(1, 1, 1), dilation=(1, 2, 1),
         padding=((0, 1), (1, 1), (2, 0)), padding_mode="symmetric",
         sizes=(3, 4, 3), channels_last=False, c=2, m=2, f=2, batch=1,
         use_bias=False, dtype="float32", precision="default", seed=3),
]


@pytest.mark.parametrize("impl", ("auto",) + implementations.ALL)
def test_every_implementation_nd(impl):
  """Each implementation, by name, on N-D configurations against float64.

  A rank the implementation does not offer ("pallas": 1-D and 2-D) is not
  drawn for it.
  """
  ranks = (1, 2) if impl == "pallas" else (1, 2, 3)

  @settings(max_examples=ND_EXAMPLES[hyp.PROFILE][impl])
  @given(cfg=nd_configs(ranks=ranks))
  def check(cfg):
    _maybe_clear_caches()
    note(repr(cfg))
    rng = np.random.default_rng(cfg["seed"])
    rank, c, m, f = cfg["rank"], cfg["c"], cfg["m"], cfg["f"]
    spatial = cfg["sizes"]
    shape = ((cfg["batch"], *spatial, c) if cfg["channels_last"]
             else (cfg["batch"], c, *spatial))
    dtype = jnp.dtype(cfg["dtype"])
    # The operands in the compute dtype; the reference sees the same values.
    x = jnp.asarray(rng.standard_normal(shape), dtype)
    dk = jnp.asarray(rng.standard_normal((*cfg["kernel"], c, m)), dtype)
    pk = jnp.asarray(rng.standard_normal((1,) * rank + (c * m, f))
                     / math.sqrt(c * m), dtype)
    b = jnp.asarray(rng.standard_normal((f,)), dtype) if cfg[
        "use_bias"] else None
    y = jax.jit(functools.partial(
        sepconv_jax.separable_conv, strides=cfg["strides"],
        padding=cfg["padding"], dilation_rate=cfg["dilation"],
        data_format=("channels_last" if cfg["channels_last"]
                     else "channels_first"),
        precision=cfg["precision"], implementation=impl,
        padding_mode=cfg["padding_mode"]))(x, dk, pk, b)
    assert y.dtype == dtype
    as64 = lambda a: None if a is None else np.asarray(a, np.float64)
    args = dict(strides=cfg["strides"], padding=cfg["padding"],
                dilation=cfg["dilation"],
                channels_last=cfg["channels_last"],
                padding_mode=cfg["padding_mode"])
    expected = ref_nd.separable(as64(x), as64(dk), as64(pk), as64(b),
                                **args)
    magnitude = ref_nd.separable(*(None if a is None else np.abs(as64(a))
                                   for a in (x, dk, pk, b)), **args)
    _assert_within(y, expected, _nd_bound(cfg, magnitude), impl)

  for cfg in _ND_EXAMPLES_ALWAYS:
    if cfg["rank"] in ranks:
      check = example(cfg=cfg)(check)
  check()


def test_profile_budget():
  """The active profile runs >= 100 (ci) or >= 10,000 (thorough) examples."""
  total = (sum(EXAMPLES[hyp.PROFILE].values())
           + sum(ND_EXAMPLES[hyp.PROFILE].values()))
  minimum = {"ci": 100, "thorough": 10_000}[hyp.PROFILE]
  assert total >= minimum, (hyp.PROFILE, total)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
