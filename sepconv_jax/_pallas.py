"""The "pallas" implementation: fused kernels behind three JAX primitives.

The layer is one primitive, `_forward_p`, lowered per platform to
`_pallas_gpu.forward` (Triton) on CUDA and ROCm, `_pallas_tpu.forward`
(Mosaic) on TPU, and the GPU kernel in Pallas's interpreter on CPU
(correct, slow: for tests).
Its derivatives are two more primitives:

* `_linear_p`, the linear map of the tangents (x, kernels, bias) to the
  output's tangent. Its transpose, which reverse mode calls once with the
  output cotangent, is `_backward_p`: every needed cotangent at once, from
  the pointwise GEMM done once (``g = ct @ pointwise^T``: a kernel on GPU,
  XLA's on TPU) and the `input_grad` and `param_grads` kernels. Evaluated
  forward (`jax.jvp`)
  it runs the "lax" formulation.
* `_backward_p` itself differentiates through the "lax" formulation of the
  backward pass, so derivatives of any order work.

Which code runs for each transformation:

======================================  =====================================
transformation                          code
======================================  =====================================
the forward pass, `jax.jit` or eager    the forward kernel
`jax.grad`, `jax.vjp` (reverse mode)    the input-gradient and
                                        parameter-gradient kernels
`jax.jvp`, `jax.jacfwd` (forward mode)  the "lax" formulation of the jvp
`jax.vmap` over the input alone         the kernels (batch folded into N)
other `jax.vmap` (kernels, per-example  the "lax" formulation
gradients)
second and higher derivatives           the kernels for the first order, the
                                        "lax" formulation above it
======================================  =====================================

Supports 1-D (as a height-1 view) and 2-D, every stride, dilation, padding,
depth multiplier and both data formats (channels-first is transposed to
channels-last around the kernels), float32, bfloat16 and float16 with
float32 accumulation, and ``precision=`` on every kernel dot.
"""

from __future__ import annotations

import functools
import jax
import jax.extend as jex
import jax.numpy as jnp
from jax import lax
from jax.interpreters import ad
from jax.interpreters import batching
from jax.interpreters import mlir

from sepconv_jax import _args
from sepconv_jax import _lax
from sepconv_jax import _pallas_gpu
from sepconv_jax import _pallas_layout as layout
from sepconv_jax import _pallas_tpu
from sepconv_jax import _warnings

#: The lowering platforms, each with its kernel form and whether that runs
#: in Pallas's interpreter.
PLATFORMS = {"cpu": ("gpu", True), "cuda": ("gpu", False),
             "rocm": ("gpu", False), "tpu": ("tpu", False)}


def _canonical_precision(precision):
  """``precision=`` as the kernels' dots take it, with the default filled
  in from ``jax.default_matmul_precision`` at trace time."""
  from jax._src.lax import lax as lax_internal  # pylint: disable=g-import-not-at-top
  return lax_internal.canonicalize_precision(precision)


# ---------------------------------------------------------------------------
# The "lax" formulation, on the kernels' operands: forward mode, vmap of
# the kernels, and every derivative above the first run this.


def _spec(cfg: layout.Config) -> _args.ConvSpec:
  return _args.ConvSpec(rank=2, strides=cfg.strides, padding="valid",
                        channels_last=True, dilation_rate=cfg.dilation)


def _reference(x, dk, pk, b, cfg: layout.Config):
  """The layer by XLA's grouped convolution (`_lax`)."""
  y = _lax.depthwise(x, dk, _spec(cfg), cfg.pads, cfg.precision)
  if pk is not None:
    y = _lax.pointwise(y, pk.reshape(1, 1, *pk.shape), _spec(cfg),
                       cfg.precision)
  return y if b is None else y + b


def _split(operands, has_pk: bool, has_b: bool):
  """(x, dk, pk or None, b or None) from a primitive's operands."""
  x, dk, *rest = operands
  pk = rest.pop(0) if has_pk else None
  b = rest.pop(0) if has_b else None
  return x, dk, pk, b, rest


def _reference_backward(x, dk, pk, ct, cfg, has_b, need):
  """The needed cotangents of (x, dk, pk, b), by the "lax" formulation."""
  args = [x, dk] + ([] if pk is None else [pk])
  if has_b:
    args.append(jnp.zeros(ct.shape[-1:], ct.dtype))
  fn = lambda *a: _reference(*_split(a, pk is not None, has_b)[:4], cfg)
  _, pullback = jax.vjp(fn, *args)
  return [gr for gr, n in zip(pullback(ct), need) if n]


# ---------------------------------------------------------------------------
# The kernels, as each platform lowers them.


def _forward_kernels(x, dk, *rest, cfg, has_pk, has_b, target, interpret):
  if interpret:
    _warnings.warn_pallas_interpret()
  _, _, pk, b, _ = _split((x, dk, *rest), has_pk, has_b)
  filters = pk.shape[-1] if has_pk else None
  itemsize = x.dtype.itemsize
  if target == "gpu":
    g = _pallas_gpu.geometry(x.shape, dk.shape, filters, cfg, "forward",
                             itemsize)
    return _pallas_gpu.forward(x, dk, pk, b, g, interpret=interpret)
  direct = (_pallas_tpu.direct(x.shape, dk.shape, filters, cfg, itemsize)
            if has_pk else None)
  if direct is not None:
    return _pallas_tpu.forward_direct(x, dk, pk, b, direct,
                                      interpret=interpret)
  g = layout.geometry(x.shape, dk.shape, filters, cfg, itemsize=itemsize)
  y = _pallas_tpu.forward(
      layout.phased_input(x, g), layout.depthwise_weights(dk, g),
      layout.pointwise_weights(pk, g) if has_pk else None,
      layout.bias(b, g, not has_pk) if has_b else None,
      g, interpret=interpret, out_dtype=x.dtype)
  (ho, wo), n, c, m = g.out, g.batch, g.channels, g.multiplier
  if has_pk:
    return y[:, :ho, :wo, :g.filters]
  y = y[:, :, :ho, :wo, :c]
  return y.transpose(0, 2, 3, 4, 1).reshape(n, ho, wo, c * m)


def _depthwise_cotangent(ct, pk, cfg):
  """``g = ct @ pk^T``, the cotangent of the depthwise result, by XLA's GEMM
  (the TPU form's one pointwise GEMM of the backward pass), in the
  cotangent's dtype."""
  g = lax.dot_general(ct, pk, (((ct.ndim - 1,), (1,)), ((), ())),
                      precision=cfg.precision,
                      preferred_element_type=jnp.float32)
  return g.astype(ct.dtype)


def _backward_kernels(x, dk, *rest, cfg, has_pk, has_b, need, target,
                      interpret):
  if interpret:
    _warnings.warn_pallas_interpret()
  pk, ct = (rest[0], rest[1]) if has_pk else (None, rest[0])
  need_x, need_dk, *need_rest = need
  need_pk = need_rest.pop(0) if has_pk else False
  need_b = need_rest.pop(0) if has_b else False
  n, h, w, c = x.shape
  kh, kw, _, m = dk.shape
  filters = pk.shape[-1] if has_pk else None
  itemsize = x.dtype.itemsize
  if target == "gpu":
    geo = functools.partial(_pallas_gpu.geometry, x.shape, dk.shape, filters,
                            cfg, itemsize=itemsize)
    # The depthwise result's cotangent: what the input and the depthwise
    # kernel's gradients read.
    gd = (_pallas_gpu.depthwise_cotangent(ct, pk, geo("cotangent"),
                                          interpret=interpret)
          if has_pk else ct)
    out = []
    if need_x:
      out.append(_pallas_gpu.input_grad(gd, dk, geo("input_grad"),
                                        interpret=interpret,
                                        out_dtype=x.dtype))
    if need_dk or need_pk or need_b:
      dpk, ddk, db = _pallas_gpu.param_grads(
          x, dk, ct if has_pk else None, gd, geo("param_grads"),
          geo("pointwise_grads") if has_pk else None, interpret=interpret)
      if need_dk:
        out.append(ddk.sum(axis=0).reshape(kh, kw, c, m).astype(dk.dtype))
      if need_pk:
        out.append(dpk.sum(axis=0).reshape(c * m, filters).astype(pk.dtype))
      if need_b:
        out.append(db.sum(axis=0).reshape(-1).astype(ct.dtype))
    return out
  out = []
  if need_x:
    gd = _depthwise_cotangent(ct, pk, cfg) if has_pk else ct
    g = layout.geometry(x.shape, dk.shape, None, cfg, kernel="input_grad",
                        itemsize=itemsize)
    dx = _pallas_tpu.input_grad(layout.dilated_cotangent(gd, g, True),
                                layout.flipped_depthwise_weights(dk, g), g,
                                interpret=interpret, out_dtype=x.dtype)
    out.append(dx[:, :h, :w, :c])
  if need_dk or need_pk or need_b:
    g = layout.geometry(x.shape, dk.shape, filters, cfg, kernel="param_grads",
                        itemsize=itemsize)
    dpk, ddk, db = _pallas_tpu.param_grads(
        layout.phased_input(x, g), layout.depthwise_weights(dk, g),
        layout.pointwise_weights(pk, g) if has_pk else None,
        layout.output_cotangent(ct, g, not has_pk), g, interpret=interpret)
    if need_dk:
      ddk = ddk.sum(axis=(0, 1))[:, :, :c]            # (taps, M, C)
      out.append(ddk.transpose(0, 2, 1).reshape(kh, kw, c, m)
                 .astype(dk.dtype))
    if need_pk:
      dpk = dpk.sum(axis=0)[:, :c, :filters]          # (M, C, F)
      out.append(dpk.transpose(1, 0, 2).reshape(c * m, filters)
                 .astype(pk.dtype))
    if need_b:
      if has_pk:
        db = db[:, 0, :filters].sum(axis=0)
      else:
        db = db.sum(axis=0)[:, :c].T.reshape(c * m)
      out.append(db.astype(ct.dtype))
  return out


# ---------------------------------------------------------------------------
# The primitives.

_forward_p = jex.core.Primitive("sepconv_pallas_forward")
_linear_p = jex.core.Primitive("sepconv_pallas_linear")
_backward_p = jex.core.Primitive("sepconv_pallas_backward")
_backward_p.multiple_results = True


@functools.lru_cache(maxsize=128)
def _jitted(primitive, params):
  return jax.jit(lambda *args: primitive.bind(*args, **dict(params)))


def _eager(primitive):
  """Outside `jax.jit` a primitive runs compiled (by its lowering)."""
  def impl(*args, **params):
    return _jitted(primitive, tuple(sorted(params.items())))(*args)
  return impl


def _out_aval(x, dk, pk, cfg):
  n, h, w, _ = x.shape
  kh, kw, c, m = dk.shape
  out = cfg.out_hw((h, w), (kh, kw))
  channels = pk.shape[-1] if pk is not None else c * m
  return jax.core.ShapedArray((n, *out, channels), x.dtype)


def _forward_abstract(*operands, cfg, has_pk, has_b):
  x, dk, pk, _, _ = _split(operands, has_pk, has_b)
  return _out_aval(x, dk, pk, cfg)


def _linear_abstract(*operands, cfg, has_pk, has_b, present):
  del present
  x, dk, pk, _, _ = _split(operands[:2 + has_pk], has_pk, False)
  return _out_aval(x, dk, pk, cfg)


def _backward_abstract(x, dk, *rest, cfg, has_pk, has_b, need):
  del cfg
  pk, ct = (rest[0], rest[1]) if has_pk else (None, rest[0])
  avals = [x, dk] + ([pk] if has_pk else [])
  if has_b:
    avals.append(jax.core.ShapedArray(ct.shape[-1:], ct.dtype))
  return [jax.core.ShapedArray(a.shape, a.dtype)
          for a, n in zip(avals, need) if n]


def _forward_jvp(primals, tangents, *, cfg, has_pk, has_b):
  y = _forward_p.bind(*primals, cfg=cfg, has_pk=has_pk, has_b=has_b)
  present = tuple(type(t) is not ad.Zero for t in tangents)
  if not any(present):
    return y, ad.Zero.from_primal_value(y)
  nonlinear = primals[:2 + has_pk]  # x, dk (and pk): the bias adds
  dy = _linear_p.bind(*nonlinear, *[t for t, p in zip(tangents, present)
                                    if p],
                      cfg=cfg, has_pk=has_pk, has_b=has_b, present=present)
  return y, dy


def _linear_reference(*operands, cfg, has_pk, has_b, present):
  """The output's tangent, by the jvp of the "lax" formulation."""
  x, dk, pk, _, tangents = _split(operands, has_pk, False)
  primals = [x, dk] + ([pk] if has_pk else [])
  b = None
  if has_b:
    out = _out_aval(x, dk, pk, cfg)
    b = jnp.zeros(out.shape[-1:], x.dtype)
    primals.append(b)
  it = iter(tangents)
  full = [next(it) if p else jnp.zeros(a.shape, a.dtype)
          for a, p in zip(primals, present)]
  return jax.jvp(
      lambda *a: _reference(*_split(a, has_pk, has_b)[:4], cfg),
      primals, full)[1]


def _linear_transpose(ct, *operands, cfg, has_pk, has_b, present):
  nonlinear = operands[:2 + has_pk]
  tangents = operands[2 + has_pk:]
  if any(ad.is_undefined_primal(p) for p in nonlinear):
    raise NotImplementedError(
        "sepconv_jax: the pallas layer's tangent map is linear in the"
        " tangents only")
  it = iter(tangents)
  slots = [next(it) if p else None for p in present]
  need = tuple(s is not None and ad.is_undefined_primal(s) for s in slots)
  if type(ct) is ad.Zero or not any(need):
    grads = [None] * len(tangents)
  else:
    computed = iter(_backward_p.bind(*nonlinear, ct, cfg=cfg, has_pk=has_pk,
                                     has_b=has_b, need=need))
    grads = [next(computed) if n else None
             for s, n in zip(slots, need) if s is not None]
  return [None] * len(nonlinear) + grads


def _backward_jvp(primals, tangents, *, cfg, has_pk, has_b, need):
  """Second order: the jvp of the "lax" formulation of the backward pass."""
  x, dk, *rest = primals
  pk, ct = (rest[0], rest[1]) if has_pk else (None, rest[0])
  out = _backward_p.bind(*primals, cfg=cfg, has_pk=has_pk, has_b=has_b,
                         need=need)
  tangents = [ad.instantiate_zeros(t) for t in tangents]

  def backward(x, dk, *rest):
    pk, ct = (rest[0], rest[1]) if has_pk else (None, rest[0])
    return _reference_backward(x, dk, pk, ct, cfg, has_b, need)

  _, dout = jax.jvp(backward, tuple(primals), tuple(tangents))
  return out, list(dout)


def _forward_batch(args, dims, *, cfg, has_pk, has_b):
  """vmap: a batched input alone folds into the batch; else "lax"."""
  x, *others = args
  bx, *bothers = dims
  if all(d is None for d in bothers):  # (batching.not_mapped)
    x = jnp.moveaxis(x, bx, 0)
    size, batch = x.shape[:2]
    y = _forward_p.bind(x.reshape((size * batch,) + x.shape[2:]), *others,
                        cfg=cfg, has_pk=has_pk, has_b=has_b)
    return y.reshape((size, batch) + y.shape[1:]), 0
  fn = lambda *a: _reference(*_split(a, has_pk, has_b)[:4], cfg)
  return jax.vmap(fn, tuple(dims))(*args), 0


def _linear_batch(args, dims, **params):
  return jax.vmap(functools.partial(_linear_reference, **params),
                  tuple(dims))(*args), 0


def _backward_batch(args, dims, *, cfg, has_pk, has_b, need):
  def backward(x, dk, *rest):
    pk, ct = (rest[0], rest[1]) if has_pk else (None, rest[0])
    return _reference_backward(x, dk, pk, ct, cfg, has_b, need)
  outs = jax.vmap(backward, tuple(dims))(*args)
  return outs, [0] * len(outs)


_forward_p.def_impl(_eager(_forward_p))
_forward_p.def_abstract_eval(_forward_abstract)
ad.primitive_jvps[_forward_p] = _forward_jvp
batching.primitive_batchers[_forward_p] = _forward_batch

_linear_p.def_impl(_eager(_linear_p))
_linear_p.def_abstract_eval(_linear_abstract)
ad.primitive_transposes[_linear_p] = _linear_transpose
batching.primitive_batchers[_linear_p] = _linear_batch
mlir.register_lowering(_linear_p, mlir.lower_fun(_linear_reference,
                                                 multiple_results=False))


def _linear_jvp(primals, tangents, **params):
  """The tangent map's own jvp (forward over forward): "lax"."""
  return jax.jvp(functools.partial(_linear_reference, **params),
                 tuple(primals), tuple(ad.instantiate_zeros(t)
                                       for t in tangents))


ad.primitive_jvps[_linear_p] = _linear_jvp

_backward_p.def_impl(_eager(_backward_p))
_backward_p.def_abstract_eval(_backward_abstract)
ad.primitive_jvps[_backward_p] = _backward_jvp
batching.primitive_batchers[_backward_p] = _backward_batch

for _platform, (_target, _interpret) in PLATFORMS.items():
  mlir.register_lowering(
      _forward_p, mlir.lower_fun(functools.partial(
          _forward_kernels, target=_target, interpret=_interpret),
          multiple_results=False), platform=_platform)
  mlir.register_lowering(
      _backward_p, mlir.lower_fun(functools.partial(
          _backward_kernels, target=_target, interpret=_interpret),
          multiple_results=True), platform=_platform)


# ---------------------------------------------------------------------------
# The implementation's entry point.


def fused(x, dk, pk, b, spec: _args.ConvSpec, pads, precision) -> jax.Array:
  """The layer (or with `pk` None the depthwise step) by the kernels.

  Arguments as `sepconv_jax._implementations.Implementation.fused`; `spec`
  is 1-D or 2-D (`_args.check_implementation` refuses 3-D).
  """
  if not spec.channels_last:
    x = jnp.moveaxis(x, 1, -1)
  strides, dilation, pads = spec.strides, spec.dilation_rate, tuple(pads)
  if spec.rank == 1:  # a height-1 image
    x, dk = x[:, None], dk[None]
    strides, dilation = (1, *strides), (1, *dilation)
    pads = ((0, 0), *pads)
  cfg = layout.Config(tuple(strides), tuple(dilation),
                      tuple(tuple(int(p) for p in pair) for pair in pads),
                      _canonical_precision(precision))
  operands = [x, dk]
  if pk is not None:
    operands.append(pk.reshape(pk.shape[-2:]))
  if b is not None:
    operands.append(b)
  y = _forward_p.bind(*operands, cfg=cfg, has_pk=pk is not None,
                      has_b=b is not None)
  if spec.rank == 1:
    y = y[:, 0]
  return y if spec.channels_last else jnp.moveaxis(y, -1, 1)

