"""Reading lowered programs: what a test can assert about StableHLO.

A CPU machine lowers for every platform (`jax.export` with
``platforms=("cuda",)`` or ``("tpu",)``), so the tests read the module a
GPU or a TPU would compile and assert what it contains: which
implementation's ops, which precision on every contraction, which kernel
custom calls. A silent fallback then fails a test.
"""

from __future__ import annotations

import re

import jax
from jax import export

PLATFORMS = ("cpu", "cuda", "tpu")

_CONTRACTION = re.compile(r"stablehlo\.(dot_general|convolution)\b(.*)")
_PRECISION = re.compile(r"precision(?:_config)? = \[([^\]]*)\]")
_GROUPS = re.compile(r"feature_group_count = (\d+)")
_CUSTOM_CALL = re.compile(r"stablehlo\.custom_call @([\w$.]+)")

#: Custom calls whose targets promise no compatibility (Triton kernels);
#: exporting them must be allowed explicitly.
_UNSTABLE_CALLS = ("__gpu$xla.gpu.triton",)


def lower(fn, *args, platforms=("cpu",)) -> str:
  """The StableHLO text of `jax.jit(fn)` lowered for `platforms`."""
  checks = [export.DisabledSafetyCheck.custom_call(t) for t in _UNSTABLE_CALLS]
  exported = export.export(jax.jit(fn), platforms=platforms,
                           disabled_checks=checks)(*args)
  return exported.mlir_module()


def contractions(text: str) -> list[tuple[str, tuple[str, ...]]]:
  """Every dot and convolution: (op, the precision of each operand).

  An op without a precision attribute gets ``()``: the backend default.
  """
  found = []
  for line in text.splitlines():
    match = _CONTRACTION.search(line)
    if not match:
      continue
    precision = _PRECISION.search(match.group(2))
    names = ()
    if precision:
      names = tuple(re.sub(r"#stablehlo<precision (\w+)>", r"\1", p).strip()
                    for p in precision.group(1).split(","))
    found.append((match.group(1), names))
  return found


def grouped_convolutions(text: str) -> list[int]:
  """The ``feature_group_count`` of every convolution with groups > 1."""
  return [int(g) for g in _GROUPS.findall(text) if int(g) > 1]


def custom_calls(text: str) -> set[str]:
  """The targets of the module's custom calls."""
  return set(_CUSTOM_CALL.findall(text))
