"""Benchmarks sepconv_jax's implementations against other libraries' ones.

Two modes (``--mode``; "auto" picks by JAX's default backend):

* ``cpu``: the canonical shapes at batch 8, float32, against Keras 3, Flax,
  PyTorch and TensorFlow on the same cores (below).
* ``device`` (GPU, TPU): the canonical shapes at batch 8, 64 and 128, in
  float32 and bfloat16, against PyTorch on the GPU (`cudnn.benchmark`,
  channels_last, timed by CUDA events). It times device work: each timed
  call runs K distinct inputs through one jitted `lax.scan` (PyTorch: K
  calls between two CUDA events), and the time per application is the
  call's over K; at the largest batch it also times back-to-back single
  calls, as a cross-check of the method. Its roofline comes from the
  device's copy bandwidth and matmul peaks measured in the run. ``--quick``
  runs this mode's code on tiny shapes on any backend (the test suite runs
  it on CPU).

Results go to ``scripts/benchmark_results/<device>/`` (``--out``).

For each shape the CPU mode times, in one process and on the same cores:

* every sepconv_jax implementation (``sepconv_jax.IMPLEMENTATIONS`` less
  "auto", which resolves to one of them; the run records which);
* the peers that are installed: Keras 3 ``keras.ops.separable_conv`` on the
  JAX backend, ``flax.linen.Conv`` (``feature_group_count``) + 1x1
  ``Conv``, PyTorch ``conv2d(groups=C)`` + 1x1 in channels_last, and
  TensorFlow ``tf.nn.separable_conv2d``. A peer that is not installed is
  skipped and the run says so.

Two things are timed: the forward pass, and a training step (the output
and the VJP with respect to the input and both kernels, with a fixed
cotangent). Each is compiled (JAX: `jax.jit`; TensorFlow: `tf.function`),
warmed up, then timed repeatedly (``jax.block_until_ready`` for JAX); the
medians (and minimums) are reported. The implementations of a shape are
timed in interleaved blocks (see `time_cases`) so that a load change hits
all of them alike. For the sepconv_jax implementations the run also records the
temporary bytes of the compiled forward pass and training step
(``compiled.memory_analysis().temp_size_in_bytes``).

Output (in ``--out``, default ``scripts/benchmark_results/<device>``):
``results.md`` (Markdown tables), ``results.json`` and, in CPU mode,
``speedup.png`` (bar chart of the speedups; skipped with a message if
matplotlib is missing), plus the device, the library versions, the load
average and the allocator setting in all of them.

Usage:
  python scripts/benchmark.py            # the canonical shapes (minutes)
  python scripts/benchmark.py --quick    # a tiny smoke run (seconds)
  python scripts/benchmark.py --peers torch tf --repeats 15
  python scripts/benchmark.py --malloc tuned   # see `tune_malloc`
  python scripts/benchmark.py --mode device --quick   # device code, on CPU
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, NamedTuple, Optional

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))

import sepconv_jax  # noqa: E402
from sepconv_jax import _ops  # noqa: E402
from shapes import CANONICAL, QUICK, Shape  # noqa: E402,F401  (scripts/)

PEERS = ("keras", "flax", "torch", "tf")
PEER_NAMES = {
    "keras": "Keras 3 (JAX backend)",
    "flax": "flax.linen.Conv",
    "torch": "PyTorch (channels_last)",
    "tf": "TensorFlow",
}


class Case(NamedTuple):
  """One thing to time at one shape.

  A call of `forward` or `train` runs `per_call` applications; a callable
  that measures itself (CUDA events) returns its seconds as a float.
  """

  name: str          # "taps", "lax", "keras", ...
  library: str       # "sepconv_jax" or the peer's name
  forward: Callable[[], Any]
  train: Callable[[], Any]
  fwd_temp: Optional[int] = None
  train_temp: Optional[int] = None
  per_call: int = 1


def _arrays(shape: Shape, seed: int = 0):
  rng = np.random.default_rng(seed)
  n, h, w, c, f = shape[:5]
  k = shape.kernel
  x = rng.standard_normal((n, h, w, c), np.float32)
  dk = (rng.standard_normal((k, k, c, 1), np.float32) / k).astype(np.float32)
  pk = (rng.standard_normal((1, 1, c, f), np.float32) /
        math.sqrt(c)).astype(np.float32)
  oh, ow = shape.out_hw
  g = rng.standard_normal((n, oh, ow, f), np.float32)
  return x, dk, pk, g


def _jax_case(name, library, fn, params, x, g, memory: bool) -> Case:
  """A Case from fn(x, *params) -> y, timed through jax.jit."""
  x = jnp.asarray(x)
  params = jax.tree.map(jnp.asarray, params)
  g = jnp.asarray(g)
  fwd = jax.jit(fn)

  def step(x, params, g):
    y, vjp = jax.vjp(fn, x, params)
    return y, vjp(g)

  train = jax.jit(step)
  fwd_c = fwd.lower(x, params).compile()
  train_c = train.lower(x, params, g).compile()
  fwd_temp = train_temp = None
  if memory:
    fwd_temp = int(fwd_c.memory_analysis().temp_size_in_bytes)
    train_temp = int(train_c.memory_analysis().temp_size_in_bytes)
  return Case(
      name, library,
      lambda: jax.block_until_ready(fwd_c(x, params)),
      lambda: jax.block_until_ready(train_c(x, params, g)),
      fwd_temp, train_temp)


def sepconv_cases(shape: Shape, impls) -> list[Case]:
  x, dk, pk, g = _arrays(shape)
  cases = []
  for impl in impls:
    def fn(x, params, impl=impl):
      return sepconv_jax.separable_conv2d(
          x, params[0], params[1], strides=shape.stride, padding="same",
          implementation=impl)
    cases.append(_jax_case(impl, "sepconv_jax", fn, (dk, pk), x, g, True))
  return cases


def keras_case(shape: Shape) -> Case:
  import keras  # noqa: F401  (KERAS_BACKEND=jax is set above)
  if keras.backend.backend() != "jax":
    raise RuntimeError(f"Keras backend is {keras.backend.backend()!r}, not"
                       " 'jax' (set KERAS_BACKEND=jax)")
  x, dk, pk, g = _arrays(shape)

  def fn(x, params):
    return keras.ops.separable_conv(x, params[0], params[1],
                                    strides=shape.stride, padding="same",
                                    data_format="channels_last")
  return _jax_case("keras", PEER_NAMES["keras"], fn, (dk, pk), x, g, False)


def flax_case(shape: Shape) -> Case:
  import flax.linen as nn
  x, dk, pk, g = _arrays(shape)
  c, f, k = shape.channels, shape.filters, shape.kernel

  class Separable(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Conv(c, (k, k), strides=shape.stride, padding="SAME",
                  feature_group_count=c, use_bias=False, name="dw")(x)
      return nn.Conv(f, (1, 1), use_bias=False, name="pw")(x)

  model = Separable()
  # flax's grouped kernel is (kh, kw, 1, C): Keras's (kh, kw, C, 1), reshaped.
  params = {"params": {"dw": {"kernel": dk.reshape(k, k, 1, c)},
                       "pw": {"kernel": pk}}}

  def fn(x, params):
    return model.apply(params, x)
  return _jax_case("flax", PEER_NAMES["flax"], fn, params, x, g, False)


def torch_case(shape: Shape) -> Case:
  import torch
  import torch.nn.functional as F
  torch.set_num_threads(os.cpu_count() or 1)
  x, dk, pk, g = _arrays(shape)
  cl = torch.channels_last
  tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  tx = tx.contiguous(memory_format=cl)
  tdk = torch.from_numpy(np.ascontiguousarray(dk.transpose(2, 3, 0, 1)))
  tdk = tdk.contiguous(memory_format=cl)   # (C, 1, kh, kw)
  tpk = torch.from_numpy(np.ascontiguousarray(pk.transpose(3, 2, 0, 1)))
  tpk = tpk.contiguous(memory_format=cl)   # (F, C, 1, 1)
  tg = torch.from_numpy(np.ascontiguousarray(g.transpose(0, 3, 1, 2)))
  tg = tg.contiguous(memory_format=cl)
  c, k, s = shape.channels, shape.kernel, shape.stride
  # TF "same" padding; symmetric for odd kernels at stride 1. For stride 2
  # on even sizes TF pads (0, 1): pad explicitly then.
  pads = []
  for size in (shape.height, shape.width):
    total = max((-(-size // s) - 1) * s + k - size, 0)
    pads.append((total // 2, total - total // 2))
  symmetric = all(a == b for a, b in pads)

  def conv(inp, w1, w2):
    if symmetric:
      y = F.conv2d(inp, w1, stride=s, padding=(pads[0][0], pads[1][0]),
                   groups=c)
    else:
      inp = F.pad(inp, (pads[1][0], pads[1][1], pads[0][0], pads[0][1]))
      y = F.conv2d(inp, w1, stride=s, groups=c)
    return F.conv2d(y, w2)

  def forward():
    with torch.no_grad():
      return conv(tx, tdk, tpk)

  xr = tx.clone().requires_grad_(True)
  dkr = tdk.clone().requires_grad_(True)
  pkr = tpk.clone().requires_grad_(True)

  def train():
    y = conv(xr, dkr, pkr)
    return y, torch.autograd.grad(y, (xr, dkr, pkr), tg)
  return Case("torch", PEER_NAMES["torch"], forward, train)


def tf_case(shape: Shape) -> Case:
  import tensorflow as tf
  x, dk, pk, g = (tf.constant(a) for a in _arrays(shape))
  s = shape.stride

  @tf.function
  def forward(x, dk, pk):
    return tf.nn.separable_conv2d(x, dk, pk, (1, s, s, 1), "SAME")

  @tf.function
  def train(x, dk, pk, g):
    with tf.GradientTape() as tape:
      tape.watch([x, dk, pk])
      y = tf.nn.separable_conv2d(x, dk, pk, (1, s, s, 1), "SAME")
    return y, tape.gradient(y, [x, dk, pk], output_gradients=g)
  # TF runs ops on the CPU synchronously: the call returns when done.
  return Case("tf", PEER_NAMES["tf"], lambda: forward(x, dk, pk),
              lambda: train(x, dk, pk, g))


_PEER_BUILDERS = {"keras": keras_case, "flax": flax_case,
                  "torch": torch_case, "tf": tf_case}
_PEER_MODULES = {"keras": "keras", "flax": "flax", "torch": "torch",
                 "tf": "tensorflow"}


def available_peers(wanted) -> tuple[list[str], dict[str, str]]:
  """The wanted peers that import, and why each other one is skipped."""
  import importlib
  ok, skipped = [], {}
  for peer in wanted:
    try:
      importlib.import_module(_PEER_MODULES[peer])
      ok.append(peer)
    except Exception as e:  # ImportError, or a broken install
      skipped[peer] = f"{_PEER_MODULES[peer]} is not installed ({e})"
  return ok, skipped


def _time_once(fn) -> float:
  t = time.perf_counter()
  measured = fn()
  wall = time.perf_counter() - t
  return measured if isinstance(measured, float) else wall


def time_cases(cases: list[Case], repeats: int, min_time: float,
               max_repeats: int, passes: int = 3) -> dict:
  """Times every case's forward and training step, in interleaved blocks.

  Each callable is warmed up twice. Then `passes` times over the cases,
  each case runs a block of timed calls of its forward, then of its
  training step. A block starts after a pause and an untimed call, so that
  the worker threads another library left spinning (OpenMP, Eigen) are
  asleep and the caches hold this library's data; the passes spread every
  case over the whole run, so that a change of machine load hits all of
  them alike. A block is ``ceil(repeats / passes)`` calls, or more, up to
  ``max_repeats / passes``, until it has run for ``min_time / passes``
  seconds. Samples are seconds per application: a call's time over its
  case's `per_call`.
  """
  samples = {c.name: {"forward": [], "train": []} for c in cases}
  for c in cases:
    for _ in range(2):
      c.forward()
      c.train()
  block = -(-repeats // passes)
  cap = max(block, max_repeats // passes)
  for _ in range(passes):
    for c in cases:
      for kind in ("forward", "train"):
        fn = c.forward if kind == "forward" else c.train
        time.sleep(0.1)
        fn()
        runs = []
        while len(runs) < cap and (
            len(runs) < block or sum(runs) < min_time / passes):
          runs.append(_time_once(fn))
        samples[c.name][kind] += [r / c.per_call for r in runs]
  return samples


def _torch_matmul_seconds(n: int, runs: int) -> float:
  """Median time of PyTorch's n^3 matmul as a 1x1 channels-last conv
  (oneDNN: the kernel behind the PyTorch peer's pointwise step)."""
  import torch
  import torch.nn.functional as F
  torch.set_num_threads(os.cpu_count() or 1)
  cl = torch.channels_last
  x = torch.ones(1, n, 1, n).contiguous(memory_format=cl)
  w = torch.ones(n, n, 1, 1).contiguous(memory_format=cl)
  with torch.no_grad():
    F.conv2d(x, w)
    return statistics.median(_time_once(lambda: F.conv2d(x, w))
                             for _ in range(runs))


def calibrate(quick: bool, peers: tuple[str, ...] = ()) -> dict:
  """The machine's attainable peaks: the roofline.

  Compute: a large float32 matmul, in XLA:CPU's matmul library and, when
  PyTorch is a peer, in oneDNN (a 1x1 convolution); the peak is the faster.
  Memory: a streaming sum over an array far larger than the caches (read
  bandwidth; a write-back test would mostly time the page faults of its
  fresh output).
  """
  n = 256 if quick else 2048
  a = jnp.ones((n, n), jnp.float32)
  mm = jax.jit(lambda a: a @ a).lower(a).compile()
  elems = (1 << 16) if quick else (1 << 25)  # 128 MiB
  v = jnp.ones((elems,), jnp.float32)
  add = jax.jit(jnp.sum).lower(v).compile()

  def best(fn, arg, runs):
    jax.block_until_ready(fn(arg))
    return statistics.median(
        _time_once(lambda: jax.block_until_ready(fn(arg)))
        for _ in range(runs))
  runs = 3 if quick else 9
  t_mm = best(mm, a, runs)
  t_add = best(add, v, runs)
  result = {"matmul_gflops": 2 * n ** 3 / t_mm / 1e9,
            "stream_gbps": 4 * elems / t_add / 1e9,
            "matmul_n": n, "stream_bytes": 4 * elems}
  if "torch" in peers:
    result["torch_matmul_gflops"] = (
        2 * n ** 3 / _torch_matmul_seconds(n, runs) / 1e9)
  result["peak_gflops"] = max(result["matmul_gflops"],
                              result.get("torch_matmul_gflops", 0.0))
  return result


def load_average() -> Optional[list[float]]:
  try:
    return [round(v, 2) for v in os.getloadavg()]
  except OSError:
    return None


# glibc `mallopt` parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


def tune_malloc() -> str:
  """Keeps freed large blocks in glibc's heap (``--malloc tuned``).

  XLA:CPU allocates an executable's outputs and temporaries afresh on every
  call. glibc serves blocks above its mmap threshold (at most 32 MiB, and
  128 KiB until a block is freed) with a new `mmap`, and returns them to
  the OS on `free`, so each call page-faults its buffers in again: at these
  shapes up to half of a JAX training step's time. Raising the mmap and
  trim thresholds (what ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``
  do from the environment) keeps them in the main heap. Blocks that XLA's
  worker threads allocate come from per-thread arenas instead, whose heaps
  glibc unmaps once they are empty whatever the thresholds, so one arena
  (``MALLOC_ARENA_MAX=1``) is set too. It is a process setting, so every
  peer in the run gets it as well. Call it before any thread allocates.
  Returns what was done, for the report.
  """
  try:
    libc = ctypes.CDLL("libc.so.6")
    ok = (libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1
          and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
          and libc.mallopt(_M_ARENA_MAX, 1) == 1)
  except (OSError, AttributeError) as e:
    return f"default (tuning unavailable: {e})"
  if not ok:
    return "default (glibc mallopt refused the settings)"
  return ("tuned (glibc mallopt: mmap threshold 1 GiB, trim threshold 2 GiB, "
          "one arena)")


def malloc_setting(requested: str) -> str:
  env = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
  if requested == "tuned":
    return tune_malloc()
  if env:
    return "default, with " + ", ".join(f"{k}={v}" for k, v in
                                        sorted(env.items()))
  return "default (glibc as the process started)"


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def versions(peers) -> dict[str, str]:
  import importlib
  out = {"python": platform.python_version(), "jax": jax.__version__,
         "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__")
         else importlib.import_module("jaxlib").__version__,
         "numpy": np.__version__,
         "sepconv_jax": getattr(sepconv_jax, "__version__", "dev")}
  for peer in peers:
    mod = importlib.import_module(_PEER_MODULES[peer])
    out[_PEER_MODULES[peer]] = getattr(mod, "__version__", "?")
  return out


def geomean(values) -> Optional[float]:
  values = [v for v in values if v and v > 0]
  if not values:
    return None
  return math.exp(sum(math.log(v) for v in values) / len(values))


def summarize(shapes, results, impls, peers) -> dict:
  """Speedups of each sepconv_jax implementation over the peers."""
  auto = _ops.auto_implementation()
  if auto not in impls:  # e.g. --implementations lax
    auto = impls[0]
  summary = {"auto": auto, "per_shape": [], "geomean": {}}
  for shape in shapes:
    row = {"shape": shape.label}
    r = results[shape.label]
    for kind in ("forward", "train"):
      peer_ms = {p: r[p][kind + "_ms"] for p in peers if p in r}
      fastest = min(peer_ms, key=peer_ms.get) if peer_ms else None
      row[kind] = {"fastest_peer": fastest}
      for impl in impls:
        mine = r[impl][kind + "_ms"]
        row[kind][impl] = {p: peer_ms[p] / mine for p in peer_ms}
        if fastest:
          row[kind][impl]["fastest_peer"] = peer_ms[fastest] / mine
    summary["per_shape"].append(row)
  for kind in ("forward", "train"):
    summary["geomean"][kind] = {
        impl: {p: geomean([row[kind][impl].get(p)
                           for row in summary["per_shape"]])
               for p in list(peers) + ["fastest_peer"]}
        for impl in impls}
  return summary


def _fmt_ms(v: Optional[float]) -> str:
  if v is None:
    return "-"
  return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def _fmt_x(v: Optional[float]) -> str:
  return "-" if v is None else f"{v:.2f}x"


def _fmt_mib(v: Optional[int]) -> str:
  return "-" if v is None else f"{v / 2**20:.2f}"


def markdown(report: dict) -> str:
  impls, peers = report["implementations"], report["peers"]
  names = impls + peers
  lines = [
      "# sepconv_jax benchmark",
      "",
      f"- date: {report['date']}",
      f"- device: {report['device']} ({report['cpu']}, "
      f"{report['cpu_count']} cores)",
      "- versions: " + ", ".join(f"{k} {v}" for k, v in
                                   report["versions"].items()),
      f"- load average (1, 5, 15 min) before: {report['load_before']}, "
      f"after: {report['load_after']}; process niceness {report['nice']}",
      f"- allocator: {report['malloc']}",
      f"- float32, NHWC, {report['kernel']}x{report['kernel']} depthwise, "
      "\"same\" padding, depth multiplier 1, no bias; medians of "
      f">= {report['repeats']} timed runs after warm-up, in 3 interleaved "
      "blocks per implementation",
      f"- `implementation=\"auto\"` resolves to `\"{report['summary']['auto']}\"`"
      " on this backend",
  ]
  if report["skipped"]:
    for p, why in report["skipped"].items():
      lines.append(f"- skipped {PEER_NAMES[p]}: {why}")
  for kind, title in (("forward", "Forward pass"),
                      ("train", "Training step (output + VJP w.r.t. input"
                                " and both kernels)")):
    lines += ["", f"## {title}: median ms", ""]
    head = "| shape (HxWxC->F /stride) | " + " | ".join(
        f"`{n}`" if n in impls else PEER_NAMES[n] for n in names) + " |"
    lines += [head, "|" + "---|" * (len(names) + 1)]
    for shape in report["shapes"]:
      r = report["results"][shape]
      lines.append(f"| {shape} | " + " | ".join(
          _fmt_ms(r[n][kind + "_ms"]) for n in names) + " |")
    if peers:
      lines += ["", f"### {title}: speedup of each implementation "
                "(peer time / our time; > 1 = we are faster)", ""]
      cols = [(i, p) for i in impls for p in peers + ["fastest_peer"]]
      lines.append("| shape | " + " | ".join(
          f"`{i}` vs {'fastest peer' if p == 'fastest_peer' else p}"
          for i, p in cols) + " |")
      lines.append("|" + "---|" * (len(cols) + 1))
      for row in report["summary"]["per_shape"]:
        lines.append(f"| {row['shape']} | " + " | ".join(
            _fmt_x(row[kind][i].get(p)) for i, p in cols) + " |")
      gm = report["summary"]["geomean"][kind]
      lines.append("| **geomean** | " + " | ".join(
          _fmt_x(gm[i].get(p)) for i, p in cols) + " |")
  if peers:
    auto = report["summary"]["auto"]
    lines += ["", f"## `{auto}` against the fastest peer: medians and "
              "best runs", "",
              "Under a fluctuating machine load the minimum of the timed runs "
              "is the better estimate of unloaded speed; both are shown. "
              "(ratio = fastest peer's time / ours; > 1 = we are faster)", "",
              "| shape | fwd ratio (median) | fwd ratio (min) | fastest fwd peer (min) "
              "| train ratio (median) | train ratio (min) | fastest train "
              "peer (min) |", "|---|---|---|---|---|---|---|"]
    ratios = {k: {"median": [], "min": []} for k in ("forward", "train")}
    for shape in report["shapes"]:
      r = report["results"][shape]
      cells = []
      for kind in ("forward", "train"):
        for stat, key in (("median", f"{kind}_ms"), ("min", f"{kind}_min_ms")):
          best = min(peers, key=lambda p: r[p][key])
          ratio = r[best][key] / r[auto][key]
          ratios[kind][stat].append(ratio)
          cells.append(_fmt_x(ratio))
          if stat == "min":
            cells.append(PEER_NAMES[best])
      lines.append(f"| {shape} | " + " | ".join(cells) + " |")
    lines.append("| **geomean** | " + " | ".join(
        [_fmt_x(geomean(ratios["forward"]["median"])),
         _fmt_x(geomean(ratios["forward"]["min"])), "",
         _fmt_x(geomean(ratios["train"]["median"])),
         _fmt_x(geomean(ratios["train"]["min"])), ""]) + " |")
  lines += ["", "## Compiled temporaries (MiB; "
            "`memory_analysis().temp_size_in_bytes`)", "",
            "| shape | output | " + " | ".join(
                f"`{i}` forward | `{i}` train" for i in impls) +
            " | forward temp <= output |",
            "|" + "---|" * (2 * len(impls) + 3)]
  for shape in report["shapes"]:
    r = report["results"][shape]
    out = report["output_bytes"][shape]
    auto = report["summary"]["auto"]
    ok = r[auto]["forward_temp_bytes"] <= out
    lines.append(f"| {shape} | {_fmt_mib(out)} | " + " | ".join(
        f"{_fmt_mib(r[i]['forward_temp_bytes'])} | "
        f"{_fmt_mib(r[i]['train_temp_bytes'])}" for i in impls) +
        f" | {'yes' if ok else 'NO'} (`{auto}`) |")
  cal = report["roofline"]
  auto = report["summary"]["auto"]
  torch_peak = cal.get("torch_matmul_gflops")
  peaks = f"{cal['matmul_gflops']:.0f} GFLOP/s in XLA:CPU" + (
      f", {torch_peak:.0f} GFLOP/s in PyTorch (oneDNN 1x1 conv)"
      if torch_peak else "")
  lines += ["", f"## Roofline of the forward pass (`{auto}`)", "",
            f"Attainable peaks measured in this run: {peaks} "
            f"({cal['matmul_n']}^3 float32 matmul; the peak is the faster), "
            f"{cal['stream_gbps']:.1f} GB/s (streaming sum over "
            f"{cal['stream_bytes'] / 2**20:.0f} MiB). Roofline time = "
            "max(FLOPs / peak, minimal bytes / bandwidth); the minimal bytes "
            "are the input, the kernels and the output, once. The last "
            "column is the forward time 1.25x faster than the fastest peer's "
            "median, as a fraction of the roofline (over 100%: no program "
            "reaches it on this machine).", "",
            "| shape | GFLOP | MB (min) | roofline ms | measured ms | GFLOP/s |"
            " GB/s | % of roofline | 1.25x fastest peer needs |",
            "|---|---|---|---|---|---|---|---|---|"]
  peak = cal.get("peak_gflops", cal["matmul_gflops"])
  for shape in report["shapes"]:
    results = report["results"][shape]
    r = results[auto]
    fl, by = report["flops"][shape], report["min_bytes"][shape]
    t = r["forward_ms"] / 1e3
    roof = max(fl / (peak * 1e9), by / (cal["stream_gbps"] * 1e9))
    peer_ms = [results[p]["forward_ms"] for p in report["peers"]]
    need = (f"{min(peer_ms) / 1.25:.2f} ms = "
            f"{100 * roof * 1e3 / (min(peer_ms) / 1.25):.0f}%"
            if peer_ms else "")
    lines.append(f"| {shape} | {fl / 1e9:.3f} | {by / 1e6:.1f} | "
                 f"{roof * 1e3:.2f} | {t * 1e3:.2f} | {fl / t / 1e9:.1f} | "
                 f"{by / t / 1e9:.1f} | {100 * roof / t:.0f}% | {need} |")
  lines.append("")
  return "\n".join(lines)


def plot(report: dict, path: str) -> Optional[str]:
  """Writes the speedup chart; returns why not if it cannot."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return "matplotlib is not installed: no speedup.png"
  peers = report["peers"]
  if not peers:
    return "no peer was timed: no speedup.png"
  auto = report["summary"]["auto"]
  rows = report["summary"]["per_shape"]
  fig, axes = plt.subplots(1, 2, figsize=(14, 5), sharey=True)
  width = 0.8 / len(peers)
  for ax, (kind, title) in zip(axes, (("forward", "forward pass"),
                                      ("train", "training step"))):
    for j, peer in enumerate(peers):
      vals = [row[kind][auto].get(peer) or 0 for row in rows]
      xs = [i + (j - (len(peers) - 1) / 2) * width for i in range(len(rows))]
      ax.bar(xs, vals, width, label=PEER_NAMES[peer])
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([row["shape"] for row in rows], rotation=30,
                       ha="right", fontsize=8)
    ax.set_title(f"sepconv_jax `{auto}`: {title}")
    ax.set_ylabel("speedup (peer time / sepconv_jax time)")
    ax.grid(axis="y", which="both", alpha=0.3)
  axes[0].legend(fontsize=8)
  allocator = report.get("malloc", "default").split(" ")[0]
  fig.suptitle(f"{report['device']} ({report['cpu']}, {report['cpu_count']}"
               " cores), float32, batch "
               f"{report['batch']}, 3x3 'same', {allocator} allocator; "
               "> 1 = sepconv_jax faster")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return None


# ---------------------------------------------------------------------------
# Device mode: GPU and TPU (and, with --quick, any backend).

DEVICE_BATCHES = (8, 64, 128)
DEVICE_DTYPES = ("float32", "bfloat16")
DEVICE_PEERS = ("torch",)


def device_slug(name: str) -> str:
  """A folder name for a device: "NVIDIA H200" -> "nvidia-h200"."""
  slug = "".join(ch if ch.isalnum() else "-" for ch in name.lower())
  return "-".join(part for part in slug.split("-") if part)


def default_out() -> str:
  """``scripts/benchmark_results/<device>``; a CPU is named with its best
  vector extension (AVX-512 or AVX2 machines differ)."""
  if jax.default_backend() == "cpu":
    flags = cpu_flags()
    simd = ("avx512" if "avx512f" in flags else
            "avx2" if "avx2" in flags else "")
    name = f"cpu {cpu_name()} {simd}"
  else:
    name = str(jax.devices()[0].device_kind)
  return os.path.join(_HERE, "benchmark_results", device_slug(name))


def cpu_flags() -> set[str]:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          return set(line.split(":", 1)[1].split())
  except OSError:
    pass
  return set()


def _device_arrays(shape: Shape, dtype: str, k: int):
  """K distinct inputs and cotangents, and one pair of kernels."""
  xs, gs = [], []
  for i in range(k):
    x, dk, pk, g = _arrays(shape, seed=i)
    xs.append(x)
    gs.append(g)
  cast = lambda a: jnp.asarray(np.stack(a) if isinstance(a, list) else a,
                               dtype)
  return cast(xs), cast(dk), cast(pk), cast(gs)


def _scan_case(name, library, fn, params, xs, gs) -> Case:
  """A Case whose every call runs `fn` over K inputs in one `lax.scan`."""

  def forward(xs, params):
    return jax.lax.map(lambda x: fn(x, params), xs)

  def train(xs, params, gs):
    def one(acc, xg):
      x, g = xg
      y, vjp = jax.vjp(fn, x, params)
      dx, dparams = vjp(g)
      return jax.tree.map(jnp.add, acc, dparams), (y, dx)
    zero = jax.tree.map(jnp.zeros_like, params)
    return jax.lax.scan(one, zero, (xs, gs))

  fwd_c = jax.jit(forward).lower(xs, params).compile()
  train_c = jax.jit(train).lower(xs, params, gs).compile()
  return Case(name, library,
              lambda: jax.block_until_ready(fwd_c(xs, params)),
              lambda: jax.block_until_ready(train_c(xs, params, gs)),
              per_call=xs.shape[0])


def _sepconv_fn(shape: Shape, impl: str):
  def fn(x, params):
    return sepconv_jax.separable_conv2d(
        x, params[0], params[1], strides=shape.stride, padding="same",
        implementation=impl)
  return fn


def device_sepconv_cases(shape, dtype, impls, k, method) -> list[Case]:
  xs, dk, pk, gs = _device_arrays(shape, dtype, k)
  cases = []
  for impl in impls:
    fn = _sepconv_fn(shape, impl)
    if method == "scan":
      cases.append(_scan_case(impl, "sepconv_jax", fn, (dk, pk), xs, gs))
    else:
      cases.append(_jax_case(impl, "sepconv_jax", fn, (dk, pk), xs[0],
                             gs[0], False))
  return cases


def torch_device_case(shape: Shape, dtype: str, k: int, method: str) -> Case:
  """PyTorch on the GPU (CPU without one): cudnn.benchmark, channels_last,
  K calls between two CUDA events (one call with ``method="calls"``)."""
  import torch
  import torch.nn.functional as F
  cuda = torch.cuda.is_available()
  device = "cuda" if cuda else "cpu"
  torch.backends.cudnn.benchmark = True
  tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
  cl = torch.channels_last
  count = k if method == "scan" else 1

  def tensor(a, grad=False):
    t = torch.from_numpy(np.ascontiguousarray(a)).to(device, tdtype)
    t = t.contiguous(memory_format=cl) if t.dim() == 4 else t
    return t.requires_grad_(grad)

  xs, gs = [], []
  for i in range(count):
    x, dk, pk, g = _arrays(shape, seed=i)
    xs.append(tensor(x.transpose(0, 3, 1, 2), grad=True))
    gs.append(tensor(g.transpose(0, 3, 1, 2)))
  tdk = tensor(dk.transpose(2, 3, 0, 1), grad=True)   # (C, 1, kh, kw)
  tpk = tensor(pk.transpose(3, 2, 0, 1), grad=True)   # (F, C, 1, 1)
  c, kk, s = shape.channels, shape.kernel, shape.stride
  pads = []
  for size in (shape.height, shape.width):
    total = max((-(-size // s) - 1) * s + kk - size, 0)
    pads.append((total // 2, total - total // 2))

  def conv(inp):
    inp = F.pad(inp, (pads[1][0], pads[1][1], pads[0][0], pads[0][1]))
    return F.conv2d(F.conv2d(inp, tdk, stride=s, groups=c), tpk)

  def timed(body):
    if cuda:
      start = torch.cuda.Event(enable_timing=True)
      end = torch.cuda.Event(enable_timing=True)
      start.record()
      for i in range(count):
        body(i)
      end.record()
      end.synchronize()
      return start.elapsed_time(end) / 1e3
    t = time.perf_counter()
    for i in range(count):
      body(i)
    return time.perf_counter() - t

  def forward():
    with torch.no_grad():
      return timed(lambda i: conv(xs[i]))

  def train():
    return timed(lambda i: torch.autograd.grad(conv(xs[i]), (xs[i], tdk, tpk),
                                               gs[i]))
  return Case("torch", "PyTorch" + (" CUDA" if cuda else " CPU"), forward,
              train, per_call=count)


def _best_median(fn, runs: int) -> float:
  jax.block_until_ready(fn())
  return statistics.median(_time_once(lambda: jax.block_until_ready(fn()))
                           for _ in range(runs))


def calibrate_device(quick: bool) -> dict:
  """The device's copy bandwidth and matmul peaks, measured in JAX."""
  elems = (1 << 18) if quick else (1 << 28)   # 1 MiB / 1 GiB of float32
  v = jnp.ones((elems,), jnp.float32)
  copy = jax.jit(lambda a: a + 1.0).lower(v).compile()
  runs = 3 if quick else 20
  t_copy = _best_median(lambda: copy(v), runs)
  n = 256 if quick else 8192
  peaks = {}
  for name, dtype, precision in (
      ("float32_default", jnp.float32, None),
      ("float32_highest", jnp.float32, jax.lax.Precision.HIGHEST),
      ("bfloat16", jnp.bfloat16, None)):
    a = jnp.ones((n, n), dtype)
    mm = jax.jit(lambda a, p=precision: jnp.dot(a, a, precision=p)
                 ).lower(a).compile()
    peaks[name] = 2 * n ** 3 / _best_median(lambda: mm(a), runs) / 1e9
  return {"copy_gbps": 2 * 4 * elems / t_copy / 1e9, "copy_bytes": 4 * elems,
          "matmul_n": n, "matmul_gflops": peaks}


def _record(samples, cases) -> dict:
  res = {}
  for c in cases:
    fwd, tr = samples[c.name]["forward"], samples[c.name]["train"]
    res[c.name] = {
        "library": c.library,
        "forward_us": statistics.median(fwd) * 1e6,
        "train_us": statistics.median(tr) * 1e6,
        "forward_min_us": min(fwd) * 1e6,
        "train_min_us": min(tr) * 1e6,
        "samples": len(fwd),
        "per_call": c.per_call,
    }
  return res


def run_device(args, impls, peers, skipped) -> dict:
  """The device mode (see the module docstring)."""
  shapes = QUICK[:1] if args.quick else CANONICAL
  batches = args.batches or ((2,) if args.quick else DEVICE_BATCHES)
  dtypes = args.dtypes or DEVICE_DTYPES
  k = args.scan_steps or (2 if args.quick else 8)
  repeats = args.repeats or (3 if args.quick else 9)
  min_time = args.min_time if args.min_time is not None else (
      0.0 if args.quick else 0.2)
  max_repeats = args.max_repeats or (3 if args.quick else 30)
  device = jax.devices()[0]
  report = {
      "mode": "device",
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "quick": args.quick,
      "device": str(device.device_kind),
      "backend": jax.default_backend(),
      "cpu": cpu_name(),
      "versions": versions(peers),
      "auto": _ops.auto_implementation(),
      "implementations": impls,
      "peers": peers,
      "skipped": skipped,
      "batches": list(batches),
      "dtypes": list(dtypes),
      "scan_steps": k,
      "repeats": repeats,
      "load_before": load_average(),
      "results": {},
      "cross_check": {},
  }
  print(f"device mode: {report['device']} ({report['backend']}); batches"
        f" {batches}, {dtypes}, K={k}", flush=True)
  report["roofline"] = calibrate_device(args.quick)
  for dtype in dtypes:
    for batch in batches:
      for base in shapes:
        shape = base._replace(batch=batch)
        t0 = time.perf_counter()
        cases = device_sepconv_cases(shape, dtype, impls, k, "scan")
        if "torch" in peers:
          cases.append(torch_device_case(shape, dtype, k, "scan"))
        samples = time_cases(cases, repeats, min_time, max_repeats)
        key = f"{dtype} b{batch} {shape.label}"
        report["results"][key] = dict(
            dtype=dtype, batch=batch, shape=shape.label,
            flops=shape.flops(),
            min_bytes=shape.min_bytes() // 4 * np.dtype(
                jnp.dtype(dtype)).itemsize,
            **_record(samples, cases))
        if batch == max(batches):  # the method, cross-checked
          calls = device_sepconv_cases(shape, dtype, impls, 1, "calls")
          if "torch" in peers:
            calls.append(torch_device_case(shape, dtype, 1, "calls"))
          report["cross_check"][key] = _record(
              time_cases(calls, repeats, min_time, max_repeats), calls)
        print(f"{key:>34}  " + "  ".join(
            f"{c.name}: {report['results'][key][c.name]['forward_us']:.0f}/"
            f"{report['results'][key][c.name]['train_us']:.0f} us"
            for c in cases) + f"  [{time.perf_counter() - t0:.0f} s]",
            flush=True)
        del cases
        gc.collect()
  report["load_after"] = load_average()
  return report


def _roofline_us(result: dict, roof: dict, kind: str) -> float:
  """max(FLOPs / matmul peak, bytes / copy bandwidth), in microseconds.

  Forward: the layer's FLOPs, and the input, kernels and output moved
  once. Training step: three times the FLOPs (output, input gradient,
  kernel gradients) and twice the bytes (the output and the input
  gradient are written, the input and the cotangent read).
  """
  peak = roof["matmul_gflops"]["bfloat16" if result["dtype"] == "bfloat16"
                               else "float32_default"]
  flops, moved = ((result["flops"], result["min_bytes"]) if kind == "forward"
                  else (3 * result["flops"], 2 * result["min_bytes"]))
  return 1e6 * max(flops / (peak * 1e9), moved / (roof["copy_gbps"] * 1e9))


def markdown_device(report: dict) -> str:
  impls, peers = report["implementations"], report["peers"]
  names = impls + peers
  roof = report["roofline"]
  peaks = ", ".join(f"{name} {v:.0f} GFLOP/s"
                    for name, v in roof["matmul_gflops"].items())
  lines = [
      "# sepconv_jax benchmark: device mode", "",
      f"- date: {report['date']}",
      f"- device: {report['device']} (backend {report['backend']}; host"
      f" {report['cpu']})",
      "- versions: " + ", ".join(f"{k} {v}"
                                 for k, v in report["versions"].items()),
      f"- load average before: {report['load_before']}, after:"
      f" {report['load_after']}",
      f"- measured: copy {roof['copy_gbps']:.0f} GB/s"
      f" ({roof['copy_bytes'] >> 20} MiB read and written); {peaks}"
      f" ({roof['matmul_n']}^3)",
      f"- NHWC, 3x3 depthwise, \"same\", depth multiplier 1, no bias;"
      f" microseconds per application: each timed call runs"
      f" {report['scan_steps']} distinct inputs through one jitted"
      " `lax.scan` (PyTorch: that many calls between two CUDA events);"
      f" medians of >= {report['repeats']} calls after warm-up",
      f"- `implementation=\"auto\"` resolves to `\"{report['auto']}\"` here",
  ]
  for p, why in report["skipped"].items():
    lines.append(f"- skipped {p}: {why}")
  for kind, title in (("forward", "Forward pass"),
                      ("train", "Training step (output + VJP w.r.t. input"
                                " and both kernels)")):
    lines += ["", f"## {title}: median us per application", "",
              "| case | " + " | ".join(f"`{n}`" for n in names) +
              " | roofline us | fastest vs roofline |",
              "|" + "---|" * (len(names) + 3)]
    for key, r in report["results"].items():
      times = {n: r[n][f"{kind}_us"] for n in names if n in r}
      roof_us = _roofline_us(r, roof, kind)
      best = min(times.values())
      lines.append(f"| {key} | " + " | ".join(
          f"{times[n]:.0f}" if n in times else "-" for n in names) +
          f" | {roof_us:.0f} | {100 * roof_us / best:.0f}% |")
  if "pallas" in impls:
    lines += ["", "## `pallas` against the faster of `lax` and PyTorch "
              "(ratio > 1: pallas is faster)", "",
              "| case | forward | training step | forward % of memory bound |",
              "|---|---|---|---|"]
    for key, r in report["results"].items():
      cells = []
      for kind in ("forward", "train"):
        others = [r[n][f"{kind}_us"] for n in ("lax", "torch") if n in r]
        cells.append(f"{min(others) / r['pallas'][f'{kind}_us']:.2f}x"
                     if others else "-")
      mem_us = 1e6 * r["min_bytes"] / (roof["copy_gbps"] * 1e9)
      cells.append(f"{100 * mem_us / r['pallas']['forward_us']:.0f}%")
      lines.append(f"| {key} | " + " | ".join(cells) + " |")
  lines += ["", "## Cross-check of the method: scan of K inputs vs single "
            "back-to-back calls, us per application (forward / training)",
            "", "| case | " + " | ".join(f"`{n}` scan | `{n}` calls"
                                        for n in names) + " |",
            "|" + "---|" * (2 * len(names) + 1)]
  for key, calls in report["cross_check"].items():
    r = report["results"][key]
    cells = []
    for n in names:
      if n in r and n in calls:
        cells += [f"{r[n]['forward_us']:.0f} / {r[n]['train_us']:.0f}",
                  f"{calls[n]['forward_us']:.0f} / {calls[n]['train_us']:.0f}"]
      else:
        cells += ["-", "-"]
    lines.append(f"| {key} | " + " | ".join(cells) + " |")
  lines.append("")
  return "\n".join(lines)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="tiny shapes, few repeats: a smoke run")
  parser.add_argument(
      "--mode", choices=("auto", "cpu", "device"), default="auto",
      help="'device' on a GPU or TPU, 'cpu' on a CPU (auto: by backend)")
  parser.add_argument("--peers", nargs="*", default=None, choices=PEERS,
                      help="peers to time (default: all the mode has)")
  parser.add_argument("--batches", nargs="*", type=int, default=None,
                      help="device mode: batch sizes (default 8 64 128)")
  parser.add_argument("--dtypes", nargs="*", default=None,
                      choices=DEVICE_DTYPES,
                      help="device mode: dtypes (default both)")
  parser.add_argument("--scan-steps", type=int, default=None,
                      help="device mode: inputs per timed call (default 8)")
  parser.add_argument("--implementations", nargs="*", default=None,
                      help="sepconv_jax implementations (default: all)")
  parser.add_argument("--repeats", type=int, default=None,
                      help="minimum timed rounds per shape")
  parser.add_argument("--min-time", type=float, default=None,
                      help="minimum seconds of timed runs per callable")
  parser.add_argument("--max-repeats", type=int, default=None)
  parser.add_argument("--out", default=None,
                      help="default: scripts/benchmark_results/<device>")
  parser.add_argument("--no-plot", action="store_true")
  parser.add_argument(
      "--malloc", choices=("default", "tuned"), default="default",
      help="'tuned' keeps freed buffers in glibc's heap for the whole run "
      "(every library in it); see tune_malloc")
  args = parser.parse_args(argv)

  malloc = malloc_setting(args.malloc)  # before any array is allocated
  mode = args.mode
  if mode == "auto":
    mode = "cpu" if jax.default_backend() == "cpu" else "device"
  out = args.out or default_out()
  if mode == "device":
    impls = args.implementations or [
        i for i in sepconv_jax.IMPLEMENTATIONS if i != "auto"]
    peers, skipped = available_peers(
        DEVICE_PEERS if args.peers is None else args.peers)
    for p, why in skipped.items():
      print(f"skipping {PEER_NAMES[p]}: {why}", flush=True)
    report = run_device(args, impls, peers, skipped)
    report["malloc"] = malloc
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
      json.dump(report, f, indent=1)
    text = markdown_device(report)
    with open(os.path.join(out, "results.md"), "w") as f:
      f.write(text)
    print(text)
    return report
  shapes = QUICK if args.quick else CANONICAL
  repeats = args.repeats or (3 if args.quick else 11)
  min_time = args.min_time if args.min_time is not None else (
      0.0 if args.quick else 0.5)
  max_repeats = args.max_repeats or (3 if args.quick else 41)
  # Pallas runs in its interpreter on a CPU: correct, but not a speed.
  impls = args.implementations or [
      i for i in sepconv_jax.IMPLEMENTATIONS if i not in ("auto", "pallas")]
  peers, skipped = available_peers(PEERS if args.peers is None
                                   else args.peers)
  for p, why in skipped.items():
    print(f"skipping {PEER_NAMES[p]}: {why}", flush=True)

  report = {
      "mode": "cpu",
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "quick": args.quick,
      "device": str(jax.devices()[0].device_kind),
      "backend": jax.default_backend(),
      "cpu": cpu_name(),
      "cpu_count": os.cpu_count(),
      "platform": platform.platform(),
      "versions": versions(peers),
      "threads": {"jax": "XLA:CPU default (all cores)",
                  "torch": f"torch.set_num_threads({os.cpu_count()})",
                  "tf": "default"},
      "load_before": load_average(),
      "malloc": malloc,
      "nice": os.nice(0) if hasattr(os, "nice") else None,
      "batch": shapes[0].batch,
      "kernel": shapes[0].kernel,
      "dtype": "float32",
      "repeats": repeats,
      "implementations": impls,
      "peers": peers,
      "skipped": skipped,
      "shapes": [s.label for s in shapes],
      "shape_params": {s.label: s._asdict() for s in shapes},
      "output_bytes": {s.label: s.output_bytes for s in shapes},
      "flops": {s.label: s.flops() for s in shapes},
      "min_bytes": {s.label: s.min_bytes() for s in shapes},
      "results": {},
  }
  print(f"device: {report['device']} ({report['cpu']}, "
        f"{report['cpu_count']} cores); load {report['load_before']}; "
        f"malloc {malloc}", flush=True)
  report["roofline"] = calibrate(args.quick, tuple(peers))
  for shape in shapes:
    t0 = time.perf_counter()
    cases = sepconv_cases(shape, impls)
    for peer in peers:
      cases.append(_PEER_BUILDERS[peer](shape))
    samples = time_cases(cases, repeats, min_time, max_repeats)
    res = {}
    for c in cases:
      fwd, tr = samples[c.name]["forward"], samples[c.name]["train"]
      res[c.name] = {
          "library": c.library,
          "forward_ms": statistics.median(fwd) * 1e3,
          "train_ms": statistics.median(tr) * 1e3,
          "forward_samples": len(fwd),
          "train_samples": len(tr),
          "forward_min_ms": min(fwd) * 1e3,
          "train_min_ms": min(tr) * 1e3,
          "forward_temp_bytes": c.fwd_temp,
          "train_temp_bytes": c.train_temp,
      }
    report["results"][shape.label] = res
    print(f"{shape.label:>24}  " + "  ".join(
        f"{n}: {r['forward_ms']:.2f}/{r['train_ms']:.2f} ms"
        for n, r in res.items()) + f"  [{time.perf_counter() - t0:.0f} s]",
        flush=True)
    del cases
    gc.collect()
  report["load_after"] = load_average()
  report["summary"] = summarize(shapes, report["results"], impls, peers)

  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(report, f, indent=1)
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(markdown(report))
  if not args.no_plot:
    why = plot(report, os.path.join(out, "speedup.png"))
    if why:
      print(why, flush=True)
  print(markdown(report))
  return report


if __name__ == "__main__":
  main()
