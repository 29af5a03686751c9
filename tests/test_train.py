"""End-to-end tests of scripts/train.py, each in a fresh subprocess.

JAX fixes its device count when its backend starts, so every test that needs
simulated devices (XLA_FLAGS=--xla_force_host_platform_device_count=N) runs
Python in a subprocess. The runs are short (a few steps). The subprocesses
share a persistent compilation cache, so the reruns of one program on one
device count (the --resume run, the --distributed run) skip compilation.

Four slower tests are in the full profile (SEPCONV_JAX_FULL_TESTS=1): the
full default run (test accuracy >= 0.97 within 60 s, compilation included),
a real two-process run (JAX's multi-controller runtime on CPU, with gloo),
the --distributed path in one process, which must match the
stopped-and-resumed run step for step, and the eight-device step, which
must equal the one-device step, with a bit-exact checkpoint restore.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import time

import pytest

# Found, not imported (the subprocesses import them): collecting this module
# stays cheap on the worker that does not run it.
_EXAMPLES = ("sklearn", "matplotlib", "orbax.checkpoint", "tqdm")
pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in _EXAMPLES),
    reason="train.py needs the `examples` extra")

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN = ROOT / "scripts" / "train.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIMEOUT = 240


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
  return tmp_path_factory.mktemp("jax_compilation_cache")


def _env(compile_cache, devices: int | None = None) -> dict:
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env["JAX_COMPILATION_CACHE_DIR"] = str(compile_cache)
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  if devices is not None:
    flags.append(f"--xla_force_host_platform_device_count={devices}")
  env["XLA_FLAGS"] = " ".join(flags)
  env["PYTHONPATH"] = os.pathsep.join(
      [str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
  return env


def _run(cmd, env, cwd) -> subprocess.CompletedProcess:
  proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True,
                        text=True, timeout=TIMEOUT, check=False)
  if proc.returncode != 0:
    pytest.fail(f"{cmd} exited with {proc.returncode}\n--- stdout\n"
                f"{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}")
  return proc


def _train(args, compile_cache, cwd, devices=None):
  return _run([sys.executable, str(TRAIN), *map(str, args)],
              _env(compile_cache, devices), cwd)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# One short job, run as a time-limited cluster job would be: stopped after 6
# of its 12 steps, then resumed. Shared by the tests below.
STEPS, STOP, BATCH = 12, 6, 32


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, compile_cache):
  tmp = tmp_path_factory.mktemp("train")
  workdir, out = tmp / "run", tmp / "elsewhere" / "metrics.json"
  common = ["--workdir", workdir, "--steps", STEPS, "--batch-size", BATCH,
            "--metrics-out", out]
  first = _train(common + ["--stop-after", STOP], compile_cache, tmp)
  snapshot = {
      "metrics": json.loads(out.read_text()),
      "workdir_metrics": json.loads((workdir / "metrics.json").read_text()),
      "history": json.loads((workdir / "history.json").read_text()),
      "checkpoints": sorted(p.name for p in (workdir / "checkpoints").iterdir()),
      "plots": {n: (workdir / n).read_bytes()[:8]
                for n in ("loss.png", "accuracy.png")},
  }
  second = _train(common + ["--resume"], compile_cache, tmp)
  return {"first": first, "second": second, "snapshot": snapshot,
          "workdir": workdir, "out": out, "tmp": tmp}


def test_short_run_writes_metrics_plots_and_checkpoints(resumed_run):
  snap = resumed_run["snapshot"]
  metrics = snap["metrics"]
  assert metrics == snap["workdir_metrics"]  # --metrics-out and WORKDIR
  assert {"test_accuracy", "train_seconds", "steps", "devices"} <= set(metrics)
  assert 0.0 <= metrics["test_accuracy"] <= 1.0
  assert metrics["train_seconds"] > 0
  assert metrics["steps"] == metrics["steps_this_run"] == STOP
  assert metrics["total_steps"] == STEPS
  assert metrics["devices"] == 1 and metrics["processes"] == 1
  assert metrics["distributed"] is False
  assert metrics["checkpoint_step"] == STOP
  assert str(STOP) in snap["checkpoints"]
  assert snap["plots"] == {"loss.png": PNG_MAGIC, "accuracy.png": PNG_MAGIC}
  assert len(snap["history"]["loss"]) == STOP
  first = resumed_run["first"]
  # The progress bar (stderr) shows the loss and the throughput.
  assert "loss=" in first.stderr and "img_s=" in first.stderr
  assert "stopped at step 6 of 12" in first.stdout


def test_resume_continues_from_the_checkpoint(resumed_run):
  workdir = resumed_run["workdir"]
  assert "resumed from step 6" in resumed_run["second"].stdout
  metrics = json.loads(resumed_run["out"].read_text())
  assert metrics["steps"] == STEPS and metrics["steps_this_run"] == STEPS - STOP
  assert metrics["resumed_from_step"] == STOP
  assert metrics["checkpoint_step"] == STEPS
  history = json.loads((workdir / "history.json").read_text())
  assert len(history["loss"]) == STEPS
  # The restored history, then the new steps.
  assert history["loss"][:STOP] == resumed_run["snapshot"]["history"]["loss"]
  assert [e["step"] for e in history["eval"]] == [STEPS]
  assert str(STEPS) in {p.name for p in (workdir / "checkpoints").iterdir()}
  for name in ("loss.png", "accuracy.png"):
    assert (workdir / name).read_bytes()[:8] == PNG_MAGIC


@pytest.mark.full("a third training run")
def test_distributed_flag_single_process_matches_the_resumed_run(
    resumed_run, compile_cache):
  """--distributed calls jax.distributed.initialize(), then feeds batches
  made from the process-local slice. On one process its uninterrupted run
  equals the stopped-and-resumed run above, step for step."""
  tmp = resumed_run["tmp"]
  workdir = tmp / "dist"
  _train(["--distributed", "--coordinator-address",
          f"127.0.0.1:{_free_port()}", "--num-processes", 1,
          "--process-id", 0, "--steps", STEPS, "--batch-size", BATCH,
          "--workdir", workdir, "--no-plots", "--no-progress"],
         compile_cache, tmp)
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["distributed"] is True
  assert metrics["processes"] == 1 and metrics["devices"] == 1
  assert metrics["steps"] == STEPS and metrics["checkpoint_step"] == STEPS
  assert metrics["plots"] == []
  resumed = json.loads(resumed_run["out"].read_text())
  assert metrics["test_accuracy"] == resumed["test_accuracy"]
  uninterrupted = json.loads((workdir / "history.json").read_text())["loss"]
  stopped_and_resumed = json.loads(
      (resumed_run["workdir"] / "history.json").read_text())["loss"]
  assert len(uninterrupted) == STEPS
  assert max(abs(a - b) for a, b in zip(uninterrupted,
                                        stopped_and_resumed)) <= 1e-6


_EIGHT_DEVICES = textwrap.dedent("""
    import importlib.util, json, sys
    import jax, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    path, ckpt_dir, steps, batch = sys.argv[1], sys.argv[2], *map(
        int, sys.argv[3:5])
    spec = importlib.util.spec_from_file_location("train", path)
    T = sys.modules["train"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(T)
    out = {"devices": jax.device_count()}

    # The script's model, optimizer and step, as `train.py --steps STEPS
    # --batch-size BATCH` builds them (so their compilations are cached).
    x_train, y_train, _, _ = T.load_data()
    model = T.DigitNet()
    tx = T.make_optimizer(3e-3, steps)
    mesh8, mesh1 = T.make_mesh(), T.make_mesh(jax.devices()[:1])
    start = T.init_state(model, tx, 0, mesh1)
    init = jax.device_get(start)
    get = lambda t: jax.tree.leaves(jax.device_get(t))
    states = {"1": start,
              "8": jax.device_put(start, NamedSharding(mesh8, P()))}
    steps_fn = {n: T.make_train_step(model, tx, m)
                for n, m in (("1", mesh1), ("8", mesh8))}
    out["step_diff"], out["metrics_diff"], out["grad_rel_diff"] = [], [], []
    for step in range(2):  # Step 0 has learning rate 0 (warm-up); step 1 not.
      idx = T.batch_indices(step, len(x_train), batch, 0)
      metrics = {}
      for name, mesh in (("8", mesh8), ("1", mesh1)):
        images, labels = T.to_global(mesh, x_train[idx], y_train[idx])
        out[f"batch_shards_{name}"] = sorted(
            s.data.shape[0] for s in images.addressable_shards)
        states[name], metrics[name] = steps_fn[name](
            states[name], images, labels)
        out[f"state_replicated_{name}"] = all(
            a.sharding.is_fully_replicated and
            len(a.sharding.device_set) == mesh.size
            for a in jax.tree.leaves(states[name]))
      out["step_diff"].append(max(
          float(np.max(np.abs(a - b)))
          for a, b in zip(get(states["8"]), get(states["1"]))))
      out["metrics_diff"].append(max(
          float(np.max(np.abs(a - b)))
          for a, b in zip(get(metrics["8"]), get(metrics["1"]))))
      # Adam's first moment holds the gradients: compare them relatively.
      mu8, mu1 = (get(states[n]["opt_state"][0].mu) for n in ("8", "1"))
      out["grad_rel_diff"].append(max(
          float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
          for a, b in zip(mu8, mu1)))
    out["step_size"] = max(float(np.max(np.abs(a - b))) for a, b in zip(
        get(states["8"]["params"]), jax.tree.leaves(init["params"])))

    # Orbax round trip of the sharded state: bit-identical, same sharding.
    state8 = states["8"]
    manager = T.checkpoint_manager(ckpt_dir)
    history = {"loss": [0.5, 0.25], "eval": []}
    T.save_checkpoint(manager, state8, history)
    manager.wait_until_finished()
    restored, restored_history = T.restore_checkpoint(manager, state8)
    same = lambda a, b: all(
        x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)
        for x, y in zip(get(a), get(b)))
    out["restore_identical"] = same(restored, state8)
    out["restore_same_structure"] = (
        jax.tree.structure(restored) == jax.tree.structure(state8))
    out["restore_same_sharding"] = all(
        a.sharding == b.sharding
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state8)))
    out["history_restored"] = restored_history == history
    # ... and into the single-device layout, still bit for bit.
    restored1, _ = T.restore_checkpoint(manager, states["1"])
    out["restore_identical_1"] = same(restored1, state8)
    out["restore_devices_1"] = sorted(
        {len(a.sharding.device_set) for a in jax.tree.leaves(restored1)})
    manager.close()
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.full("a second training program, on eight devices")
def test_sharded_step_equals_single_device_and_restore_is_exact(
    tmp_path, compile_cache):
  """On 8 simulated CPU devices: the train step with the batch sharded 8
  ways equals the single-device step within 1e-5, and an orbax checkpoint
  of the sharded state restores bit for bit."""
  proc = _run([sys.executable, "-c", _EIGHT_DEVICES, str(TRAIN),
               str(tmp_path / "ckpt"), str(STEPS), str(BATCH)],
              _env(compile_cache, devices=8), tmp_path)
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
  out = json.loads(line[len("RESULT "):])
  assert out["devices"] == 8
  assert out["batch_shards_8"] == [BATCH // 8] * 8
  assert out["batch_shards_1"] == [BATCH]
  assert out["state_replicated_8"] and out["state_replicated_1"]
  assert out["step_size"] > 1e-3  # the steps really moved the params
  assert max(out["step_diff"]) <= 1e-5, out
  assert max(out["metrics_diff"]) <= 1e-5, out
  assert max(out["grad_rel_diff"]) <= 1e-5, out
  assert out["restore_identical"] and out["restore_same_structure"]
  assert out["restore_same_sharding"] and out["history_restored"]
  assert out["restore_identical_1"] and out["restore_devices_1"] == [1]


slow = pytest.mark.full("a full training run")


@slow
def test_default_run_reaches_097_within_60_s(tmp_path):
  """The README's command, with no flags (and no compilation cache)."""
  env = _env(tmp_path / "unused_cache")
  del env["JAX_COMPILATION_CACHE_DIR"]
  start = time.perf_counter()
  _run([sys.executable, str(TRAIN), "--no-progress"], env, tmp_path)
  seconds = time.perf_counter() - start  # the whole process
  metrics = json.loads(
      (tmp_path / "runs" / "digits" / "metrics.json").read_text())
  assert metrics["test_accuracy"] >= 0.97, metrics
  assert seconds < 60, (seconds, metrics)
  assert metrics["steps"] == 330 and metrics["devices"] == 1


@slow
def test_two_processes_match_one(tmp_path, compile_cache):
  """Two JAX processes (one CPU device each, gloo collectives) train the
  same model as one process with the same global batch."""
  port = _free_port()
  common = ["--steps", 8, "--batch-size", 32, "--no-plots", "--no-progress"]
  env = _env(compile_cache, devices=1)
  procs = [subprocess.Popen(
      [sys.executable, str(TRAIN), *map(str, common), "--workdir",
       tmp_path / "two", "--distributed", "--coordinator-address",
       f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
      env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  for p in procs:
    stdout, stderr = p.communicate(timeout=TIMEOUT)
    assert p.returncode == 0, stdout[-3000:] + stderr[-3000:]
  _train(common + ["--workdir", tmp_path / "one"], compile_cache, tmp_path,
         devices=2)
  two = json.loads((tmp_path / "two" / "metrics.json").read_text())
  assert two["processes"] == 2 and two["devices"] == 2
  a = json.loads((tmp_path / "two" / "history.json").read_text())["loss"]
  b = json.loads((tmp_path / "one" / "history.json").read_text())["loss"]
  assert len(a) == len(b) == 8
  assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4
