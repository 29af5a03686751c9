"""The package's imports form no circle, and no lower module imports a layer.

Each ``sepconv_jax/*.py`` is parsed (not imported) with `ast`; every import
of a package module, at module level or inside a function, is an edge.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

import sepconv_jax

PACKAGE = "sepconv_jax"
ROOT = pathlib.Path(sepconv_jax.__file__).resolve().parent
MODULES = {p.stem: p for p in sorted(ROOT.glob("*.py"))}


def _target(dotted: str) -> str | None:
  """The package module that `dotted` (a module path) is, or None."""
  parts = dotted.split(".")
  if parts[0] != PACKAGE:
    return None
  if len(parts) > 1 and parts[1] in MODULES:
    return parts[1]
  return "__init__"


def imports(module: str) -> set[str]:
  """The package modules that `module` imports anywhere in its source."""
  tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(filter(None, (_target(a.name) for a in node.names)))
    elif isinstance(node, ast.ImportFrom):
      if node.level:  # A relative import, from this package.
        base = PACKAGE + (f".{node.module}" if node.module else "")
      else:
        base = node.module or ""
      if base == PACKAGE:
        # `from sepconv_jax import X`: the submodule X, or a name of
        # __init__.
        found.update(a.name if a.name in MODULES else "__init__"
                     for a in node.names)
      elif _target(base):
        found.add(_target(base))
  found.discard(module)
  return found


GRAPH = {module: imports(module) for module in MODULES}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One circle of `graph` as a path that ends where it starts, or None."""
  state: dict[str, int] = {}  # 1: on the current path, 2: done.
  path: list[str] = []

  def visit(node):
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    path.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_the_walk_sees_every_kind_of_import():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
  assert _cycle(graph) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) is None
  assert "_keras_config" in GRAPH["_linen"]  # from sepconv_jax import X
  assert "_linen" in GRAPH["_keras_saved"]
  assert "_keras_weights" in GRAPH["__init__"]  # from sepconv_jax.X import Y
  assert {"_args", "_keras_serial"} <= GRAPH["_initializers"]


def test_function_level_imports_are_edges(tmp_path, monkeypatch):
  source = ("def f():\n"
            "  from sepconv_jax._linen import SeparableConv2D\n"
            "  import sepconv_jax._ops\n"
            "  from . import _args\n")
  (tmp_path / "_probe.py").write_text(source)
  monkeypatch.setitem(MODULES, "_probe", tmp_path / "_probe.py")
  assert imports("_probe") == {"_linen", "_ops", "_args"}


def test_no_import_circle():
  cycle = _cycle(GRAPH)
  assert cycle is None, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", sorted(
    m for m in MODULES if m.startswith("_keras_") and m != "_keras_saved"))
def test_keras_modules_below_the_layers_import_no_layer(module):
  """Only `_keras_saved`, which sits above the layers, may import them."""
  assert not GRAPH[module] & {"_linen", "_nnx", "nnx", "__init__"}, (
      module, sorted(GRAPH[module]))


@pytest.mark.parametrize("module", ["_activations", "_constraints",
                                    "_initializers", "_regularizers"])
def test_name_tables_import_no_layer_machinery(module):
  assert GRAPH[module] <= {"_args", "_keras_serial"}, (module,
                                                       sorted(GRAPH[module]))
