"""A float64 NumPy reference for N-D depthwise(-separable) convolutions.

Written from the definition, independent of lax: the input is padded (with
`np.pad`, in the asked-for mode), then every kernel tap adds a strided,
dilated window of it times that tap's weights. It covers 1-D, 2-D and 3-D,
explicit (before, after) pads, causal padding and the non-zero pad modes.
"""

from __future__ import annotations

import itertools

import numpy as np

_NP_MODES = {"zeros": "constant", "reflect": "reflect",
             "symmetric": "symmetric", "circular": "wrap"}


def pads_for(padding, spatial, kernel, strides, dilation):
  """The (before, after) pads of each spatial dim, from the definitions."""
  if isinstance(padding, (tuple, list)):
    return [tuple(p) for p in padding]
  padding = padding.lower()
  out = []
  for n, k, s, d in zip(spatial, kernel, strides, dilation):
    eff = (k - 1) * d + 1
    if padding == "valid":
      out.append((0, 0))
    elif padding == "causal":
      out.append((eff - 1, 0))
    else:  # TensorFlow SAME
      total = max((-(-n // s) - 1) * s + eff - n, 0)
      out.append((total // 2, total - total // 2))
  return out


def depthwise(x, kernel, strides, padding, dilation, channels_last=True,
              padding_mode="zeros"):
  """Depthwise conv of (N, *spatial, C) (or (N, C, *spatial)) in float64."""
  x = np.asarray(x, np.float64)
  k = np.asarray(kernel, np.float64)
  rank = k.ndim - 2
  if not channels_last:
    x = np.moveaxis(x, 1, -1)
  spatial = x.shape[1:-1]
  ksize = k.shape[:rank]
  pads = pads_for(padding, spatial, ksize, strides, dilation)
  x = np.pad(x, [(0, 0), *pads, (0, 0)], mode=_NP_MODES[padding_mode])
  out_sizes = [(x.shape[1 + i] - (ksize[i] - 1) * dilation[i] - 1)
               // strides[i] + 1 for i in range(rank)]
  assert min(out_sizes) >= 1, out_sizes
  n, c, m = x.shape[0], k.shape[-2], k.shape[-1]
  out = np.zeros((n, *out_sizes, c, m))
  for tap in itertools.product(*(range(s) for s in ksize)):
    window = tuple(
        slice(t * d, t * d + (o - 1) * s + 1, s)
        for t, d, s, o in zip(tap, dilation, strides, out_sizes))
    out += x[(slice(None), *window)][..., None] * k[tap]
  out = out.reshape(n, *out_sizes, c * m)
  return out if channels_last else np.moveaxis(out, -1, 1)


def separable(x, dk, pk, bias, strides, padding, dilation, channels_last=True,
              padding_mode="zeros"):
  """Depthwise, then pointwise (an explicit channel contraction), + bias."""
  d = depthwise(x, dk, strides, padding, dilation, channels_last,
                padding_mode)
  if not channels_last:
    d = np.moveaxis(d, 1, -1)
  y = np.tensordot(d, np.asarray(pk, np.float64).reshape(pk.shape[-2:]),
                   axes=([-1], [0]))
  if bias is not None:
    y = y + np.asarray(bias, np.float64)
  return y if channels_last else np.moveaxis(y, -1, 1)


def assert_adjoint(grads, cotangent, forward, operands, bound, seed=0):
  """Checks reverse-mode gradients by the adjoint identity, in float64.

  `forward(*operands)` is linear in each operand alone (the others fixed),
  so for a random direction ``v`` in operand ``i``:
  ``<grads[i], v> == <cotangent, forward(..., v, ...)>``. The two sides may
  differ by `bound` times the same products on absolute values.
  """
  rng = np.random.default_rng(seed)
  g = np.asarray(cotangent, np.float64)
  operands = [np.asarray(a, np.float64) for a in operands]
  for i, grad in enumerate(grads):
    v = rng.standard_normal(operands[i].shape)
    with_v = list(operands)
    with_v[i] = v
    absolute = [np.abs(a) for a in with_v]
    lhs = float(np.sum(np.asarray(grad, np.float64) * v))
    rhs = float(np.sum(g * forward(*with_v)))
    scale = float(np.sum(np.abs(g) * forward(*absolute)))
    assert abs(lhs - rhs) <= bound * scale + 1e-30, (i, lhs, rhs, scale)
