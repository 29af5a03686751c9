"""`scripts/benchmark.py --quick` runs end to end and writes sound results."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

import sepconv_jax

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SCRIPT = os.path.join(_ROOT, "scripts", "benchmark.py")


def test_quick_benchmark_writes_results(tmp_path):
  env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, _SCRIPT, "--quick", "--malloc", "tuned", "--peers",
       "flax", "torch", "tf", "--out", str(tmp_path)],
      cwd=_ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

  with open(tmp_path / "results.json") as f:
    report = json.load(f)
  # Pallas runs in its interpreter on a CPU: not a speed, left out here.
  impls = [i for i in sepconv_jax.IMPLEMENTATIONS
           if i not in ("auto", "pallas")]
  assert report["mode"] == "cpu"
  assert report["quick"] is True
  assert report["implementations"] == impls
  assert report["summary"]["auto"] in impls
  assert report["versions"]["jax"]
  assert report["device"]
  assert "load_before" in report and "load_after" in report
  if platform.libc_ver()[0] == "glibc":
    assert report["malloc"].startswith("tuned"), report["malloc"]
  else:  # the run says it could not tune, and goes on
    assert report["malloc"].startswith("default (tuning"), report["malloc"]
  # Every peer asked for was either timed or reported as skipped, with a
  # reason. (Keras's case is built as Flax's is; the full run has both.)
  assert set(report["peers"]) | set(report["skipped"]) == {
      "flax", "torch", "tf"}
  assert not set(report["peers"]) & set(report["skipped"])
  for peer, why in report["skipped"].items():
    assert "not installed" in why
    assert "skipping" in proc.stdout
  assert len(report["shapes"]) >= 1
  for shape in report["shapes"]:
    results = report["results"][shape]
    assert set(results) == set(impls) | set(report["peers"])
    for name, r in results.items():
      assert r["forward_ms"] > 0 and r["train_ms"] > 0, (shape, name)
      assert r["forward_samples"] >= 3
    for impl in impls:
      assert results[impl]["forward_temp_bytes"] >= 0
      assert results[impl]["train_temp_bytes"] >= 0
  assert len(report["summary"]["per_shape"]) == len(report["shapes"])
  roof = report["roofline"]
  assert roof["matmul_gflops"] > 0 and roof["stream_gbps"] > 0
  assert ("torch_matmul_gflops" in roof) == ("torch" in report["peers"])
  assert roof["peak_gflops"] == max(roof["matmul_gflops"],
                                    roof.get("torch_matmul_gflops", 0.0))

  md = (tmp_path / "results.md").read_text()
  assert "| shape" in md and "Training step" in md
  assert f"- allocator: {report['malloc']}" in md
  # The chart exists, or the run said why not.
  assert (tmp_path / "speedup.png").exists() or (
      "matplotlib is not installed" in proc.stdout
      or "no peer was timed" in proc.stdout)


@pytest.mark.cpu_only("glibc's allocator and page faults of XLA:CPU buffers")
@pytest.mark.full("a measurement script's own test, in a process of its own")
def test_page_faults_script_reports_one_line():
  proc = subprocess.run(
      [sys.executable, os.path.join(os.path.dirname(_SCRIPT), "page_faults.py"),
       "--shape", "1,6,5,2,3", "--calls", "3"],
      capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr
  line = proc.stdout.strip()
  assert line.startswith("1,6,5,2,3: "), line
  ms = float(line.split(": ")[1].split(" ms/call")[0])
  assert ms > 0 and "minor faults/call" in line, line


def test_quick_device_mode_runs_on_cpu(tmp_path):
  """The GPU/TPU mode's code (scan timing, dtypes, batches, roofline from
  measured copy and matmul peaks, the cross-check) on tiny CPU shapes."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, _SCRIPT, "--quick", "--mode", "device",
       "--implementations", "lax", "--dtypes", "bfloat16",
       "--out", str(tmp_path)],
      cwd=_ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  with open(tmp_path / "results.json") as f:
    report = json.load(f)
  assert report["mode"] == "device" and report["quick"] is True
  assert report["implementations"] == ["lax"]
  assert report["dtypes"] == ["bfloat16"]
  assert report["scan_steps"] >= 2
  roof = report["roofline"]
  assert roof["copy_gbps"] > 0
  assert set(roof["matmul_gflops"]) == {"float32_default", "float32_highest",
                                        "bfloat16"}
  keys = list(report["results"])
  assert len(keys) == len(report["batches"])  # one quick shape
  for key, r in report["results"].items():
    assert r["dtype"] in key and r["flops"] > 0 and r["min_bytes"] > 0
    assert r["lax"]["forward_us"] > 0 and r["lax"]["train_us"] > 0, key
    assert r["lax"]["per_call"] == report["scan_steps"]
  # The cross-check times single calls at the largest batch.
  assert report["cross_check"]
  for key, calls in report["cross_check"].items():
    assert f"b{max(report['batches'])} " in key
    assert calls["lax"]["per_call"] == 1
  md = (tmp_path / "results.md").read_text()
  assert "Cross-check of the method" in md
  assert set(report["peers"]) | set(report["skipped"]) == {"torch"}


def test_device_report_tables():
  """The device mode's tables, on a report with every column: pallas and
  PyTorch (which a CPU run without torch cannot have)."""
  sys.path.insert(0, os.path.dirname(_SCRIPT))
  try:
    import benchmark  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  times = lambda f, t: {"forward_us": f, "train_us": t, "per_call": 8}
  result = {"dtype": "float32", "batch": 64, "shape": "56x56x128->128",
            "flops": 2e9, "min_bytes": 2e8, "lax": times(140.0, 410.0),
            "pallas": times(70.0, 205.0), "torch": times(130.0, 440.0)}
  key = "float32 b64 56x56x128->128"
  report = {
      "date": "today", "device": "NVIDIA H200", "backend": "gpu",
      "cpu": "host", "versions": {"jax": "x"}, "load_before": [0.0],
      "load_after": [0.0], "implementations": ["lax", "pallas"],
      "peers": ["torch"], "skipped": {}, "scan_steps": 8, "repeats": 9,
      "auto": "lax", "results": {key: result},
      "cross_check": {key: {"lax": times(150.0, 420.0),
                            "pallas": times(75.0, 210.0),
                            "torch": times(131.0, 441.0)}},
      "roofline": {"copy_gbps": 4000.0, "copy_bytes": 1 << 30,
                   "matmul_n": 8192,
                   "matmul_gflops": {"float32_default": 395e3,
                                     "float32_highest": 50e3,
                                     "bfloat16": 739e3}}}
  md = benchmark.markdown_device(report)
  # pallas against the faster of lax (140 us) and PyTorch (130 us): 130/70.
  assert f"| {key} | 1.86x | 2.00x | 71% |" in md
  # The roofline: 2e8 bytes at 4 TB/s is 50 us, over the FLOPs' 5 us.
  assert f"| {key} | 140 | 70 | 130 | 50 | 71% |" in md
  assert "| 140 / 410 | 150 / 420 | 70 / 205 | 75 / 210 |" in md
