"""Page faults per call of one jitted forward pass, in this process.

XLA:CPU allocates each call's outputs afresh, so how glibc's allocator
treats a freed block decides whether the next call faults it in again
(docs/performance.md, "The allocator"). The outcome can differ from one process to the
next, so run this several times under each setting and compare::

  for i in $(seq 10); do python scripts/page_faults.py; done
  for i in $(seq 10); do MALLOC_ARENA_MAX=1 \\
    MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=2147483647 \\
    python scripts/page_faults.py; done

One line per process: the shape, ms per call (mean of `--calls` after
warm-up), minor page faults per call and system CPU ms per call. An output
of ``B`` bytes that is faulted in anew costs about ``B / 4096`` faults.
Linux only (`resource.getrusage`).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402

import sepconv_jax  # noqa: E402


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shape", default="8,112,112,32,64",
                      help="N,H,W,C,F (default: %(default)s)")
  parser.add_argument("--calls", type=int, default=50)
  parser.add_argument("--implementation", default="auto")
  args = parser.parse_args(argv)
  n, h, w, c, f = (int(v) for v in args.shape.split(","))
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (n, h, w, c))
  dk = jax.random.normal(keys[1], (3, 3, c, 1))
  pk = jax.random.normal(keys[2], (1, 1, c, f))
  fn = jax.jit(lambda x, dk, pk: sepconv_jax.separable_conv2d(
      x, dk, pk, padding="same", implementation=args.implementation))
  for _ in range(5):
    fn(x, dk, pk).block_until_ready()
  before = resource.getrusage(resource.RUSAGE_SELF)
  start = time.perf_counter()
  for _ in range(args.calls):
    fn(x, dk, pk).block_until_ready()
  elapsed = time.perf_counter() - start
  after = resource.getrusage(resource.RUSAGE_SELF)
  result = {
      "shape": args.shape,
      "ms_per_call": 1e3 * elapsed / args.calls,
      "faults_per_call": (after.ru_minflt - before.ru_minflt) / args.calls,
      "system_ms_per_call": 1e3 * (after.ru_stime - before.ru_stime)
                            / args.calls,
  }
  print(f"{result['shape']}: {result['ms_per_call']:.2f} ms/call, "
        f"{result['faults_per_call']:.0f} minor faults/call, "
        f"{result['system_ms_per_call']:.2f} ms system/call", flush=True)
  return result


if __name__ == "__main__":
  main()
