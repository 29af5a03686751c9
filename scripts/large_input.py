"""Peak memory of a forward and a backward pass on one large image, on CPU.

    python scripts/large_input.py                  # 1x2048x2048x32, every impl
    python scripts/large_input.py --size 64 --channels 4 --max-ratio inf

The job: a 3x3 "same" SeparableConv2D (32 filters by default) on a
``1 x size x size x channels`` float32 input, the gradients being those of
``0.5 * sum(y**2)`` with respect to the input and every param, in two modes:

* ``step``: the jitted forward pass alone (its output then dropped), then a
  jitted ``jax.value_and_grad``: forward and backward in one program, as a
  jitted training step runs them.
* ``vjp``: ``jax.vjp`` of the jitted forward pass keeps the output and the
  residuals of the backward pass, then pulls back the cotangent ``y``: what
  un-jitted differentiation, ``nn.scan`` and saving remat policies keep.

Each implementation (``"auto"`` and every name in
``sepconv_jax.IMPLEMENTATIONS``) and mode runs in a fresh child process, so
each measures its own peak. The peak is ``resource.getrusage(RUSAGE_SELF)
.ru_maxrss`` of that child: the whole process, the Python interpreter, jax
and XLA included, not just the arrays. It is compared with the bytes of
the input plus the output (for the default job 512 MiB + 512 MiB = 1 GiB).

Prints one line per run and, last, one JSON object with every
figure. Exits 1 if any peak exceeds ``--max-ratio`` (default 4) times the
input+output bytes, 2 if a child fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("step", "vjp")


def _rss_bytes() -> int:
  """The peak RSS of this process so far (Linux reports KiB, macOS bytes)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak if sys.platform == "darwin" else peak * 1024


def _current_rss_bytes() -> int:
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  except OSError:
    return 0


def _make_input(jax, jnp, lax, shape):
  """Zero-mean, unit-variance pseudo-random float32 of `shape`.

  An integer hash of each element's index, in one jitted elementwise loop:
  the only buffer is the result (jax.random.normal peaks at over 4 times
  its output's size; NumPy then `jnp.asarray` at 3 times).
  """

  @jax.jit
  def make():
    index = jnp.zeros(shape, jnp.uint32)
    for axis in range(len(shape)):
      stride = 1
      for size in shape[axis + 1:]:
        stride *= size
      index = index + lax.broadcasted_iota(jnp.uint32, shape, axis) * (
          jnp.uint32(stride % 2**32))
    h = index * jnp.uint32(0x9E3779B1)
    h = h ^ (h >> 15)
    h = h * jnp.uint32(0x85EBCA77)
    h = h ^ (h >> 13)
    uniform = (h >> 8).astype(jnp.float32) * (1.0 / (1 << 24))
    return (uniform - 0.5) * 12**0.5

  return make()


def child(args: argparse.Namespace) -> dict:
  """Runs the job in this process and returns its figures."""
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  if _REPO not in sys.path:
    sys.path.insert(0, _REPO)
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jax import lax  # pylint: disable=import-outside-toplevel
  import sepconv_jax  # pylint: disable=import-outside-toplevel

  baseline = _rss_bytes()
  layer = sepconv_jax.SeparableConv2D(
      args.filters, 3, padding="same", implementation=args.implementation)
  shape = (1, args.size, args.size, args.channels)
  x = _make_input(jax, jnp, lax, shape)
  # The params depend only on the channel count: init on a small image.
  params = layer.init(jax.random.key(1),
                      jnp.zeros((1, 8, 8, args.channels)))["params"]
  jax.block_until_ready((x, params))
  after_inputs = _rss_bytes()

  forward = jax.jit(lambda p, x: layer.apply({"params": p}, x))

  def loss(p, x):
    y = layer.apply({"params": p}, x)
    return 0.5 * jnp.sum(jnp.square(y))

  if args.mode == "step":
    # The forward pass alone (inference), its output dropped, then one
    # training step: the jitted value_and_grad, forward and backward in
    # one program, as a jitted train step runs them.
    start = time.perf_counter()
    y = jax.block_until_ready(forward(params, x))
    forward_s = time.perf_counter() - start
    out_shape, out_bytes = y.shape, y.size * y.dtype.itemsize
    del y
    after_forward = _rss_bytes()
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    start = time.perf_counter()
    value, grads = jax.block_until_ready(step(params, x))
    backward_s = time.perf_counter() - start
  else:
    # jax.vjp: the forward pass keeps its output and the residuals the
    # backward pass needs; the backward pass pulls back the cotangent y
    # (the gradient of 0.5 * sum(y**2)).
    start = time.perf_counter()
    y, pullback = jax.vjp(forward, params, x)
    jax.block_until_ready(y)
    forward_s = time.perf_counter() - start
    out_shape, out_bytes = y.shape, y.size * y.dtype.itemsize
    after_forward = _rss_bytes()
    start = time.perf_counter()
    grads = jax.block_until_ready(pullback(y))
    backward_s = time.perf_counter() - start
    value = 0.5 * jnp.sum(jnp.square(y))

  finite = bool(jnp.isfinite(value)) and all(
      bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  in_bytes = x.size * x.dtype.itemsize
  peak = _rss_bytes()
  return dict(
      implementation=args.implementation,
      resolved=getattr(getattr(sepconv_jax, "_ops", None),
                       "auto_implementation", lambda: None)()
      if args.implementation == "auto" else args.implementation,
      mode=args.mode, backend=jax.default_backend(),
      input_shape=list(shape), output_shape=list(out_shape),
      input_bytes=in_bytes, output_bytes=out_bytes,
      baseline_rss_bytes=baseline, after_inputs_rss_bytes=after_inputs,
      after_forward_rss_bytes=after_forward,
      peak_rss_bytes=peak, current_rss_bytes=_current_rss_bytes(),
      ratio=peak / (in_bytes + out_bytes),
      ratio_above_baseline=(peak - baseline) / (in_bytes + out_bytes),
      forward_s=forward_s, backward_s=backward_s, finite=finite,
  )


def implementations() -> list[str]:
  """"auto" and every registered implementation, without importing jax.

  On a CPU "pallas" runs in Pallas's interpreter, which is not meant for
  images of this size, so it is left out there.
  """
  code = ("import sepconv_jax, json, jax; print(json.dumps([i for i in"
          " dict.fromkeys(('auto',) + tuple(sepconv_jax.IMPLEMENTATIONS))"
          " if not (i == 'pallas' and jax.default_backend() == 'cpu')]))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=True, cwd=_REPO,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", type=int, default=2048,
                      help="height and width of the image (default 2048)")
  parser.add_argument("--channels", type=int, default=32)
  parser.add_argument("--filters", type=int, default=32)
  parser.add_argument("--implementation", action="append",
                      help="run only these (repeatable); default: 'auto' and"
                      " every name in sepconv_jax.IMPLEMENTATIONS")
  parser.add_argument("--mode", action="append", choices=MODES,
                      help="run only these (repeatable); default: both."
                      " step: the forward pass, then a jitted value_and_grad"
                      " training step; vjp: jax.vjp keeps the output and the"
                      " residuals, then pulls back the cotangent")
  parser.add_argument("--max-ratio", type=float, default=4.0,
                      help="fail if peak RSS > this * (input + output bytes);"
                      " 'inf' to only report (default 4)")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)

  if args.child:
    args.implementation = args.implementation[0]
    args.mode = args.mode[0]
    print(json.dumps(child(args)))
    return 0

  impls = args.implementation or implementations()
  runs = [(impl, mode) for impl in impls for mode in args.mode or MODES]
  results, failed = [], False
  for impl, mode in runs:
    cmd = [sys.executable, os.path.abspath(__file__), "--child",
           "--implementation", impl, "--mode", mode, "--size", str(args.size),
           "--channels", str(args.channels), "--filters", str(args.filters)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    if proc.returncode != 0:
      failed = True
      print(f"{impl} {mode}: child failed (exit {proc.returncode}):\n"
            f"{proc.stderr[-3000:]}", file=sys.stderr)
      continue
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r["over_limit"] = not (r["ratio"] <= args.max_ratio and r["finite"])
    results.append(r)
    mib = 2.0**20
    print(f"{impl:>6} ({r['resolved']}) {mode:>4}: input"
          f" {r['input_bytes'] / mib:.0f} MiB + output {r['output_bytes'] / mib:.0f} MiB; peak RSS"
          f" {r['peak_rss_bytes'] / mib:.0f} MiB = {r['ratio']:.2f}x"
          f" (after import {r['baseline_rss_bytes'] / mib:.0f} MiB;"
          f" {r['ratio_above_baseline']:.2f}x above it); forward"
          f" {r['forward_s']:.1f} s, backward {r['backward_s']:.1f} s"
          f"{'' if r['finite'] else '; NON-FINITE GRADIENTS'}"
          f"{'  OVER LIMIT' if r['over_limit'] else ''}")
  print(json.dumps(dict(max_ratio=args.max_ratio if math.isfinite(
      args.max_ratio) else None, results=results)))
  if failed:
    return 2
  return 1 if any(r["over_limit"] for r in results) else 0


if __name__ == "__main__":
  sys.exit(main())
