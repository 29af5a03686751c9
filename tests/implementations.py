"""Which implementations the tests run.

* `ALL`: every concrete name of `sepconv_jax.IMPLEMENTATIONS` ("auto" runs
  one of them, which `test_numerics` checks bit for bit).
* `BROAD`: what the broad modules (properties, numerics, serialization and
  transforms, the functional and implementation grids) run: `ALL`, less
  the implementations that this backend runs in Pallas's interpreter, where
  every compile takes seconds. `tests/test_pallas.py` covers those on the
  core grid instead: outputs and gradients against the float64 reference
  and "lax", every transform, the dtypes, ``precision=``, and the exports
  for CUDA and TPU. On a GPU or a TPU the kernels are compiled, and `BROAD`
  is `ALL`.
"""

from __future__ import annotations

import jax

import sepconv_jax

ALL = tuple(i for i in sepconv_jax.IMPLEMENTATIONS if i != "auto")

#: Implementations that run in Pallas's interpreter on a CPU.
INTERPRETED_ON_CPU = ("pallas",)


def broad() -> tuple[str, ...]:
  """`BROAD` for the current backend."""
  if jax.default_backend() == "cpu":
    return tuple(i for i in ALL if i not in INTERPRETED_ON_CPU)
  return ALL


BROAD = broad()
