"""Runs the Python examples of README.md and of every page under docs/.

Each file's ```python blocks, joined top to bottom, form one script: a block
may use what an earlier block of the same file defined, as a reader pasting
them in order would. The scripts run one after the other in one fresh
interpreter (`sys.executable`, with Keras on its JAX backend and JAX on the
CPU): each in a namespace of its own and an empty directory of its own, so
no script sees another's names or files; importing JAX, Flax and Keras once
instead of once per file saves most of the test's time on two cores. Every
script must run to its end; the test names each one that raised.

The one marker: a block whose first line is

    # needs: cluster

is shown to the reader but not run (it needs several hosts, accelerators or
a scheduler). Nothing else is skipped. Examples that need Keras say so in the
text (the `keras` extra); the test environment (`.[test]`) has it.

The files' relative links must also point at files that exist.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP_MARKER = "# needs: cluster"
TIMEOUT = 600  # seconds for every file together (about a minute)

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*$")


def code_blocks(text: str, lang: str = "python") -> list[tuple[int, str]]:
  """The fenced blocks of `lang` in markdown `text`: (first line no., code).

  A fence may be indented (inside a list item); the indentation is removed.
  """
  blocks = []
  lines = text.splitlines()
  i = 0
  while i < len(lines):
    m = _FENCE.match(lines[i])
    if not m or not m.group("lang"):
      i += 1
      continue
    start, indent = i + 1, m.group("indent")
    end = start
    while end < len(lines) and lines[end].strip() != "```":
      end += 1
    if end == len(lines):
      raise ValueError(f"unclosed ``` fence at line {i + 1}")
    if m.group("lang") == lang:
      body = [l[len(indent):] if l.startswith(indent) else l
              for l in lines[start:end]]
      blocks.append((start + 1, textwrap.dedent("\n".join(body))))
    i = end + 1
  return blocks


def script_of(path: pathlib.Path) -> str:
  """The file's runnable Python blocks as one script.

  Each block is preceded by a comment naming its line, so a traceback
  points back into the markdown file.
  """
  parts = []
  for line, code in code_blocks(path.read_text()):
    if code.lstrip().startswith(SKIP_MARKER):
      continue
    parts.append(f"# --- {path.name}, line {line}\n{code}\n")
  return "\n".join(parts)


def test_code_blocks_are_found():
  text = textwrap.dedent("""\
      ```python
      a = 1
      ```
      ```bash
      echo no
      ```
      * item:

        ```python
        # needs: cluster
        b = 2
        ```
      """)
  assert code_blocks(text) == [(2, "a = 1"), (10, "# needs: cluster\nb = 2")]
  assert code_blocks(text, "bash") == [(5, "echo no")]


_RUNNER = textwrap.dedent("""
    import json, os, sys, traceback
    failures = {}
    for name, script, workdir in json.load(open(sys.argv[1])):
      os.chdir(workdir)
      try:
        exec(compile(script, name, "exec"), {"__name__": "__main__"})
      except BaseException:  # a script's failure, reported with its name
        failures[name] = traceback.format_exc()
    print(json.dumps(failures))
""")


def test_python_blocks_run(tmp_path):
  scripts = []
  for path in FILES:
    script = script_of(path)
    if script:
      workdir = tmp_path / path.stem
      workdir.mkdir()
      scripts.append((path.relative_to(ROOT).as_posix(), script,
                      str(workdir)))
  assert len(scripts) >= 6, [name for name, _, _ in scripts]
  (tmp_path / "scripts.json").write_text(json.dumps(scripts))
  env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
             PYTHONUNBUFFERED="1")
  proc = subprocess.run(
      [sys.executable, "-c", _RUNNER, str(tmp_path / "scripts.json")],
      cwd=tmp_path, env=env, capture_output=True, text=True,
      timeout=TIMEOUT, check=False)
  assert proc.returncode == 0, proc.stderr[-6000:]
  failures = json.loads(proc.stdout.strip().splitlines()[-1])
  assert not failures, "\n\n".join(
      f"the Python blocks of {name} failed:\n{trace}"
      for name, trace in failures.items())


_LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_exist(path):
  missing = []
  for m in _LINK.finditer(path.read_text()):
    target = m.group("target").split("#")[0]
    if not target or re.match(r"^[a-z]+:", target):
      continue  # an anchor on the same page, or a URL
    if not (path.parent / target).exists():
      missing.append(m.group("target"))
  assert not missing, f"{path.relative_to(ROOT)} links to missing files: {missing}"


def test_readme_has_the_ci_command():
  """`.ci/run` runs the README's test command: the two must not drift."""
  ci = (ROOT / ".ci" / "run").read_text().splitlines()
  command = [l for l in ci if l.startswith("python3 -m venv")]
  assert command, ".ci/run has no `python3 -m venv` line"
  assert command[-1] in (ROOT / "README.md").read_text()
