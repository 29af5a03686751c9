"""The "taps" implementation's primitives: `_taps`'s algorithms as JAX ops.

The depthwise step is a primitive, bilinear in the input and the kernel,
whose kernel gradient is a second primitive (the two are each other's
transposes), so that reverse mode runs what XLA:CPU runs well, and forward
mode, `jax.vmap` and derivatives of any order keep working. Outside
`jax.jit` a primitive runs its algorithm compiled. The pointwise step needs
no primitive: plain `lax.dot_general`, differentiated by autodiff.
"""

from __future__ import annotations

import functools

import jax
import jax.extend as jex
import jax.numpy as jnp
from jax.interpreters import ad
from jax.interpreters import batching
from jax.interpreters import mlir

from sepconv_jax import _args
from sepconv_jax import _taps

# The depthwise step and its kernel gradient are two primitives, each
# bilinear and the other's transpose, so that every transformation --
# reverse mode above all -- runs the algorithms of `_taps`:
#
#   depthwise(x, k)   = split_forward:      d/dx: input_grad  d/dk: kernel_grad
#   kernel_grad(x, g) = split_kernel_grad:  d/dx: input_grad  d/dg: depthwise
#
# Linearising saves only `x` (and the kernel) for the backward pass, as
# "lax" does. Forward mode and derivatives of every order follow from the
# bilinear rules. Both lower through `mlir.lower_fun`, so XLA sees the same
# ops as without the primitives.

_depthwise_p = jex.core.Primitive("sepconv_taps_depthwise")
_kernel_grad_p = jex.core.Primitive("sepconv_taps_depthwise_kernel_grad")


def _depthwise_abstract_eval(x, kernel, *, layout):
  _, _, out, _ = _taps.geometry(layout, x.shape, kernel.shape)
  channels = kernel.shape[-2] * kernel.shape[-1]
  shape = ((x.shape[0], *out, channels) if layout.spec.channels_last
           else (x.shape[0], channels, *out))
  return x.update(shape=shape, weak_type=False)


def _kernel_grad_abstract_eval(x, ct, *, layout, kernel_shape,
                               kernel_dtype):
  del ct, layout
  return x.update(shape=kernel_shape, dtype=kernel_dtype, weak_type=False)


def _depthwise_impl(x, kernel, *, layout):
  return _taps.split_forward(layout, x, kernel)


def _kernel_grad_impl(x, ct, **params):
  return _taps.split_kernel_grad(params.pop("layout"), x, ct, **params)


@functools.lru_cache(maxsize=64)
def _compiled(impl, params):
  return jax.jit(functools.partial(impl, **dict(params)))


def _eager(impl, *args, **params):
  """Outside `jax.jit`, a primitive runs its implementation compiled."""
  return _compiled(impl, tuple(sorted(params.items())))(*args)


def _depthwise_transpose_x(ct, x, kernel, *, layout):
  return _taps.input_grad(layout, x.aval, ct, kernel)


def _depthwise_transpose_kernel(ct, x, kernel, *, layout):
  return _kernel_grad_p.bind(x, ct, layout=layout,
                             kernel_shape=tuple(kernel.aval.shape),
                             kernel_dtype=jnp.dtype(kernel.aval.dtype))


def _kernel_grad_transpose_x(kt, x, ct, *, layout, kernel_shape,
                             kernel_dtype):
  del kernel_shape, kernel_dtype
  return _taps.input_grad(layout, x.aval, ct, kt)


def _kernel_grad_transpose_ct(kt, x, ct, *, layout, kernel_shape,
                              kernel_dtype):
  del kernel_shape, kernel_dtype
  return _depthwise_p.bind(x, kt.astype(ct.aval.dtype), layout=layout)


def _depthwise_batch(args, dims, *, layout):
  """vmap: a batched input joins the batch axis; else vmap `forward`."""
  (x, kernel), (bx, bk) = args, dims
  if bk is None:  # (batching's "not mapped")
    x = jnp.moveaxis(x, bx, 0)
    size, batch = x.shape[:2]
    y = _depthwise_p.bind(x.reshape((size * batch,) + x.shape[2:]), kernel,
                          layout=layout)
    return y.reshape((size, batch) + y.shape[1:]), 0
  return jax.vmap(functools.partial(_taps.forward, layout), (bx, bk))(
      x, kernel), 0


def _kernel_grad_batch(args, dims, **params):
  return jax.vmap(functools.partial(_kernel_grad_impl, **params),
                  tuple(dims))(*args), 0


for _p, _impl, _abstract, _batch in (
    (_depthwise_p, _depthwise_impl, _depthwise_abstract_eval,
     _depthwise_batch),
    (_kernel_grad_p, _kernel_grad_impl, _kernel_grad_abstract_eval,
     _kernel_grad_batch)):
  _p.def_impl(functools.partial(_eager, _impl))
  _p.def_abstract_eval(_abstract)
  mlir.register_lowering(_p, mlir.lower_fun(_impl, multiple_results=False))
  batching.primitive_batchers[_p] = _batch
ad.defbilinear(_depthwise_p, _depthwise_transpose_x,
               _depthwise_transpose_kernel)
ad.defbilinear(_kernel_grad_p, _kernel_grad_transpose_x,
               _kernel_grad_transpose_ct)


def depthwise(x, kernel, spec: _args.ConvSpec, pads, precision):
  """The depthwise step (see `_taps`)."""
  del precision  # elementwise products, exact in the accumulation dtype
  layout = _taps.Layout(spec, tuple((int(lo), int(hi)) for lo, hi in pads))
  return _depthwise_p.bind(x, kernel, layout=layout)


#: The pointwise step: see `_taps.pointwise`.
pointwise = _taps.pointwise
