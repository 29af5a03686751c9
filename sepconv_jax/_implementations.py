"""The implementations behind ``implementation=``, and what "auto" runs.

An implementation computes the convolution on arrays that `_ops` has
validated, brought to one batch axis and to the compute dtype:

* ``depthwise(x, kernel, spec, pads, precision)``;
* ``pointwise(y, kernel, spec, precision)``;
* optionally ``fused(x, depthwise_kernel, pointwise_kernel, bias, spec,
  pads, precision)``, the whole layer in one call (bias included;
  `pointwise_kernel` None for the depthwise step alone), used instead of
  the two steps.

``x`` has shape ``(N, *spatial, C)`` (or ``(N, C, *spatial)``), ``pads``
holds explicit ``(before, after)`` pairs and ``spec`` is the normalised
:class:`~sepconv_jax._args.ConvSpec`.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional

import jax
from jax import lax

from sepconv_jax import _args
from sepconv_jax import _lax
from sepconv_jax import _pallas
from sepconv_jax import _taps_primitives


class Implementation(NamedTuple):
  """How one implementation computes the depthwise and pointwise steps:
  the two steps, or one `fused` call for both."""

  depthwise: Optional[Callable[..., jax.Array]] = None
  pointwise: Optional[Callable[..., jax.Array]] = None
  fused: Optional[Callable[..., jax.Array]] = None


REGISTRY: dict[str, Implementation] = {
    # `lax.conv_general_dilated` with `feature_group_count`: the reference.
    "lax": Implementation(_lax.depthwise, _lax.pointwise),
    # Shifted taps + matmul, with their own derivatives: see `_taps`.
    "taps": Implementation(_taps_primitives.depthwise,
                           _taps_primitives.pointwise),
    # One fused Pallas kernel per pass (GPU, TPU; interpreted on CPU).
    "pallas": Implementation(fused=_pallas.fused),
}
assert set(_args.IMPLEMENTATIONS) == {"auto", *REGISTRY}, REGISTRY

# What "auto" runs per lowering platform (`lax.platform_dependent`'s names),
# and on every platform not named (see `auto_implementation`).
_AUTO = {"cpu": "taps"}
_AUTO_ELSEWHERE = "lax"


def auto_implementation(platform: Optional[str] = None) -> str:
  """The implementation ``implementation="auto"`` runs on `platform`.

  The policy, from ``scripts/benchmark.py`` runs (results in
  ``scripts/benchmark_results/`` and ``docs/performance.md``):

  * CPU: ``"taps"``. XLA:CPU runs grouped convolutions as a slow generic
    loop and expands their kernel gradient into a dense ``C x C``
    convolution; the shifted taps were faster everywhere they were
    measured.
  * GPU (CUDA, ROCm): ``"lax"``, XLA's native grouped convolution, which
    was faster than ``"taps"`` on an NVIDIA H200.
  * TPU and anything else: ``"lax"`` (unmeasured).
  * ``"pallas"`` nowhere, until a benchmark on the platform measures it
    faster.

  The choice is made per lowering platform, not per the backend that
  traces: a function traced on a CPU and exported for CUDA runs ``"lax"``
  there.

  Args:
    platform: a lowering platform ("cpu", "cuda", "rocm", "tpu") or a
      `jax.default_backend()` name ("gpu"); None for the default backend.

  Returns:
    One of the concrete names of :data:`sepconv_jax.IMPLEMENTATIONS`.
  """
  if platform is None:
    platform = jax.default_backend()
  return _AUTO.get(platform, _AUTO_ELSEWHERE)


def _steps(impl: Implementation, spec, pads, precision, x, dk, pk, b):
  """The convolution by `impl`, bias included."""
  if impl.fused is not None:
    return impl.fused(x, dk, pk, b, spec, pads, precision)
  y = impl.depthwise(x, dk, spec, pads, precision)
  if pk is not None:
    y = impl.pointwise(y, pk, spec, precision)
  if b is not None:
    shape = (b.shape[0],) if spec.channels_last else (
        (b.shape[0],) + (1,) * spec.rank)
    y = y + b.reshape(shape)
  return y


def run(implementation: str, x, dk, pk, b, spec: _args.ConvSpec, pads,
        precision) -> jax.Array:
  """Runs `implementation` (a name of `IMPLEMENTATIONS`) on the arrays.

  "auto" stages out one branch per distinct choice of
  `auto_implementation` with `lax.platform_dependent`, so the choice
  follows the platform the program is lowered for: a multi-platform
  `jax.export` carries each platform's own path, and outside `jax.jit`
  only the current platform's branch runs.
  """
  steps = functools.partial(_steps, spec=spec, pads=pads, precision=precision)
  if implementation != "auto":
    return steps(REGISTRY[implementation], x=x, dk=dk, pk=pk, b=b)
  # One branch per implementation (equal branches are merged by identity).
  branches = {
      name: functools.partial(
          lambda impl, x, dk, pk, b: steps(impl, x=x, dk=dk, pk=pk, b=b),
          REGISTRY[name])
      for name in {*_AUTO.values(), _AUTO_ELSEWHERE}}
  return lax.platform_dependent(
      x, dk, pk, b, default=branches[_AUTO_ELSEWHERE],
      **{platform: branches[name] for platform, name in _AUTO.items()})
