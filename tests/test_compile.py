"""The deviceless compile harness (scripts/deviceless.py) and
``scripts/train.py --compile-only``.

In the default suite, whose environment has no libtpu and no CUDA plugin,
these tests check the target table against the vendors' figures, the
parsing of target names and ptxas's spill lines, and the errors a user
meets (an unknown target, a missing or mismatched compiler package).
Where the compilers are installed (CI's compile step,
``scripts/compile_matrix.py --install``), the same tests compile for real:
a Pallas kernel and the training step, for a TPU and an NVIDIA GPU.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import deviceless  # noqa: E402  pylint: disable=g-import-not-at-top

import sepconv_jax  # noqa: E402

HAVE = {"tpu": importlib.util.find_spec("libtpu") is not None,
        "cuda": importlib.util.find_spec("jax_plugins") is not None
                and deviceless._version("jax-cuda12-plugin") is not None}


# --------------------------------------------------------------- targets


def test_every_target_of_the_issue_is_known():
  assert deviceless.TARGETS == ("tpu:v4", "tpu:v5e", "tpu:v5p", "tpu:v6e",
                                "cuda:a100", "cuda:l4", "cuda:h100",
                                "cuda:b200")


@pytest.mark.parametrize("name, arch, optin_kib", [
    ("cuda:a100", (8, 0), 163), ("cuda:l4", (8, 9), 99),
    ("cuda:h100", (9, 0), 227), ("cuda:b200", (10, 0), 227)])
def test_gpu_target_configs_carry_the_data_sheet_limits(name, arch, optin_kib):
  text = deviceless.target(name).gpu.target_config()
  assert f"shared_memory_per_block_optin: {optin_kib * 1024}" in text
  assert (f"cuda_compute_capability {{ major: {arch[0]} minor: {arch[1]} }}"
          in text)
  assert 'platform_name: "CUDA"' in text and "runtime_version" in text


@pytest.mark.parametrize("name, topology, hbm_gib", [
    ("tpu:v4", "v4:2x2x1", 32), ("tpu:v5e", "v5e:2x2", 16),
    ("tpu:v5p", "v5p:2x2x1", 95), ("tpu:v6e", "v6e:2x2", 32),
    ("tpu:v5e:4x4", "v5e:4x4", 16), ("TPU:V6E:8x8", "v6e:8x8", 32)])
def test_tpu_targets_name_libtpu_topologies(name, topology, hbm_gib):
  t = deviceless.target(name)
  assert (t.platform, t.topology, t.memory_bytes) == (
      "tpu", topology, hbm_gib << 30)


@pytest.mark.parametrize("name", ["tpu:v9", "cuda:v100", "h100", "gpu:h100",
                                  "cuda:h100:2x2"])
def test_an_unknown_target_lists_the_known_ones(name):
  with pytest.raises(ValueError) as info:
    deviceless.target(name)
  message = str(info.value)
  assert f"`target` (={name!r})" in message
  assert all(t in message for t in deviceless.TARGETS), message


def test_a_malformed_topology_is_refused():
  with pytest.raises(ValueError, match=r"topology '4by4' must look like"):
    deviceless.target("tpu:v5e:4by4")


def test_spill_lines_are_read_per_kernel():
  log = ("I1203 17:12:00.637762 2989 subprocess_compilation.cc:349] ptxas"
         " warning : Registers are spilled to local memory in function"
         " 'sepconv_forward', 52 bytes spill stores, 48 bytes spill loads\n"
         "junk\n... in function 'sepconv_param_grads', 548 bytes spill"
         " stores, 404 bytes spill loads\n")
  log = log.replace("... in", "Registers are spilled to local memory in")
  assert deviceless._SPILL.findall(log) == [
      ("sepconv_forward", "52", "48"), ("sepconv_param_grads", "548", "404")]


# ----------------------------------------------------------- environment


@pytest.mark.parametrize("platform, installed, expected", [
    ("tpu", {}, 'needs libtpu, which is not installed; run pip install'
                ' "jax[tpu]=={jax}"'),
    ("tpu", {"libtpu": "0.0.1"}, "libtpu 0.0.1 does not match jax {jax}"),
    ("cuda", {}, "needs jax-cuda12-plugin, which is not installed; run pip"
                 ' install "jax-cuda12-plugin=={jax}" "nvidia-cuda-nvcc-cu12"'),
    ("cuda", {"jax-cuda12-plugin": "0.0.1", "jax-cuda12-pjrt": "0.0.1"},
     "jax-cuda12-plugin 0.0.1 does not match jaxlib"),
    ("cuda", {"jax-cuda12-plugin": "=", "jax-cuda12-pjrt": "="},
     "needs ptxas, from nvidia-cuda-nvcc-cu12, which is not installed"),
])
def test_missing_or_mismatched_compilers_name_the_pip_command(
    monkeypatch, platform, installed, expected):
  jaxlib = deviceless._version("jaxlib")
  installed = {"jaxlib": jaxlib,
               **{k: (jaxlib if v == "=" else v) for k, v in installed.items()}}
  monkeypatch.setattr(deviceless, "_version",
                      lambda dist: installed.get(dist))
  with pytest.raises(deviceless.CompileEnvironmentError) as info:
    deviceless.check_environment(platform)
  assert expected.format(jax=jax.__version__) in str(info.value)


def test_a_missing_compiler_leaves_the_environment_alone(monkeypatch):
  """In a process that imported JAX first (this one), the harness sets
  JAX_PLATFORMS, CUDA_VISIBLE_DEVICES, ... only once the compilers are
  found: a suite on a GPU keeps its GPU for later tests."""
  for name in deviceless._ENVIRONMENT:
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(deviceless, "_version", lambda dist: None)
  monkeypatch.setattr(deviceless, "_TOPOLOGIES", {})
  with pytest.raises(deviceless.CompileEnvironmentError):
    deviceless.compile_program("cuda:h100", _pallas_forward,
                               *_specs(2, 8, 8, 8, 16))
  assert not set(deviceless._ENVIRONMENT) & set(os.environ)


def test_install_command_pins_the_installed_jax():
  v = jax.__version__
  # What --install hands to pip: plain requirements, no shell quoting.
  assert deviceless.install_packages() == [
      f"jax[tpu]=={v}", f"jax-cuda12-plugin=={v}", "nvidia-cuda-nvcc-cu12"]
  assert deviceless.install_command() == (
      f'pip install "jax[tpu]=={v}" "jax-cuda12-plugin=={v}"'
      f' "nvidia-cuda-nvcc-cu12"')


# --------------------------------------------------------------- compiles


def _pallas_forward(x, dk, pk, b):
  return sepconv_jax.separable_conv2d(x, dk, pk, b, padding="same",
                                      implementation="pallas")


def _specs(n, h, w, c, f):
  s = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  return s(n, h, w, c), s(3, 3, c, 1), s(1, 1, c, f), s(f)


@pytest.mark.parametrize("name", ["tpu:v5e", "cuda:h100"])
def test_a_pallas_kernel_compiles_with_its_memory(name):
  t = deviceless.target(name)
  if not HAVE[t.platform]:
    with pytest.raises(deviceless.CompileEnvironmentError,
                       match=r"run pip install"):
      deviceless.compile_program(name, _pallas_forward, *_specs(2, 8, 8, 8,
                                                                16))
    return
  r = deviceless.compile_program(name, _pallas_forward,
                                 *_specs(2, 8, 8, 8, 16), keep=True)
  assert r.ok, r.error
  # Inputs and output, per device: float32 arrays (exactly on a GPU; a
  # TPU pads arrays to its (8, 128) tiles).
  exact = (4 * (2 * 8 * 8 * 8 + 9 * 8 + 8 * 16 + 16), 4 * 2 * 8 * 8 * 16)
  if t.platform == "cuda":
    assert (r.argument_bytes, r.output_bytes) == exact
  else:
    assert r.argument_bytes >= exact[0] and r.output_bytes >= exact[1]
  assert r.temp_bytes >= 0
  # The compiled program calls the kernel: Mosaic's or Triton's.
  text = r.compiled.as_text()
  assert ("tpu_custom_call" in text if t.platform == "tpu"
          else "__gpu$xla.gpu.triton" in text), text[:3000]


def test_the_compilers_own_error_comes_back():
  """A Triton dot whose bf16 operands need 128 KiB of shared memory: more
  than the L4's 99 KiB per block, less than the A100's 163 KiB."""
  from jax.experimental import pallas as pl  # pylint: disable=g-import-not-at-top
  from jax.experimental.pallas import triton as plgpu  # pylint: disable=g-import-not-at-top

  def kernel(a_ref, b_ref, o_ref):
    o_ref[...] = jnp.dot(a_ref[...], b_ref[...])

  def dot(a, b):
    return pl.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((64, 64), a.dtype),
        compiler_params=plgpu.CompilerParams(num_warps=4))(a, b)

  specs = (jax.ShapeDtypeStruct((64, 512), jnp.bfloat16),
           jax.ShapeDtypeStruct((512, 64), jnp.bfloat16))
  if not HAVE["cuda"]:
    with pytest.raises(deviceless.CompileEnvironmentError):
      deviceless.compile_program("cuda:l4", dot, *specs)
    return
  r = deviceless.compile_program("cuda:l4", dot, *specs)
  assert not r.ok
  assert ("Shared memory size limit exceeded: requested 131072, available:"
          " 101376") in r.error, r.error
  assert deviceless.compile_program("cuda:a100", dot, *specs).ok


# --------------------------------------------------- train.py --compile-only


def _train(*args) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  return subprocess.run(
      [sys.executable, str(ROOT / "scripts" / "train.py"), *args],
      capture_output=True, text=True, timeout=300, env=env, check=False)


def test_compile_only_refuses_an_unknown_target():
  proc = _train("--compile-only", "tpu:v7x")
  assert proc.returncode != 0
  assert "`target` (='tpu:v7x') is not a known compile target" in proc.stderr
  assert "tpu:v5e, tpu:v5p, tpu:v6e, cuda:a100" in proc.stderr


@pytest.mark.parametrize("name, devices", [("tpu:v5e", 4),
                                           ("cuda:h100", 1)])
def test_compile_only_compiles_the_training_step(tmp_path, name, devices):
  out = tmp_path / "report.json"
  proc = _train("--compile-only", name, "--metrics-out", str(out))
  platform = deviceless.target(name).platform
  if not HAVE[platform]:
    assert proc.returncode != 0
    assert deviceless.install_command((platform,)) in proc.stderr, (
        proc.stderr[-3000:])
    return
  assert proc.returncode == 0, proc.stderr[-6000:]
  report = json.loads(out.read_text())
  assert report["devices"] == devices
  assert report["global_batch_size"] == 64
  assert 0 < report["total_bytes"] < report["memory_bytes"]
  assert report["argument_bytes"] > 0 and report["temp_bytes"] > 0
  for word in ("per device: arguments", "temporaries", "of HBM",
               "compiled in", "no training"):
    assert word in proc.stdout, proc.stdout
  assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------- the matrix


import compile_matrix  # noqa: E402  pylint: disable=g-import-not-at-top


def _record(pid, ok, error=None):
  return {"id": pid, "ok": ok, "error": error}


def test_the_check_is_strict_about_expected_failures():
  expected = {"a": "Shared memory size limit exceeded", "b": "E2003"}
  records = [
      _record("a", True),                                    # XPASS
      _record("b", False, "E1001 CompileTimeScopedVmemOom"),  # another error
      _record("c", False, "RESOURCE_EXHAUSTED"),              # unexpected
      _record("d", True),                                    # fine
  ]
  problems = compile_matrix.check(records, expected)
  assert [p.split(":")[0] for p in problems] == [
      "XPASS (strict)", "FAILED differently", "FAILED"]
  assert all(f" {k}" in p for k, p in zip("abc", problems))
  assert compile_matrix.check(
      [_record("a", False, "RESOURCE_EXHAUSTED: Shared memory size limit"
                           " exceeded: requested 442368"), _record("d", True)],
      expected) == []


def _mem(pid, temp, args=1000, out=1000, ok=True):
  target, impl, kind = pid.split("/")[:3]
  return {"id": pid, "ok": ok, "target": target, "impl": impl, "kind": kind,
          "temp_bytes": temp, "argument_bytes": args, "output_bytes": out}


def test_the_memory_bounds_follow_the_issue():
  """Forward: 25% of arguments plus outputs. Training step: "lax"'s
  temporaries on that target, or 35% of its own I/O, whichever is larger;
  other implementations and failed compiles have no bound."""
  lax_train = _mem("cuda:h100/lax/train/s/float32", 900)
  records = [_mem("cuda:h100/pallas/forward/s/float32", 500),
             _mem("cuda:h100/pallas/train/s/float32", 800), lax_train,
             _mem("tpu:v4/pallas/train/s/float32", 800)]
  bounds = [compile_matrix.temp_bound(r, records) for r in records]
  assert bounds == [500, 900, None, 700]
  assert compile_matrix.temp_bound(
      _mem("cuda:h100/pallas/forward/s/float32", 0, ok=False), records) is None


def test_the_memory_check_is_strict():
  records = [_mem("cuda:l4/pallas/forward/s/float32", 501),   # over
             _mem("tpu:v5e/pallas/forward/s/float32", 900),   # listed, over
             _mem("tpu:v6e/pallas/forward/s/float32", 100)]   # listed, within
  expected = {"tpu:v5e/pallas/forward/s/float32": "layout pass",
              "tpu:v6e/pallas/forward/s/float32": "layout pass"}
  problems = compile_matrix.memory_problems(records, expected)
  assert [p.split(":")[0] for p in problems] == ["OVER MEMORY BOUND",
                                                  "XPASS (strict)"]
  assert "cuda:l4" in problems[0] and "tpu:v6e" in problems[1]


def test_xfail_messages_drop_the_sizes():
  assert compile_matrix.xfail_message(
      "JaxRuntimeError: RESOURCE_EXHAUSTED: Shared memory size limit"
      " exceeded: requested 442368, available: 232448") == (
          "Shared memory size limit exceeded")


def test_the_committed_table_agrees_with_the_expected_failures():
  """docs/compile_matrix.md's run failed exactly where the xfail file says,
  with those messages: the committed table is not stale."""
  with open(compile_matrix.JSON) as f:
    records = json.load(f)["records"]
  with open(compile_matrix.XFAIL) as f:
    doc = json.load(f)
  expected = doc["expected_failures"]
  assert len(records) == len(deviceless.TARGETS) * (
      4 * 7 * 2 * 2 + len(compile_matrix.SPREAD) * 2)
  assert compile_matrix.check(records, expected) == []
  # The Pallas programs over their temporary-memory bound are exactly the
  # listed ones, and no GPU program is among them.
  assert compile_matrix.memory_problems(
      records, doc["over_memory_bound"]) == []
  assert not [k for k in doc["over_memory_bound"] if k.startswith("cuda")]
  assert set(expected) <= {r["id"] for r in records}
  with open(compile_matrix.TABLE) as f:
    table = f.read()
  for t in deviceless.TARGETS:
    assert f"| `{t}` |" in table


# --------------------------------------------------------- traffic model


def test_the_traffic_model_footprint_has_a_closed_form():
  """With tiles of exactly one output row (3x3 "same", stride 1) each
  tile's taps read its own row and the rows above and below: 3 rows of W,
  but 2 at the top and bottom of each image."""
  import traffic  # pylint: disable=g-import-not-at-top
  from shapes import Shape  # pylint: disable=g-import-not-at-top
  n, h, w = 3, 7, 16
  shape = Shape(height=h, width=w, channels=4, filters=8, stride=1, batch=n)
  assert traffic.footprint(shape, w) == n * w * (3 * h - 2)
  # One tile per image: every input position once.
  assert traffic.footprint(shape, h * w) == n * h * w


def test_the_traffic_model_agrees_with_the_compiler():
  """The model's minimum arrays are exactly the H100 training step's
  arguments and outputs (`memory_analysis()`), and the compiler allocates
  no more temporaries than the model's `g` and partial sums."""
  import compile_matrix  # pylint: disable=g-import-not-at-top
  import traffic  # pylint: disable=g-import-not-at-top
  from shapes import CANONICAL  # pylint: disable=g-import-not-at-top
  shape = CANONICAL[2]._replace(batch=64)          # 28x28x256 -> 256
  program = compile_matrix.Program("cuda:h100", "pallas", "train", shape,
                                   "float32")
  fn, args = compile_matrix.build(program)
  if not HAVE["cuda"]:
    with pytest.raises(deviceless.CompileEnvironmentError,
                       match=r"run pip install"):
      deviceless.compile_program("cuda:h100", fn, *args)
    return
  r = deviceless.compile_program("cuda:h100", fn, *args)
  assert r.ok, r.error
  n, c, f = 64, shape.channels, shape.filters
  x = n * 28 * 28 * c * 4
  y = n * 28 * 28 * f * 4
  dk, pk, b = 9 * c * 4, c * f * 4, f * 4
  assert r.argument_bytes == x + dk + pk + b + y    # x, kernels, bias, ct
  # y, dx, ddk, dpk, and XLA:GPU's table of the result tuple's 4 pointers.
  assert r.output_bytes == y + x + dk + pk + 4 * 8
  assert 0 < r.temp_bytes <= traffic.temporaries(shape, 4)
  forward = {k.name: k for k in traffic.kernels(shape, 4)}["forward"]
  assert forward.minimum == x + dk + pk + y
