"""Runs the Python examples of README.md and of every page under docs/.

README.md: every ```python block must run alone, as a newcomer pastes it.
Each block runs in a fresh interpreter of its own, pasted line by line into
`code.InteractiveConsole` (what the standard `python` prompt runs): so it
needs its own imports and data, and no blank line inside an indented body
(the prompt ends the body there). After its last line the console must not
be waiting for more input, so the next block pasted after it starts afresh:
pasting the whole README's blocks in order into one prompt then works too.

The pages under docs/: each file's ```python blocks, joined top to bottom,
form one script (the pages say so): a block may use what an earlier block of
the same file defined, as a reader pasting them in order would. The scripts
run one after the other in one fresh interpreter (`sys.executable`, with
Keras on its JAX backend and JAX on the CPU): each in a namespace of its own
and an empty directory of its own, so no script sees another's names or
files; importing JAX, Flax and Keras once instead of once per file saves
most of the test's time on two cores. Every script must run to its end; the
test names each one that raised.

Markers: a block whose first line is

    # needs: cluster

is shown to the reader but not run (it needs several hosts, accelerators or
a scheduler); one whose first line is

    # needs: full

runs in the full profile only (SEPCONV_JAX_FULL_TESTS=1: it takes several
seconds, such as building a Keras application). Nothing else is skipped.
Examples that need Keras say so in the text (the `keras` extra); the test
environment (`.[test]`) has it.

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
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
FILES = [README, *PAGES]
SKIP_MARKER = "# needs: cluster"
FULL_MARKER = "# needs: full"
FULL = os.environ.get("SEPCONV_JAX_FULL_TESTS") == "1"
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


def script_of(path: pathlib.Path, full: bool = FULL) -> str:
  """The file's runnable Python blocks as one script.

  Each block is preceded by a comment naming its line, so a traceback
  points back into the markdown file. Blocks marked `FULL_MARKER` are in
  it only if `full`.
  """
  parts = []
  for line, code in code_blocks(path.read_text()):
    first = code.lstrip()
    if first.startswith(SKIP_MARKER) or (
        first.startswith(FULL_MARKER) and not full):
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


def test_full_blocks_run_in_the_full_profile_only(tmp_path):
  page = tmp_path / "page.md"
  page.write_text("```python\na = 1\n```\n```python\n# needs: full\nb = 2\n```\n")
  assert "b = 2" not in script_of(page, full=False)
  assert "a = 1" in script_of(page, full=True)
  assert "b = 2" in script_of(page, full=True)


def test_python_blocks_run(tmp_path):
  scripts = []
  for path in PAGES:  # The README's blocks run alone, below.
    script = script_of(path)
    if script:
      workdir = tmp_path / path.stem
      workdir.mkdir()
      scripts.append((path.relative_to(ROOT).as_posix(), script,
                      str(workdir)))
  assert len(scripts) >= 5, [name for name, _, _ in scripts]
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


# Pastes a block, line by line, into the standard interactive console; exits
# 1 on the first error (as shown at the prompt), 2 if the console is still
# waiting for input after the last line.
_CONSOLE = textwrap.dedent("""
    import code, json, sys

    class Console(code.InteractiveConsole):
      def showtraceback(self, *args, **kwargs):
        super().showtraceback(*args, **kwargs)
        sys.exit(1)

      def showsyntaxerror(self, *args, **kwargs):
        super().showsyntaxerror(*args, **kwargs)
        sys.exit(1)

    console = Console({"__name__": "__console__"})
    more = False
    for line in json.load(open(sys.argv[1])):
      more = console.push(line)
    if more:
      print("the console still waits for input after the last line: end the"
            " block with a complete statement", file=sys.stderr)
      sys.exit(2)
""")


def _paste(code: str, tmp_path: pathlib.Path, name: str):
  """Pastes `code` into a fresh interpreter's console; the process."""
  lines = tmp_path / f"{name}.json"
  lines.write_text(json.dumps(code.splitlines()))
  env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
             PYTHONUNBUFFERED="1")
  return subprocess.run([sys.executable, "-c", _CONSOLE, str(lines)],
                        cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=TIMEOUT, check=False)


@pytest.mark.parametrize("code,error", [
    # A blank line inside a body ends it at the prompt.
    ("def f():\n    a = 1\n\n    return a\n", "IndentationError"),
    # A name from another block.
    ("y = undefined_elsewhere + 1", "NameError"),
    # A compound statement needs a blank line before the next statement.
    ("for i in range(2):\n    pass\nj = 1", "SyntaxError"),
], ids=["blank line in a body", "name from another block",
        "no blank line after a body"])
def test_the_console_paste_catches_what_a_prompt_refuses(tmp_path, code,
                                                          error):
  proc = _paste(code, tmp_path, "bad")
  assert proc.returncode == 1 and error in proc.stderr, proc.stderr


def test_the_console_paste_refuses_a_block_left_open(tmp_path):
  proc = _paste("for i in range(2):\n    pass", tmp_path, "open")
  assert proc.returncode == 2, proc.stderr


_README_BLOCKS = code_blocks(README.read_text())


@pytest.mark.parametrize("line,code", _README_BLOCKS,
                         ids=[f"line {line}" for line, _ in _README_BLOCKS])
def test_each_readme_block_pastes_alone_into_a_fresh_interpreter(
    tmp_path, line, code):
  proc = _paste(code, tmp_path, f"readme_{line}")
  assert proc.returncode == 0, (
      f"README.md's block at line {line}, pasted alone into a fresh"
      f" `python` prompt, fails:\n{proc.stderr[-4000:]}")


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
