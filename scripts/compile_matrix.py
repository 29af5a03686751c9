"""The compile matrix: every implementation, compiled for 8 accelerators.

Compiles, deviceless (`deviceless`), the forward pass and a training step
(the output plus the VJP with respect to the input and both kernels) of
every implementation (``"auto"`` resolved per target: it is compiled as a
user calls it) at the canonical shapes (`shapes.CANONICAL`, 3x3 "same"),
batch 64, in float32 and bfloat16, for TPU v4, v5e, v5p and v6e and the
NVIDIA A100, L4, H100 and B200: 896 programs; and the Pallas kernels'
spread beyond them (`SPREAD`: 7x7, dilation, multipliers with a stride,
the depthwise step alone, 1-D, odd sizes and channel counts, C=2304,
channels_first), forward and training step in float32: 112 more.

With ``--check`` a Pallas program at a canonical shape must also need no
more temporary memory than its bound (`temp_bound`, issue 19), or be
listed, with the reason, in the xfail file's ``over_memory_bound``.

Writes ``docs/compile_matrix.md`` (compiled or not, temporary memory
against the program's inputs plus outputs, and ptxas spills, per target)
and ``scripts/benchmark_results/compile_matrix.json``. With ``--check`` it
exits 1 unless every program compiles, except those listed in
``scripts/compile_xfail.json`` with the compiler message they fail with
today; such an expected failure that compiles, or fails with another
message, fails the check too (strict).

Usage (in an environment with the compilers; ``--install`` adds them,
pinned to the installed jax):
  python scripts/compile_matrix.py --install --check       # what CI runs
  python scripts/compile_matrix.py --targets cuda:h100 --impls pallas
  python scripts/compile_matrix.py --write-xfail   # record today's failures
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from typing import NamedTuple, Optional

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
sys.path.insert(0, _HERE)

import deviceless  # noqa: E402  (first: it sets the environment JAX reads)
from shapes import CANONICAL, Shape  # noqa: E402

IMPLS = ("lax", "taps", "pallas", "auto")
KINDS = ("forward", "train")
DTYPES = ("float32", "bfloat16")
BATCH = 64
XFAIL = os.path.join(_HERE, "compile_xfail.json")
TABLE = os.path.join(_ROOT, "docs", "compile_matrix.md")
JSON = os.path.join(_HERE, "benchmark_results", "compile_matrix.json")


class Spread(NamedTuple):
  """A configuration of "pallas" beyond the canonical shapes."""

  label: str
  x: tuple[int, ...]            # the input's shape (batch 64)
  kernel: tuple[int, ...]       # the depthwise kernel's spatial size
  multiplier: int
  filters: Optional[int]        # None: the depthwise step alone
  options: tuple = ()           # (name, value) pairs for the layer


#: Every kind of configuration "pallas" accepts beyond the canonical
#: shapes: large kernels, "valid", dilation, multipliers with a stride,
#: the depthwise step alone, 1-D, odd sizes and channel counts that are
#: neither powers of 2 nor multiples of 128, many channels, channels_first.
SPREAD = [
    Spread("7x7 valid 28x28x96->160", (BATCH, 28, 28, 96), (7, 7), 1, 160),
    Spread("5x5 dilation 2 27x27x72->72", (BATCH, 27, 27, 72), (5, 5), 1, 72,
           (("dilation_rate", 2), ("padding", "same"))),
    Spread("3x3 M=3 stride 2 33x33x40->120", (BATCH, 33, 33, 40), (3, 3), 3,
           120, (("strides", 2), ("padding", "same"))),
    Spread("depthwise alone 3x3 M=2 28x28x100", (BATCH, 28, 28, 100),
           (3, 3), 2, None, (("padding", "same"),)),
    Spread("1-D k=5 causal 500x200->300", (BATCH, 500, 200), (5,), 1, 300,
           (("padding", "causal"),)),
    Spread("3x3 7x7x2304->2304", (BATCH, 7, 7, 2304), (3, 3), 1, 2304,
           (("padding", "same"),)),
    Spread("channels_first 3x3 17x17x48->80", (BATCH, 48, 17, 17), (3, 3), 1,
           80, (("padding", "same"), ("data_format", "channels_first"))),
]


class Program(NamedTuple):
  target: str
  impl: str
  kind: str
  shape: Shape | Spread
  dtype: str
  precision: Optional[str] = None

  @property
  def id(self) -> str:
    p = "" if self.precision is None else f"/{self.precision}"
    return (f"{self.target}/{self.impl}/{self.kind}/{self.shape.label}/"
            f"{self.dtype}{p}")


def build(program: Program):
  """``(fn, args)``: the program as a function of `jax.ShapeDtypeStruct`s."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import sepconv_jax  # pylint: disable=g-import-not-at-top
  s, dtype = program.shape, jnp.dtype(program.dtype)
  if isinstance(s, Spread):
    return _build_spread(program)
  n, h, w, c, f, k = (s.batch, s.height, s.width, s.channels, s.filters,
                      s.kernel)
  oh, ow = s.out_hw
  spec = lambda *shape: jax.ShapeDtypeStruct(shape, dtype)

  def layer(x, dk, pk, b):
    return sepconv_jax.separable_conv2d(
        x, dk, pk, b, strides=s.stride, padding="same",
        precision=program.precision, implementation=program.impl)

  args = [spec(n, h, w, c), spec(k, k, c, 1), spec(1, 1, c, f), spec(f)]
  if program.kind == "forward":
    return layer, args

  def train_step(x, dk, pk, b, ct):
    y, pullback = jax.vjp(lambda x, dk, pk: layer(x, dk, pk, b), x, dk, pk)
    return (y, *pullback(ct))

  return train_step, args + [spec(n, oh, ow, f)]


def _build_spread(program: Program):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import sepconv_jax  # pylint: disable=g-import-not-at-top
  s, dtype = program.shape, jnp.dtype(program.dtype)
  options = dict(s.options)
  first = options.get("data_format") == "channels_first"
  c = s.x[1] if first else s.x[-1]
  spec = lambda *shape: jax.ShapeDtypeStruct(shape, dtype)
  args = [spec(*s.x), spec(*s.kernel, c, s.multiplier)]
  if s.filters is not None:
    args.append(spec(*(1,) * len(s.kernel), c * s.multiplier, s.filters))
  args.append(spec(s.filters or c * s.multiplier))

  def layer(*a):
    if s.filters is None:
      return sepconv_jax.depthwise_conv(*a, **options,
                                        implementation=program.impl)
    return sepconv_jax.separable_conv(*a, **options,
                                      implementation=program.impl)

  if program.kind == "forward":
    return layer, args
  out = jax.eval_shape(layer, *args)

  def train_step(*a):
    *weights, b = a[:-1]
    y, pullback = jax.vjp(lambda *w: layer(*w, b), *weights)
    return (y, *pullback(a[-1]))

  return train_step, args + [spec(*out.shape)]


def run_programs(programs: list[Program]) -> list[dict]:
  """Compiles each program (in this process); one dict per program."""
  out = []
  for program in programs:
    fn, args = build(program)
    result = deviceless.compile_program(program.target, fn, *args)
    record = result.as_dict()
    if result.error:
      record["error"] = deviceless.short_error(result.error)
    record.update(id=program.id, impl=program.impl, kind=program.kind,
                  shape=program.shape.label, dtype=program.dtype,
                  precision=program.precision,
                  spread=isinstance(program.shape, Spread))
    out.append(record)
  return out


def programs(targets, impls, kinds, dtypes, shapes, precision=None,
             spread=()):
  """The canonical programs, then the spread's (Pallas, float32)."""
  out = [Program(t, impl, kind, shape._replace(batch=BATCH), dtype,
                 precision)
         for t in targets for shape in shapes for dtype in dtypes
         for kind in kinds for impl in impls]
  if "pallas" in impls:
    out += [Program(t, "pallas", kind, s, "float32", precision)
            for t in targets for s in spread for kind in kinds]
  return out


def run(all_programs: list[Program], workers: int) -> list[dict]:
  """Compiles the programs in `workers` processes, a (target, shape) each
  task; prints progress; returns the records in the programs' order."""
  tasks: dict[tuple, list[Program]] = {}
  for p in all_programs:
    tasks.setdefault((p.target, p.shape), []).append(p)
  records: dict[str, dict] = {}
  done = 0
  start = time.perf_counter()
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(workers,
                                              mp_context=context) as pool:
    futures = [pool.submit(run_programs, chunk) for chunk in tasks.values()]
    for future in concurrent.futures.as_completed(futures):
      for record in future.result():
        records[record["id"]] = record
        done += 1
      print(f"  {done}/{len(all_programs)} compiled"
            f" ({time.perf_counter() - start:.0f} s)", flush=True)
  return [records[p.id] for p in all_programs]


# ------------------------------------------------------------------ check


def check(records: list[dict], expected: dict[str, str]) -> list[str]:
  """The problems: unexpected failures, expected failures that compiled
  (strict) or failed with another message."""
  problems = []
  for r in records:
    want = expected.get(r["id"])
    if r["ok"] and want is not None:
      problems.append(f"XPASS (strict): {r['id']} compiles; remove it from"
                      f" {os.path.relpath(XFAIL, _ROOT)}")
    elif not r["ok"] and want is None:
      problems.append(f"FAILED: {r['id']}: {r['error']}")
    elif not r["ok"] and want not in r["error"]:
      problems.append(f"FAILED differently: {r['id']}: expected {want!r},"
                      f" got {r['error']}")
  return problems


#: The temporary-memory bounds of the Pallas kernels (issue 19): the
#: forward pass at most this share of its arguments plus outputs; the
#: training step at most "lax"'s temporaries on the same target, or this
#: share of its own arguments plus outputs, whichever is larger.
FORWARD_TEMP_SHARE = 0.25
TRAIN_TEMP_SHARE = 0.35


def temp_bound(r: dict, records: list[dict]) -> Optional[int]:
  """The most temporary bytes Pallas program `r` may need, or None for a
  program the bounds do not cover (another implementation, not compiled).
  """
  if r["impl"] != "pallas" or not r["ok"] or r.get("spread"):
    return None
  io = r["argument_bytes"] + r["output_bytes"]
  if r["kind"] == "forward":
    return int(FORWARD_TEMP_SHARE * io)
  lax_id = r["id"].replace("/pallas/", "/lax/", 1)
  lax_temp = max((q["temp_bytes"] for q in records
                  if q["id"] == lax_id and q["ok"]), default=0)
  return max(lax_temp, int(TRAIN_TEMP_SHARE * io))


def memory_problems(records: list[dict], expected: dict[str, str]):
  """Pallas programs over their temporary-memory bound (`temp_bound`) and
  not listed in `expected`, and listed ones now within it (strict)."""
  problems = []
  for r in records:
    bound = temp_bound(r, records)
    if bound is None:
      continue
    over = r["temp_bytes"] > bound
    if over and r["id"] not in expected:
      problems.append(f"OVER MEMORY BOUND: {r['id']}: {r['temp_bytes']:,}"
                      f" temporary bytes > {bound:,}")
    elif not over and r["id"] in expected:
      problems.append(f"XPASS (strict): {r['id']} is within its memory"
                      f" bound; remove it from"
                      f" {os.path.relpath(XFAIL, _ROOT)}")
  return problems


def over_bound_reason(r: dict) -> str:
  """Why a Pallas program needs more temporaries than its bound, as the
  xfail file records it (the reasons found in the compiled HLO; see
  docs/performance.md)."""
  if r["target"].startswith("tpu"):
    layout = ("XLA:TPU's default layout of x or y at this shape is not"
              " row-major (C or F not a multiple of 128 lanes, or W not of"
              " 8 sublanes): XLA copies them around the Mosaic kernel")
    if r["kind"] == "forward":
      return layout
    return ("the TPU backward kernels' layout pass (padded, phase-split x;"
            " zero-dilated cotangent), and where it applies: " + layout)
  return "GPU form over its bound"


def xfail_message(error: str) -> str:
  """The stable part of a compiler message, to expect in the xfail file:
  without the byte counts that vary with the shape."""
  for key in ("Shared memory size limit exceeded",
              "CompileTimeMosaicUnprovenMemoryAccessAlignment",
              "CompileTimeScopedVmemOom", "Ran out of memory in memory space",
              "RESOURCE_EXHAUSTED"):
    if key in error:
      return key
  return error[:120]


# ------------------------------------------------------------------ table


def _mib(b) -> str:
  return "" if b is None else f"{b / 2**20:,.1f}"


def _ratio(r) -> str:
  if not r["ok"] or not r["argument_bytes"]:
    return ""
  return f"{r['temp_bytes'] / (r['argument_bytes'] + r['output_bytes']):.2f}"


def _spills(r) -> str:
  return ", ".join(f"{k} {v[0]} B" for k, v in sorted(r["spills"].items()))


def _when(meta: dict) -> str:
  first = meta.get("first", meta)
  text = (f"{first['date']}: {first['programs']} programs in"
          f" {first['seconds']:.0f} s with {first['workers']} worker"
          f" processes")
  if "rerun" in meta:
    text += f"; {meta['rerun']}"
  return text


def table(records: list[dict], meta: dict, expected: dict[str, str]) -> str:
  targets = list(dict.fromkeys(r["target"] for r in records))
  impls = list(dict.fromkeys(r["impl"] for r in records))
  lines = [
      "# The compile matrix",
      "",
      "Generated by `scripts/compile_matrix.py` (do not edit by hand):"
      " deviceless compiles on",
      f"{meta['machine']}, jax {meta['jax']}, libtpu {meta['libtpu']},"
      f" jax-cuda12-plugin {meta['cuda_plugin']}, {_when(meta)}.",
      "",
      f"Programs: the forward pass and the training step (y and the VJP"
      f" with respect to x and both kernels) at the canonical shapes,"
      f" batch {BATCH}, 3x3 \"same\", float32 and bfloat16,"
      f" `precision=None`; and for `pallas` the spread beyond them"
      f" (`compile_matrix.SPREAD`, float32). Memory is `compiled.memory_analysis()` per"
      f" device; *temp/io* is the temporary bytes over the program's"
      f" arguments plus outputs. Spills are ptxas's spill stores per"
      f" kernel (NVIDIA). What a compile proves, and what it does not:"
      f" [compile.md](compile.md).",
      "",
      "## Compiled, per target and implementation",
      "",
      "| target | " + " | ".join(impls) + " |",
      "|---|" + "---|" * len(impls),
  ]
  for t in targets:
    cells = []
    for impl in impls:
      rs = [r for r in records if r["target"] == t and r["impl"] == impl]
      ok = sum(r["ok"] for r in rs)
      xf = sum(r["id"] in expected and not r["ok"] for r in rs)
      cell = f"{ok}/{len(rs)}"
      cells.append(cell + (f" ({xf} expected failures)" if xf else ""))
    lines.append(f"| `{t}` | " + " | ".join(cells) + " |")
  failures = [r for r in records if not r["ok"]]
  if failures:
    lines += ["", "## What the compilers reject", "",
              "| program | expected | compiler message |", "|---|---|---|"]
    for r in failures:
      mark = "yes" if r["id"] in expected else "**no**"
      lines.append(f"| `{r['id']}` | {mark} | {r['error']} |")
  bounded = [(r, temp_bound(r, records)) for r in records]
  bounded = [(r, b) for r, b in bounded if b is not None]
  if bounded:
    over = sum(r["temp_bytes"] > b for r, b in bounded)
    lines += [
        "", "## Pallas temporaries against their bounds", "",
        f"The forward pass may need {FORWARD_TEMP_SHARE:.0%} of its"
        f" arguments plus outputs in temporaries; the training step"
        f" `lax`'s temporaries or {TRAIN_TEMP_SHARE:.0%} of its own,"
        f" whichever is larger. {len(bounded) - over} of {len(bounded)}"
        f" programs are within their bound; those over it are listed in"
        f" `scripts/compile_xfail.json` with the reason.", "",
        "| target | within bound (forward) | within bound (train) |"
        " largest temp/io (forward) |", "|---|---|---|---|"]
    for t in targets:
      rows = [(r, b) for r, b in bounded if r["target"] == t]
      cells = []
      for kind in KINDS:
        k = [(r, b) for r, b in rows if r["kind"] == kind]
        cells.append(f"{sum(r['temp_bytes'] <= b for r, b in k)}/{len(k)}")
      worst = max((float(_ratio(r)) for r, _ in rows
                   if r["kind"] == "forward"), default=0.0)
      lines.append(f"| `{t}` | {cells[0]} | {cells[1]} | {worst:.2f} |")
  spilled = [r for r in records if r["spills"]]
  if spilled:
    lines += ["", "## ptxas spills", "", "| program | spill stores |",
              "|---|---|"]
    for r in spilled:
      lines.append(f"| `{r['id']}` | {_spills(r)} |")
  for t in targets:
    lines += ["", f"## `{t}`", "",
              "| impl | pass | shape | dtype | compiled | args MiB |"
              " out MiB | temp MiB | temp/io | compile s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
      if r["target"] != t:
        continue
      status = "yes" if r["ok"] else ("expected failure"
                                      if r["id"] in expected else "**no**")
      lines.append(
          f"| {r['impl']} | {r['kind']} | {r['shape']} | {r['dtype']} |"
          f" {status} | {_mib(r['argument_bytes'])} |"
          f" {_mib(r['output_bytes'])} | {_mib(r['temp_bytes'])} |"
          f" {_ratio(r)} | {r['seconds']:.1f} |")
  return "\n".join(lines) + "\n"


def merged(path: str, records: list[dict], meta: dict):
  """`records` in place of their namesakes among `path`'s, and the meta
  data of both runs."""
  with open(path) as f:
    old = json.load(f)
  for key in ("jax", "libtpu", "cuda_plugin"):
    if old["meta"][key] != meta[key]:
      raise SystemExit(f"--merge: {path} was made with {key}"
                       f" {old['meta'][key]}, this run has {meta[key]}")
  new = {r["id"]: r for r in records}
  ids = [r["id"] for r in old["records"]]
  out = [new.pop(i, r) for i, r in zip(ids, old["records"])]
  out += list(new.values())
  first = old["meta"].get("first", old["meta"])
  meta = dict(meta, programs=len(out), first=first,
              rerun=f"{len(records)} programs rerun on {meta['date']} in"
              f" {meta['seconds']:.0f} s")
  return out, meta


def _machine() -> str:
  model = platform.processor() or platform.machine()
  flags = set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name") and model in ("", "x86_64"):
          model = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
          flags = set(line.split(":", 1)[1].split())
          break
  except OSError:
    pass
  simd = "AVX-512" if "avx512f" in flags else (
      "AVX2" if "avx2" in flags else "")
  return f"a {os.cpu_count()}-core {model}" + (f" ({simd})" if simd else "")


def metadata(count: int, seconds: float, workers: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  return {
      "machine": _machine(), "jax": jax.__version__,
      "libtpu": deviceless._version("libtpu"),
      "cuda_plugin": deviceless._version("jax-cuda12-plugin"),
      "date": datetime.date.today().isoformat(), "programs": count,
      "seconds": seconds, "workers": workers,
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  parser.add_argument("--targets", nargs="+", default=deviceless.TARGETS)
  parser.add_argument("--impls", nargs="+", default=IMPLS, choices=IMPLS)
  parser.add_argument("--kinds", nargs="+", default=KINDS, choices=KINDS)
  parser.add_argument("--dtypes", nargs="+", default=DTYPES, choices=DTYPES)
  parser.add_argument("--shapes", nargs="+", type=int, default=None,
                      metavar="I", help="indices into shapes.CANONICAL")
  parser.add_argument("--precision", default=None,
                      choices=("highest", "high", "default"))
  parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
  parser.add_argument("--no-spread", action="store_true",
                      help="leave out the Pallas spread beyond the"
                      " canonical shapes (`SPREAD`)")
  parser.add_argument("--check", action="store_true",
                      help=f"exit 1 on a failure not in"
                      f" {os.path.relpath(XFAIL, _ROOT)} or an expected"
                      f" failure that compiles")
  parser.add_argument("--install", action="store_true",
                      help="first pip-install libtpu and the CUDA plugin,"
                      " pinned to the installed jax")
  parser.add_argument("--write-xfail", action="store_true",
                      help="record this run's failures as the expected ones")
  parser.add_argument("--merge", action="store_true",
                      help="keep the other programs of --json's last run"
                      " (same jax, libtpu and plugin) and replace those"
                      " this run compiles: rerun one implementation alone")
  parser.add_argument("--retable", action="store_true",
                      help="compile nothing: rewrite the table from --json"
                      " and check it")
  parser.add_argument("--table", default=TABLE)
  parser.add_argument("--json", default=JSON)
  args = parser.parse_args(argv)
  for name in args.targets:
    deviceless.target(name)  # unknown names fail before any work
  with open(XFAIL) as f:
    doc = json.load(f)
  expected, over_bound = doc["expected_failures"], doc["over_memory_bound"]
  if args.retable:
    with open(args.json) as f:
      saved = json.load(f)
    if args.write_xfail:
      over_bound = {r["id"]: over_bound_reason(r) for r in saved["records"]
                    if temp_bound(r, saved["records"]) is not None
                    and r["temp_bytes"] > temp_bound(r, saved["records"])}
      doc["over_memory_bound"] = dict(sorted(over_bound.items()))
      with open(XFAIL, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    with open(args.table, "w") as f:
      f.write(table(saved["records"], saved["meta"], expected))
    problems = (check(saved["records"], expected)
                + memory_problems(saved["records"], over_bound))
    print("\n".join(problems + [f"{len(problems)} problems"]))
    return 1 if args.check and problems else 0
  if args.install:
    command = [sys.executable, "-m", "pip", "install", "-q",
               *deviceless.install_packages()]
    print("+", " ".join(command), flush=True)
    subprocess.check_call(command)
  for p in {deviceless.target(t).platform for t in args.targets}:
    deviceless.check_environment(p)
  shapes = (CANONICAL if args.shapes is None
            else [CANONICAL[i] for i in args.shapes])
  todo = programs(args.targets, args.impls, args.kinds, args.dtypes, shapes,
                  args.precision, () if args.no_spread else SPREAD)
  print(f"compiling {len(todo)} programs for {len(args.targets)} targets"
        f" with {args.workers} workers", flush=True)
  start = time.perf_counter()
  records = run(todo, args.workers)
  seconds = time.perf_counter() - start
  if args.write_xfail:
    ran = {r["id"] for r in records}
    expected = {k: v for k, v in expected.items() if k not in ran}
    expected.update({r["id"]: xfail_message(r["error"])
                     for r in records if not r["ok"]})
    over_bound = {k: v for k, v in over_bound.items() if k not in ran}
    over_bound.update({
        r["id"]: over_bound_reason(r) for r in records
        if temp_bound(r, records) is not None
        and r["temp_bytes"] > temp_bound(r, records)})
    doc["expected_failures"] = dict(sorted(expected.items()))
    doc["over_memory_bound"] = dict(sorted(over_bound.items()))
    with open(XFAIL, "w") as f:
      json.dump(doc, f, indent=1)
      f.write("\n")
  meta = metadata(len(records), seconds, args.workers)
  if args.merge:
    records, meta = merged(args.json, records, meta)
  for path, text in ((args.table, table(records, meta, expected)),
                     (args.json, json.dumps({"meta": meta,
                                             "records": records},
                                            indent=1) + "\n")):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
      f.write(text)
  ok = sum(r["ok"] for r in records)
  print(f"{ok}/{len(records)} compiled in {seconds:.0f} s; wrote"
        f" {args.table} and {args.json}")
  problems = check(records, expected) + memory_problems(records, over_bound)
  for line in problems:
    print(line)
  if args.check:
    xfails = sum(not r["ok"] and r["id"] in expected for r in records)
    print(f"compile matrix: {ok} programs compiled, {xfails} expected"
          f" failures, {len(problems)} problems")
    return 1 if problems else 0
  return 0


if __name__ == "__main__":
  sys.exit(main())
