"""The float64 NumPy reference's VJP is the adjoint of its forward pass.

`reference.separable_conv2d_vjp` is the oracle of gradient tests; it is
checked here against the N-D reference's forward pass alone, by the adjoint
identity of each linear argument: for the forward pass ``y`` linear in
``a`` (the others fixed, no bias), ``<y(v), g> == <v, vjp_a(g)>`` for
random ``v`` and ``g``; and the bias's cotangent is the sum of ``g``.
float64 throughout: the identity holds to ~1e-12 relative.
"""

from __future__ import annotations

import numpy as np
import pytest

try:
  from tests import reference as ref
  from tests import reference_nd as ref_nd
except ImportError:  # tests/ itself on sys.path
  import reference as ref
  import reference_nd as ref_nd


@pytest.mark.parametrize("strides, dilation, padding, size, kernel, m", [
    (1, 1, "same", (12, 11), (3, 3), 2), (2, 1, "same", (9, 8), (3, 2), 1),
    ((2, 3), 1, "valid", (10, 11), (4, 3), 3),
    (1, (2, 3), "same", (9, 10), (3, 3), 2), (1, 2, "valid", (12, 12), (2, 3),
                                               1),
    ((2, 1), 1, ((2, 0), (1, 3)), (7, 9), (2, 3), 1)])
def test_vjp_is_the_adjoint_of_the_forward_pass(strides, dilation, padding,
                                                size, kernel, m):
  rng = np.random.default_rng(0)
  args = [rng.standard_normal((2, *size, 3)),
          rng.standard_normal((*kernel, 3, m)),
          rng.standard_normal((1, 1, 3 * m, 4))]
  conv = dict(strides=strides, padding=padding, dilation_rate=dilation)
  forward = lambda x, dk, pk: ref_nd.separable(  # (explicit pads too)
      x, dk, pk, None, ref.pair(strides), padding, ref.pair(dilation))
  g = rng.standard_normal(forward(*args).shape)
  cotangents = ref.separable_conv2d_vjp(*args, g, **conv)
  for i in range(3):
    v = rng.standard_normal(args[i].shape)
    with_v = list(args)
    with_v[i] = v
    lhs = np.sum(forward(*with_v) * g)
    rhs = np.sum(v * cotangents[i])
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12, atol=1e-12 * np.sum(
        np.abs(g)))
  np.testing.assert_allclose(cotangents[3], g.sum(axis=(0, 1, 2)),
                             rtol=1e-14)
