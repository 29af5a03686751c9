"""Executes every notebook in notebooks/; a cell that raises fails the test.

Each notebook runs in its own subprocess (nbclient, a fresh python3
kernel), with ``SEPCONV_NOTEBOOK_QUICK=1``, which the training notebook
reads to train one epoch of one seed (every cell still runs); that one runs
in the full profile (``SEPCONV_JAX_FULL_TESTS=1``), the quickstart always. The committed files must also
carry their executed outputs (the plots embedded as PNG) from full runs, so
that they read without rerunning.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

# Found, not imported (the kernels import them): collecting this module
# stays cheap on the worker that does not run it.
_NEEDS = ("nbformat", "nbclient", "ipykernel", "matplotlib", "sklearn")
pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in _NEEDS),
    reason="the notebooks need the `test` extra")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TIMEOUT = 300

_RUNNER = textwrap.dedent("""
    import os, sys
    import nbformat
    from nbclient import NotebookClient

    path, out = sys.argv[1], sys.argv[2]
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=%d, kernel_name="python3",
                   resources={"metadata": {"path": os.path.dirname(path)}}
                   ).execute()
    nbformat.write(nb, out)
""" % TIMEOUT)


@pytest.fixture(scope="module")
def executions(tmp_path_factory):
  """Runs each notebook that a test asks for, once, in its own kernel."""
  out_dir = tmp_path_factory.mktemp("executed")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             SEPCONV_NOTEBOOK_QUICK="1")
  started = {}

  def start(name):
    if name not in started:
      path, out = ROOT / "notebooks" / name, out_dir / name
      started[name] = (subprocess.Popen(
          [sys.executable, "-c", _RUNNER, str(path), str(out)], env=env,
          cwd=path.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
          text=True), out)
    return started[name]

  yield start
  for proc, _ in started.values():
    if proc.poll() is None:
      proc.kill()
      proc.communicate()


def test_the_notebooks_exist():
  assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb",
                                         "separable_vs_regular.ipynb"}


def _nbformat():
  import nbformat  # pylint: disable=g-import-not-at-top
  return nbformat


def _errors(nb) -> list[str]:
  return [f"cell {i}: {o.get('ename')}: {o.get('evalue')}"
          for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
          for o in cell.get("outputs", []) if o.output_type == "error"]


# The research notebook trains six models even when quick: the full profile.
_RUN = [pytest.param(p.name, marks=pytest.mark.full("trains models"))
        if p.name == "separable_vs_regular.ipynb" else p.name
        for p in NOTEBOOKS]


@pytest.mark.parametrize("name", _RUN)
def test_notebook_executes_without_errors(executions, name):
  proc, out = executions(name)
  try:
    stdout, stderr = proc.communicate(timeout=TIMEOUT + 60)
  except subprocess.TimeoutExpired:
    proc.kill()
    stdout, stderr = proc.communicate()
    pytest.fail(f"{name} did not finish in {TIMEOUT + 60} s")
  # nbclient raises CellExecutionError (with the cell and its traceback) on
  # the first cell that errors.
  assert proc.returncode == 0, f"{name} failed:\n{stderr[-8000:]}"
  executed = _nbformat().read(out, as_version=4)
  assert not _errors(executed)
  code = [c for c in executed.cells if c.cell_type == "code"]
  assert code and all(c.get("execution_count") for c in code)


@pytest.mark.parametrize("name", [p.name for p in NOTEBOOKS])
def test_committed_notebook_carries_its_outputs(name):
  """Committed executed, without errors, so it reads without rerunning."""
  nb = _nbformat().read(ROOT / "notebooks" / name, as_version=4)
  _nbformat().validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.get("execution_count") for c in code), "not executed"
  assert all(c.get("outputs") for c in code), "a code cell has no output"
  assert not _errors(nb)
  kernel = nb.metadata.get("kernelspec", {}).get("name")
  assert kernel == "python3"


def test_research_notebook_embeds_its_plots():
  nb = _nbformat().read(ROOT / "notebooks" / "separable_vs_regular.ipynb",
                     as_version=4)
  pngs = [o for c in nb.cells if c.cell_type == "code"
          for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
  assert len(pngs) >= 2
