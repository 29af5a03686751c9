"""The library's warning classes, and the once-per-process warnings."""

from __future__ import annotations

import warnings


class PallasInterpretWarning(UserWarning):
  """``implementation="pallas"`` is running in Pallas's interpreter.

  Emitted once per process, when a program with the fused Pallas kernel is
  first lowered for a CPU: there the kernels run in Pallas's interpreter,
  which computes the same values as on GPU but is many times slower than
  ``"taps"`` and slow to compile. Filter it like any warning, e.g.
  ``warnings.filterwarnings("ignore",
  category=sepconv_jax.PallasInterpretWarning)``.
  """


_warned_interpret = False


def warn_pallas_interpret() -> None:
  """Warns, the first time in this process, that the kernels interpret."""
  global _warned_interpret
  if _warned_interpret:
    return
  _warned_interpret = True
  warnings.warn(
      "implementation='pallas' is lowered for a CPU, where its kernels run"
      " in Pallas's interpreter: correct, but far slower than"
      " implementation='taps' (what 'auto' runs on CPU) and slow to"
      " compile. The interpreter is for tests, and for checking a GPU or"
      " TPU program on a CPU. (Once per process; to silence it:"
      " warnings.filterwarnings('ignore',"
      " category=sepconv_jax.PallasInterpretWarning).)",
      PallasInterpretWarning, stacklevel=2)
