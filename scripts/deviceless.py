"""Compile for a TPU or an NVIDIA GPU you don't have, on a CPU machine.

The compilers that decide whether a program runs on an accelerator (XLA:TPU
and Mosaic in libtpu; XLA:GPU, Triton and ptxas in JAX's CUDA plugin) run
without the device: JAX builds a *topology* of the target's devices, and
``jax.jit(f).lower(...).compile()`` on arrays sharded over that topology
runs the real compilers. This module is the project's harness for it:

* `target` parses a target name (``tpu:v5e``, ``tpu:v5e:4x4``,
  ``cuda:h100``; `TARGETS` lists them) into a `Target`;
* `mesh` makes a `jax.sharding.Mesh` of the target's devices;
* `compile_program` compiles a function for a target and returns a
  `Result`: the compiled program or the compiler's own error, its
  ``memory_analysis()`` (argument, output and temporary bytes per device)
  and, for NVIDIA, ptxas's spill report per kernel;
* `install_command` and `check_environment`: the pip command that brings
  the compilers, pinned to the installed jax, and a clear error where they
  are missing or do not match it.

The GPU targets are written from the vendors' data sheets (see
`GpuSpec`); the TPU targets are libtpu's own topologies. What a compile
proves: the compiler accepts the program and needs this much memory. What
it does not: speed (deviceless XLA:GPU also compiles without its
autotuner, so ``"lax"`` gets XLA's heuristic choices; Pallas kernels
compile exactly as they would on the device). See ``docs/compile.md``.

The environment must be set before JAX starts a backend: importing this
module first (before ``jax``) sets it; in a process that imported JAX
first (a test, `scripts/train.py`), `devices` sets it when the target's
compilers are found, before libtpu or the CUDA plugin loads, and leaves
the environment alone where they are missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import os
import re
import sys
import tempfile
import time
from typing import Any, Callable, Optional, Sequence

_ENVIRONMENT = {
    # Only the CPU backend starts; the accelerators are topologies.
    "JAX_PLATFORMS": "cpu",
    # libtpu looks for a TPU VM's metadata server unless told not to.
    "TPU_SKIP_MDS_QUERY": "1",
    # Several processes (pytest-xdist, the matrix's workers) may load libtpu.
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
    "CUDA_VISIBLE_DEVICES": "-1",
}
# ptxas's spill warnings are INFO-level logs: read when jaxlib loads.
_LOG_LEVEL = ("TF_CPP_MIN_LOG_LEVEL", "0")


def prepare_environment() -> None:
  """Sets the variables deviceless compilation needs (see `_ENVIRONMENT`).

  Call it before JAX starts a backend; `JAX_PLATFORMS` is also set through
  ``jax.config`` in case JAX is already imported. ptxas's spill report
  needs ``TF_CPP_MIN_LOG_LEVEL=0`` before jaxlib loads: only when this
  module is imported first.
  """
  os.environ.update(_ENVIRONMENT)
  if "jax" not in sys.modules:
    os.environ[_LOG_LEVEL[0]] = _LOG_LEVEL[1]
  else:
    sys.modules["jax"].config.update("jax_platforms", "cpu")


if "jax" not in sys.modules:  # this module owns the process: set it all
  prepare_environment()


@contextlib.contextmanager
def _captured_stderr():
  """Collects what the process writes to file descriptor 2 (C++ logs,
  ptxas's warnings) into the yielded list, as one string."""
  sys.stderr.flush()
  saved = os.dup(2)
  out: list[str] = []
  with tempfile.TemporaryFile(mode="w+b") as tmp:
    os.dup2(tmp.fileno(), 2)
    try:
      yield out
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      tmp.seek(0)
      out.append(tmp.read().decode("utf-8", "replace"))


with _captured_stderr():  # jaxlib's INFO lines on the absent CUDA driver
  import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402


# ---------------------------------------------------------------- targets


@dataclasses.dataclass(frozen=True)
class GpuSpec:
  """An NVIDIA GPU as XLA's `GpuTargetConfigProto` describes it.

  The figures are the vendor's data-sheet values for the named part.
  `smem_optin` is the shared memory one block may opt into: the limit
  Triton's kernels are checked against.
  """

  description: str
  major: int
  minor: int
  sms: int
  smem_per_sm: int
  smem_optin: int
  threads_per_sm: int
  fp32_per_sm: int
  clock_ghz: float
  bandwidth: int           # bytes/s
  l2_bytes: int
  memory_bytes: int

  def target_config(self) -> str:
    """The `GpuTargetConfigProto` text that `get_topology_desc` takes."""
    return f"""
gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {self.smem_per_sm}
  shared_memory_per_block_optin: {self.smem_optin}
  threads_per_core_limit: {self.threads_per_sm}
  core_count: {self.sms}
  fpus_per_core: {self.fp32_per_sm}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {self.bandwidth}
  l2_cache_size: {self.l2_bytes}
  clock_rate_ghz: {self.clock_ghz}
  device_memory_size: {self.memory_bytes}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
  cuda_compute_capability {{ major: {self.major} minor: {self.minor} }}
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
runtime_version {{ major: 12 minor: 8 }}
device_description_str: "{self.description}"
"""


_KIB, _GIB = 1 << 10, 1 << 30

GPUS = {
    "a100": GpuSpec("NVIDIA A100-SXM4-80GB", 8, 0, sms=108,
                    smem_per_sm=164 * _KIB, smem_optin=163 * _KIB,
                    threads_per_sm=2048, fp32_per_sm=64, clock_ghz=1.41,
                    bandwidth=2_039_000_000_000, l2_bytes=40 * 1 << 20,
                    memory_bytes=80 * _GIB),
    "l4": GpuSpec("NVIDIA L4", 8, 9, sms=58, smem_per_sm=100 * _KIB,
                  smem_optin=99 * _KIB, threads_per_sm=1536, fp32_per_sm=128,
                  clock_ghz=2.04, bandwidth=300_000_000_000,
                  l2_bytes=48 << 20, memory_bytes=24 * _GIB),
    "h100": GpuSpec("NVIDIA H100 80GB HBM3", 9, 0, sms=132,
                    smem_per_sm=228 * _KIB, smem_optin=227 * _KIB,
                    threads_per_sm=2048, fp32_per_sm=128, clock_ghz=1.98,
                    bandwidth=3_350_000_000_000, l2_bytes=50 << 20,
                    memory_bytes=80 * _GIB),
    "b200": GpuSpec("NVIDIA B200", 10, 0, sms=148, smem_per_sm=228 * _KIB,
                    smem_optin=227 * _KIB, threads_per_sm=2048,
                    fp32_per_sm=128, clock_ghz=1.965,
                    bandwidth=7_700_000_000_000, l2_bytes=126 << 20,
                    memory_bytes=180 * 10**9),
}

#: libtpu's name of each TPU generation, its default topology (the smallest
#: that libtpu accepts for deviceless use: ``v5e:1x1`` is refused), and the
#: HBM of one chip.
TPUS = {
    "v4": ("v4:2x2x1", 32 * _GIB),
    "v5e": ("v5e:2x2", 16 * _GIB),
    "v5p": ("v5p:2x2x1", 95 * _GIB),
    "v6e": ("v6e:2x2", 32 * _GIB),
}

TARGETS = tuple([f"tpu:{g}" for g in TPUS] + [f"cuda:{g}" for g in GPUS])


@dataclasses.dataclass(frozen=True)
class Target:
  """A compile target: a TPU topology or one NVIDIA GPU."""

  name: str                 # as given: "tpu:v5e", "tpu:v5e:4x4", "cuda:h100"
  platform: str             # "tpu" or "cuda"
  generation: str           # "v5e", "h100", ...
  topology: str             # libtpu's topology name; "1x1x1" for a GPU
  memory_bytes: int         # HBM of one device (one TPU chip, one GPU)

  @property
  def gpu(self) -> Optional[GpuSpec]:
    return GPUS.get(self.generation) if self.platform == "cuda" else None


def target(name: str) -> Target:
  """The `Target` called `name`.

  Args:
    name: ``"tpu:GEN"`` or ``"tpu:GEN:TOPOLOGY"`` (GEN one of v4, v5e,
      v5p, v6e; TOPOLOGY as libtpu writes it, e.g. ``4x4`` for v5e and
      v6e, ``2x2x2`` for v4 and v5p), or ``"cuda:GPU"`` (a100, l4, h100,
      b200).

  Returns:
    The target.

  Raises:
    ValueError: an unknown name; the message lists the known ones.
  """
  if not isinstance(name, str):
    raise TypeError(f"`target` (={name!r}) must be a str such as 'tpu:v5e'")
  parts = name.lower().split(":")
  known = ", ".join(TARGETS)
  if parts[0] == "tpu" and len(parts) in (2, 3) and parts[1] in TPUS:
    default, hbm = TPUS[parts[1]]
    topology = default if len(parts) == 2 else f"{parts[1]}:{parts[2]}"
    if len(parts) == 3 and not re.fullmatch(r"\d+(x\d+){1,2}", parts[2]):
      raise ValueError(
          f"`target` (={name!r}): the topology {parts[2]!r} must look like"
          f" 2x2 (v5e, v6e) or 2x2x1 (v4, v5p)")
    return Target(name, "tpu", parts[1], topology, hbm)
  if parts[0] == "cuda" and len(parts) == 2 and parts[1] in GPUS:
    return Target(name, "cuda", parts[1], "1x1x1",
                  GPUS[parts[1]].memory_bytes)
  raise ValueError(f"`target` (={name!r}) is not a known compile target;"
                   f" the known ones are {known} (a TPU name may add a"
                   f" topology: tpu:v5e:4x4)")


# ------------------------------------------------------------ environment


class CompileEnvironmentError(RuntimeError):
  """The compilers for a platform are missing or don't match JAX."""


#: What brings each platform's compilers: libtpu, or the CUDA plugin and
#: ptxas (cuDNN and cuBLAS are not needed to compile).
_PACKAGES = {
    "tpu": lambda v: [f"jax[tpu]=={v}"],
    "cuda": lambda v: [f"jax-cuda12-plugin=={v}", "nvidia-cuda-nvcc-cu12"],
}


def install_packages(platforms: Sequence[str] = ("tpu", "cuda")) -> list:
  """The pip requirements that bring the compilers, pinned to this jax."""
  return [p for platform in platforms
          for p in _PACKAGES[platform](jax.__version__)]


def install_command(platforms: Sequence[str] = ("tpu", "cuda")) -> str:
  """`install_packages` as a command to paste into a shell."""
  return "pip install " + " ".join(f'"{p}"' for p in
                                   install_packages(platforms))


def _version(dist: str) -> Optional[str]:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return None


def _pinned_libtpu() -> Optional[str]:
  """The libtpu requirement of this jax's ``tpu`` extra (``0.0.42.*``)."""
  for req in importlib.metadata.requires("jax") or ():
    match = re.match(r"libtpu\s*==\s*([\w.*]+)\s*;.*extra\s*==\s*.tpu.", req)
    if match:
      return match.group(1)
  return None


def check_environment(platform: str) -> None:
  """Raises `CompileEnvironmentError` unless `platform`'s compilers are
  installed and match the installed jax.

  Args:
    platform: "tpu" or "cuda".

  Raises:
    CompileEnvironmentError: a package is missing (the message names the
      pip command) or built for another jax (the message names both
      versions).
  """
  command = install_command((platform,))
  if platform == "tpu":
    have = _version("libtpu")
    if have is None:
      raise CompileEnvironmentError(
          f"compiling for TPU needs libtpu, which is not installed; run"
          f" {command}")
    pin = _pinned_libtpu()
    if pin and not (have == pin or (pin.endswith("*")
                                    and have.startswith(pin[:-1]))):
      raise CompileEnvironmentError(
          f"libtpu {have} does not match jax {jax.__version__}, which"
          f" pins libtpu=={pin}; run {command}")
    return
  if platform == "cuda":
    jaxlib = _version("jaxlib")
    for dist in ("jax-cuda12-plugin", "jax-cuda12-pjrt"):
      have = _version(dist)
      if have is None:
        raise CompileEnvironmentError(
            f"compiling for NVIDIA GPUs needs {dist}, which is not"
            f" installed; run {command}")
      if have != jaxlib:
        raise CompileEnvironmentError(
            f"{dist} {have} does not match jaxlib {jaxlib}; run {command}")
    if _version("nvidia-cuda-nvcc-cu12") is None:
      raise CompileEnvironmentError(
          f"compiling for NVIDIA GPUs needs ptxas, from"
          f" nvidia-cuda-nvcc-cu12, which is not installed; run {command}")
    return
  raise ValueError(f"`platform` (={platform!r}) must be 'tpu' or 'cuda'")


_TOPOLOGIES: dict[str, Any] = {}


def devices(t: Target) -> list:
  """The devices of `t`'s topology (made once per process)."""
  if t.topology + t.platform + t.generation not in _TOPOLOGIES:
    check_environment(t.platform)
    prepare_environment()
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
    with _captured_stderr() as log:
      try:
        if t.platform == "tpu":
          topo = topologies.get_topology_desc(topology_name=t.topology,
                                              platform="tpu")
        else:
          topo = topologies.get_topology_desc(
              platform="cuda", topology_name="",
              target_config=t.gpu.target_config(), topology=t.topology)
      except Exception as e:  # pylint: disable=broad-except
        error = e
      else:
        error = None
    if error is not None:
      raise CompileEnvironmentError(
          f"libtpu/the CUDA plugin refused the topology of {t.name!r}"
          f" ({t.topology}): {error}\n{log[0][-2000:]}") from error
    _TOPOLOGIES[t.topology + t.platform + t.generation] = list(topo.devices)
  return _TOPOLOGIES[t.topology + t.platform + t.generation]


def mesh(t: Target, axis: str = "data", count: Optional[int] = None) -> Mesh:
  """A 1-D `Mesh` of `t`'s devices (all, or the first `count`).

  Built from the devices directly: `jax.experimental.topologies.make_mesh`
  fails on TPU v4 (two cores per chip).
  """
  ds = devices(t)
  return Mesh(np.asarray(ds if count is None else ds[:count]), (axis,))


# --------------------------------------------------------------- compiling


_SPILL = re.compile(
    r"Registers are spilled to local memory in function '([^']+)', "
    r"(\d+) bytes spill stores, (\d+) bytes spill loads")


@dataclasses.dataclass
class Result:
  """One compile: the program or the compiler's error, and its costs."""

  target: str
  ok: bool
  seconds: float
  error: Optional[str] = None          # the compiler's message
  argument_bytes: Optional[int] = None  # per device (memory_analysis)
  output_bytes: Optional[int] = None
  temp_bytes: Optional[int] = None
  alias_bytes: Optional[int] = None
  spills: dict = dataclasses.field(default_factory=dict)  # kernel: (st, ld)
  compiled: Any = None                 # jax.stages.Compiled, if ok

  @property
  def io_bytes(self) -> Optional[int]:
    if self.argument_bytes is None:
      return None
    return self.argument_bytes + self.output_bytes

  def as_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d.pop("compiled")
    d["spills"] = {k: list(v) for k, v in self.spills.items()}
    return d


def short_error(message: str) -> str:
  """The compiler's message without JAX's wrapping and stack lines."""
  lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
  keep = [ln for ln in lines if not ln.startswith(("File ", "---", "^"))]
  text = " ".join(keep) if keep else message.strip()
  text = re.sub(r"\s+", " ", text)
  return text[:300]


def compile_program(t: Target | str, fn: Callable, *args,
                    in_shardings=None, out_shardings=None,
                    keep: bool = False, **jit_kwargs) -> Result:
  """AOT-compiles ``fn(*args)`` for `t`, without the device.

  Args:
    t: a `Target` or its name.
    fn: the function, or a `jax.jit` of it (then with its own shardings
      and donation; `in_shardings`, `out_shardings` and `jit_kwargs` must
      be left out).
    *args: pytrees of `jax.ShapeDtypeStruct` (or arrays). Leaves without a
      sharding on `t`'s devices are placed, replicated, on its first
      device; pass `in_shardings` to shard them.
    in_shardings, out_shardings: as `jax.jit` takes them.
    keep: keep the `jax.stages.Compiled` in the result.
    **jit_kwargs: more `jax.jit` arguments (``donate_argnums``, ...).

  Returns:
    A `Result`: ``ok`` with the per-device memory, or the compiler's own
    error. For NVIDIA targets `Result.spills` maps each kernel that ptxas
    spilled registers in to ``(spill store bytes, spill load bytes)``.

  Raises:
    CompileEnvironmentError: the target's compilers are not installed.
  """
  if isinstance(t, str):
    t = target(t)
  one = jax.sharding.NamedSharding(mesh(t, count=1),
                                   jax.sharding.PartitionSpec())

  def place(a):
    sharding = getattr(a, "sharding", None)
    if in_shardings is None and not isinstance(
        sharding, jax.sharding.NamedSharding):
      sharding = one
    return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding)

  args = jax.tree.map(place, args)
  if in_shardings is not None:
    jit_kwargs["in_shardings"] = in_shardings
  if out_shardings is not None:
    jit_kwargs["out_shardings"] = out_shardings
  jitted = fn if hasattr(fn, "lower") else jax.jit(fn, **jit_kwargs)
  start = time.perf_counter()
  with _captured_stderr() as log:
    try:
      compiled = jitted.lower(*args).compile()
    except Exception as e:  # pylint: disable=broad-except  (the compiler's)
      compiled, error = None, f"{type(e).__name__}: {e}"
    else:
      error = None
  seconds = time.perf_counter() - start
  spills = {}
  for kernel, stores, loads in _SPILL.findall(log[0]):
    old = spills.get(kernel, (0, 0))
    spills[kernel] = (max(old[0], int(stores)), max(old[1], int(loads)))
  if compiled is None:
    return Result(t.name, False, seconds, error=error, spills=spills)
  stats = compiled.memory_analysis()
  return Result(t.name, True, seconds,
                argument_bytes=stats.argument_size_in_bytes,
                output_bytes=stats.output_size_in_bytes,
                temp_bytes=stats.temp_size_in_bytes,
                alias_bytes=stats.alias_size_in_bytes,
                spills=spills, compiled=compiled if keep else None)
