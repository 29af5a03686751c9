"""An independent float64 NumPy reference for depthwise-separable convolution.

Written from the definition only (no jax, no lax): explicit TF-style padding,
an explicit sum over kernel taps for the depthwise part, an einsum for the
pointwise part, then the bias. Every expected value in the tests that is not a
closed form or a Keras output comes from here.

Only rank-4 inputs are handled (N, H, W, C) / (N, C, H, W); tests reshape
unbatched or multi-batch-dim inputs themselves.
"""

from __future__ import annotations

import numpy as np


def pair(value):
  """An int or a pair -> a pair of ints."""
  if isinstance(value, (tuple, list)):
    assert len(value) == 2, value
    return int(value[0]), int(value[1])
  return int(value), int(value)


def tf_same_pads(size, kernel, stride, dilation):
  """TF SAME: total = max((ceil(in/s)-1)*s + (k-1)*d + 1 - in, 0)."""
  out = -(-size // stride)  # ceil(in / s)
  effective = (kernel - 1) * dilation + 1
  total = max((out - 1) * stride + effective - size, 0)
  before = total // 2
  return before, total - before


def output_size(size, kernel, stride, dilation, padding):
  """The spec's output size formulas (used by the shape tests)."""
  padding = padding.lower()
  if padding == "same":
    return -(-size // stride)
  return (size - (kernel - 1) * dilation - 1) // stride + 1


def pad_input(x, kernel_hw, strides, dilation, padding):
  """Zero-pads an NHWC float64 array for the given padding mode."""
  padding = padding.lower()
  if padding == "valid":
    return x
  assert padding == "same", padding
  (kh, kw), (sh, sw), (dh, dw) = kernel_hw, strides, dilation
  ph = tf_same_pads(x.shape[1], kh, sh, dh)
  pw = tf_same_pads(x.shape[2], kw, sw, dw)
  return np.pad(x, ((0, 0), ph, pw, (0, 0)))


def _to_nhwc(x, data_format):
  x = np.asarray(x).astype(np.float64)
  assert x.ndim == 4, x.shape
  if data_format == "channels_first":
    x = np.transpose(x, (0, 2, 3, 1))
  else:
    assert data_format == "channels_last", data_format
  return x


def _from_nhwc(y, data_format):
  if data_format == "channels_first":
    return np.transpose(y, (0, 3, 1, 2))
  return y


def _depthwise_nhwc(x, depthwise_kernel, strides, padding, dilation_rate):
  k = np.asarray(depthwise_kernel).astype(np.float64)
  kh, kw, c, m = k.shape
  assert x.shape[-1] == c, (x.shape, k.shape)
  sh, sw = pair(strides)
  dh, dw = pair(dilation_rate)
  xp = pad_input(x, (kh, kw), (sh, sw), (dh, dw), padding)
  n, hp, wp, _ = xp.shape
  oh = (hp - (kh - 1) * dh - 1) // sh + 1
  ow = (wp - (kw - 1) * dw - 1) // sw + 1
  if oh < 1 or ow < 1:
    raise ValueError(f"reference: empty output {(oh, ow)}")
  out = np.zeros((n, oh, ow, c, m), np.float64)
  for i in range(kh):
    for j in range(kw):
      h0, w0 = i * dh, j * dw
      patch = xp[:, h0:h0 + (oh - 1) * sh + 1:sh, w0:w0 + (ow - 1) * sw + 1:sw, :]
      assert patch.shape == (n, oh, ow, c), patch.shape
      out += patch[..., None] * k[i, j]  # (n,oh,ow,c,1) * (c,m)
  # Keras order: output channel c * M + m comes from input channel c.
  return out.reshape(n, oh, ow, c * m)


def depthwise_conv2d(x, depthwise_kernel, strides=1, padding="valid",
                     dilation_rate=1, data_format="channels_last"):
  """Float64 depthwise convolution of a rank-4 input."""
  xn = _to_nhwc(x, data_format)
  y = _depthwise_nhwc(xn, depthwise_kernel, strides, padding, dilation_rate)
  return _from_nhwc(y, data_format)


def separable_conv2d(x, depthwise_kernel, pointwise_kernel, bias=None,
                     strides=1, padding="valid", dilation_rate=1,
                     data_format="channels_last"):
  """Float64 separable convolution (depthwise, pointwise, + bias)."""
  xn = _to_nhwc(x, data_format)
  d = _depthwise_nhwc(xn, depthwise_kernel, strides, padding, dilation_rate)
  p = np.asarray(pointwise_kernel).astype(np.float64)
  assert p.shape[:2] == (1, 1) and p.shape[2] == d.shape[-1], (p.shape, d.shape)
  y = np.einsum("nhwk,kf->nhwf", d, p[0, 0])
  if bias is not None:
    y = y + np.asarray(bias).astype(np.float64)
  return _from_nhwc(y, data_format)


def separable_conv2d_vjp(x, depthwise_kernel, pointwise_kernel, cotangent,
                         strides=1, padding="valid", dilation_rate=1):
  """Float64 cotangents of (x, depthwise, pointwise, bias), channels-last.

  `padding` is "valid", "same" or explicit ``((top, bottom), (left,
  right))``. The adjoint of each linear step, from the definition: the
  bias's is the sum of the cotangent, the pointwise kernel's the depthwise
  result against it, and the depthwise step's cotangent ``gd = g @
  pointwise^T`` goes back through every tap: tap ``(i, j)`` read the padded
  input window at offset ``(i * d_h, j * d_w)`` with stride ``s``, so its
  kernel entry gets that window times ``gd`` and the window gets ``gd``
  times the entry.
  """
  x = _to_nhwc(x, "channels_last")
  k = np.asarray(depthwise_kernel, np.float64)
  p = np.asarray(pointwise_kernel, np.float64)[0, 0]
  g = np.asarray(cotangent, np.float64)
  kh, kw, c, m = k.shape
  (sh, sw), (dh, dw) = pair(strides), pair(dilation_rate)
  if isinstance(padding, str):
    xp = pad_input(x, (kh, kw), (sh, sw), (dh, dw), padding)
    top = left = 0  # the padding before the first row and column
    if padding.lower() == "same":
      top = tf_same_pads(x.shape[1], kh, sh, dh)[0]
      left = tf_same_pads(x.shape[2], kw, sw, dw)[0]
  else:
    xp = np.pad(x, ((0, 0), *padding, (0, 0)))
    (top, _), (left, _) = padding
  d = _depthwise_nhwc(xp, k, strides, "valid", dilation_rate)
  n, oh, ow, _ = d.shape
  gd = np.einsum("nhwf,kf->nhwk", g, p).reshape(n, oh, ow, c, m)
  dxp = np.zeros_like(xp)
  dk = np.zeros_like(k)
  for i in range(kh):
    for j in range(kw):
      rows = slice(i * dh, i * dh + (oh - 1) * sh + 1, sh)
      cols = slice(j * dw, j * dw + (ow - 1) * sw + 1, sw)
      dk[i, j] = np.einsum("nhwc,nhwcm->cm", xp[:, rows, cols, :], gd)
      dxp[:, rows, cols, :] += np.einsum("nhwcm,cm->nhwc", gd, k[i, j])
  dx = dxp[:, top:top + x.shape[1], left:left + x.shape[2], :]
  dpk = np.einsum("nhwk,nhwf->kf", d, g)[None, None]
  return dx, dk, dpk, g.sum(axis=(0, 1, 2))


def assert_close(actual, expected, rtol=1e-4, atol=1e-4):
  """f32 vs float64 reference; atol scaled by the reference's magnitude."""
  actual = np.asarray(actual, dtype=np.float64)
  expected = np.asarray(expected, dtype=np.float64)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale)
