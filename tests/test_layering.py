"""Static layering checks over the tl_jax package (ast only; nothing of tl_jax is imported).

1. No import cycles between tl_jax modules. Every import counts, including ones inside
   functions, under `if TYPE_CHECKING:` and `importlib.import_module("tl_jax...")` with a
   constant name. `import a.b` and `from a import b` give an edge to the module named
   (`a.b` when it is a module or package, else `a`); importing a package is an edge to its
   `__init__` only, not to the parent packages, so a package's `__init__` importing its
   submodules and those importing siblings as `from tl_jax.x.sub import ...` is no cycle,
   while a submodule doing `from tl_jax.x import name` (name not a submodule) is an edge to the
   package `tl_jax.x` and closes one.
2. No module uses another module's private names: `from tl_jax.a import _b` (`_b` not a
   submodule), `mod._b` or `getattr(mod, "_b")` on a name bound to a tl_jax module. Dunder
   names are fine. Name bindings are collected per file, not per scope.

The checker functions take a root directory holding the package so they can be tested on
synthetic trees.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib
from typing import Iterator

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "tl_jax"


@dataclasses.dataclass(frozen=True)
class Edge:
  src: str  # importing module
  dst: str  # imported module
  file: str  # path of src relative to the root
  line: int


def module_files(root: pathlib.Path, package: str = PACKAGE) -> dict[str, pathlib.Path]:
  """Dotted module name -> file for every `<package>/**/*.py` under `root`."""
  root = pathlib.Path(root)
  out = {}
  for f in sorted((root / package).rglob("*.py")):
    rel = f.relative_to(root).with_suffix("")
    if "__pycache__" in rel.parts:
      continue
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    out[".".join(parts)] = f
  return out


def _is_package(path: pathlib.Path) -> bool:
  return path.name == "__init__.py"


def _is_private(name: str) -> bool:
  return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _known(name: str, modules: dict[str, pathlib.Path]) -> str | None:
  """`name` if it is a module, else its longest prefix that is, else None."""
  parts = name.split(".")
  for i in range(len(parts), 0, -1):
    cand = ".".join(parts[:i])
    if cand in modules:
      return cand
  return None


def _from_base(node: ast.ImportFrom, module: str, path: pathlib.Path) -> str | None:
  """Absolute name of the module a `from X import ...` reads from (relative imports too)."""
  if not node.level:
    return node.module
  pkg = module.split(".") if _is_package(path) else module.split(".")[:-1]
  if node.level - 1 > len(pkg):
    return None
  base = pkg[:len(pkg) - (node.level - 1)]
  return ".".join(base + ([node.module] if node.module else [])) or None


def _parse(path: pathlib.Path) -> ast.Module:
  return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imports(module: str, path: pathlib.Path, modules: dict[str, pathlib.Path]
             ) -> Iterator[tuple[int, str, str | None, tuple[str, str] | None]]:
  """(line, target module, imported name, binding) per import of a package module.

  For `from m import n`: target is `m.n` when that is a module (name None), else `m` with
  name `n`. binding is (local name, module it is bound to) when the import binds a module
  name, else None. Only targets inside the scanned package are yielded.
  """
  for node in ast.walk(_parse(path)):
    if isinstance(node, ast.Import):
      for a in node.names:
        target = _known(a.name, modules)
        if target is None:
          continue
        top = a.name.split(".")[0]
        if a.asname:  # `import a.b as c` binds c to a.b
          binding = (a.asname, target) if target == a.name else None
        else:  # `import a.b` binds a
          binding = (top, top) if top in modules else None
        yield node.lineno, target, None, binding
    elif isinstance(node, ast.ImportFrom):
      base = _from_base(node, module, path)
      if base is None:
        continue
      for a in node.names:
        sub = f"{base}.{a.name}"
        if sub in modules:
          yield node.lineno, sub, None, (a.asname or a.name, sub)
        elif base in modules:
          yield node.lineno, base, a.name, None
    elif isinstance(node, ast.Call):
      f = node.func
      fname = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
      if fname in ("import_module", "__import__") and node.args and \
          isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
        target = _known(node.args[0].value, modules)
        if target is not None:
          yield node.lineno, target, None, None


def import_edges(root: pathlib.Path, package: str = PACKAGE) -> list[Edge]:
  """Every import of one package module by another (self-imports left out)."""
  root = pathlib.Path(root)
  modules = module_files(root, package)
  edges = []
  for module, path in modules.items():
    rel = path.relative_to(root).as_posix()
    for line, target, _, _ in _imports(module, path, modules):
      if target != module:
        edges.append(Edge(module, target, rel, line))
  return list(dict.fromkeys(edges))  # `from m import a, b` is one import site


def strongly_connected(nodes: list[str], edges: list[Edge]) -> list[list[str]]:
  """Tarjan's SCCs of more than one node, each sorted, in sorted order."""
  succ: dict[str, set[str]] = {n: set() for n in nodes}
  for e in edges:
    succ.setdefault(e.src, set()).add(e.dst)
    succ.setdefault(e.dst, set())
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  on_stack: set[str] = set()
  out = []

  def visit(v: str) -> None:  # iterative DFS: import graphs can be deep
    work = [(v, iter(sorted(succ[v])))]
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    while work:
      node, it = work[-1]
      for w in it:
        if w not in index:
          index[w] = low[w] = len(index)
          stack.append(w)
          on_stack.add(w)
          work.append((w, iter(sorted(succ[w]))))
          break
        if w in on_stack:
          low[node] = min(low[node], index[w])
      else:
        work.pop()
        if work:
          low[work[-1][0]] = min(low[work[-1][0]], low[node])
        if low[node] == index[node]:
          comp = []
          while True:
            w = stack.pop()
            on_stack.discard(w)
            comp.append(w)
            if w == node:
              break
          if len(comp) > 1:
            out.append(sorted(comp))

  for n in sorted(succ):
    if n not in index:
      visit(n)
  return sorted(out)


def elementary_cycles(component: list[str], edges: list[Edge], limit: int = 50
                      ) -> list[list[str]]:
  """Simple cycles within one SCC, each starting at its smallest module (at most `limit`)."""
  members = set(component)
  succ: dict[str, list[str]] = {n: [] for n in component}
  for e in edges:
    if e.src in members and e.dst in members and e.dst not in succ[e.src]:
      succ[e.src].append(e.dst)
  for n in succ:
    succ[n].sort()
  cycles: list[list[str]] = []
  for start in sorted(component):
    def dfs(node: str, path: list[str]) -> None:
      for w in succ[node]:
        if len(cycles) >= limit:
          return
        if w == start:
          cycles.append(path + [start])
        elif w > start and w not in path:
          dfs(w, path + [w])
    dfs(start, [start])
  return cycles


def cycle_violations(root: pathlib.Path, package: str = PACKAGE) -> list[str]:
  """Per cycle: an `import cycle: a -> b -> a` line, then `file:line: a imports b` per site."""
  root = pathlib.Path(root)
  edges = import_edges(root, package)
  msgs = []
  for comp in strongly_connected(sorted(module_files(root, package)), edges):
    for cycle in elementary_cycles(comp, edges):
      msgs.append("import cycle: " + " -> ".join(cycle))
      for a, b in zip(cycle, cycle[1:]):
        for e in edges:
          if e.src == a and e.dst == b:
            msgs.append(f"{e.file}:{e.line}: {a} imports {b}")
  return msgs


def private_violations(root: pathlib.Path, package: str = PACKAGE) -> list[str]:
  """`file:line: ...` for each use of another package module's private name."""
  root = pathlib.Path(root)
  modules = module_files(root, package)
  msgs = []
  for module, path in modules.items():
    rel = path.relative_to(root).as_posix()
    aliases: dict[str, str] = {}  # local name -> package module it is bound to
    for line, target, name, binding in _imports(module, path, modules):
      if binding is not None:
        aliases[binding[0]] = binding[1]
      if name is not None and _is_private(name) and target != module:
        msgs.append(f"{rel}:{line}: from {target} import {name} (private name of {target})")
    for node in ast.walk(_parse(path)):
      if isinstance(node, ast.Attribute):  # nested chains repeat: messages are deduplicated
        chain = []
        cur: ast.AST = node
        while isinstance(cur, ast.Attribute):
          chain.append(cur.attr)
          cur = cur.value
        if not isinstance(cur, ast.Name) or cur.id not in aliases:
          continue
        target = aliases[cur.id]
        expr = cur.id
        for attr in reversed(chain):
          if f"{target}.{attr}" in modules:
            target, expr = f"{target}.{attr}", f"{expr}.{attr}"
            continue
          if _is_private(attr) and target != module:
            msgs.append(f"{rel}:{node.lineno}: {expr}.{attr} (private name of {target})")
          break
      elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
          node.func.id == "getattr" and len(node.args) >= 2 and \
          isinstance(node.args[0], ast.Name) and node.args[0].id in aliases and \
          isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str) and \
          _is_private(node.args[1].value) and aliases[node.args[0].id] != module:
        msgs.append(f"{rel}:{node.lineno}: getattr({node.args[0].id}, "
                    f"{node.args[1].value!r}) (private name of {aliases[node.args[0].id]})")
  return sorted(set(msgs), key=_msg_key)


def _msg_key(msg: str) -> tuple[str, int, str]:
  file, line, rest = msg.split(":", 2)
  return file, int(line), rest


# ----------------------------------------------------------------------------- the real tree


def test_no_import_cycles():
  msgs = cycle_violations(ROOT)
  assert not msgs, "import cycles between tl_jax modules:\n" + "\n".join(msgs)


def test_no_private_cross_module_names():
  msgs = private_violations(ROOT)
  assert not msgs, "private names used across tl_jax modules:\n" + "\n".join(msgs)


# ----------------------------------------------------------------------------- the checker


def _tree(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
  for name, text in files.items():
    f = root / name
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(text)
  return root


# Patterns that must not be reported: a package __init__ importing its submodules, siblings
# importing each other by full path, a private submodule, dunders, a module's own privates.
_CLEAN = {
    "tl_jax/__init__.py": "__version__ = '0'\n",
    "tl_jax/data/__init__.py": "from tl_jax.data.a import f\nfrom tl_jax.data import b\n",
    "tl_jax/data/a.py": "from tl_jax.data.b import g\nfrom tl_jax.data import _impl\n"
                        "import tl_jax\nV = tl_jax.__version__\n"
                        "def _own():\n  import tl_jax.data.a as me\n  return me._own\n",
    "tl_jax/data/b.py": "def g():\n  from tl_jax.data._impl import h\n  return h\n",
    "tl_jax/data/_impl.py": "def h():\n  pass\n",
}


def test_checker_accepts_clean_tree(tmp_path):
  root = _tree(tmp_path, _CLEAN)
  assert {(e.src, e.dst) for e in import_edges(root)} >= {
      ("tl_jax.data", "tl_jax.data.a"), ("tl_jax.data", "tl_jax.data.b"),
      ("tl_jax.data.a", "tl_jax.data.b"), ("tl_jax.data.a", "tl_jax.data._impl"),
      ("tl_jax.data.b", "tl_jax.data._impl"), ("tl_jax.data.a", "tl_jax")}
  assert cycle_violations(root) == []
  assert private_violations(root) == []


def test_checker_finds_cycles(tmp_path):
  root = _tree(tmp_path, {
      **_CLEAN,
      # a cycle through a function-level import and a relative one ...
      "tl_jax/x.py": "import os\n\ndef f():\n  from tl_jax import y\n  return y\n",
      "tl_jax/y.py": "from . import z\n",
      "tl_jax/z.py": "import tl_jax.x as x\n",
      # ... and a submodule taking a (non-module) name from its own package's __init__.
      "tl_jax/data/b.py": "from tl_jax.data import f\n",
  })
  msgs = cycle_violations(root)
  text = "\n".join(msgs)
  assert "import cycle: tl_jax.x -> tl_jax.y -> tl_jax.z -> tl_jax.x" in msgs
  assert "tl_jax/x.py:4: tl_jax.x imports tl_jax.y" in text
  assert "tl_jax/y.py:1: tl_jax.y imports tl_jax.z" in text
  assert "tl_jax/z.py:1: tl_jax.z imports tl_jax.x" in text
  assert "import cycle: tl_jax.data -> tl_jax.data.b -> tl_jax.data" in msgs
  assert "tl_jax/data/b.py:1: tl_jax.data.b imports tl_jax.data" in text
  assert "import cycle: tl_jax.data -> tl_jax.data.a -> tl_jax.data.b -> tl_jax.data" in msgs
  assert "tl_jax.data._impl" not in text  # imported by the cycle's members, but no part of it
  assert len([m for m in msgs if m.startswith("import cycle")]) == 3


def test_checker_finds_private_names(tmp_path):
  root = _tree(tmp_path, {
      **_CLEAN,
      "tl_jax/data/_impl.py": "def h():\n  pass\n\ndef _secret():\n  pass\n",
      "tl_jax/p.py": "from tl_jax.data.a import _own, f\n"
                     "from tl_jax.data import _impl\n"
                     "from tl_jax import data\n"
                     "import tl_jax.data.b\n"
                     "def run():\n"
                     "  from .data import a as mod\n"
                     "  mod._own()\n"
                     "  _impl._secret()\n"
                     "  tl_jax.data._impl._secret()\n"
                     "  data.a._own()\n"
                     "  return getattr(mod, '_own'), mod.__name__, mod.f\n",
  })
  assert private_violations(root) == [
      "tl_jax/p.py:1: from tl_jax.data.a import _own (private name of tl_jax.data.a)",
      "tl_jax/p.py:7: mod._own (private name of tl_jax.data.a)",
      "tl_jax/p.py:8: _impl._secret (private name of tl_jax.data._impl)",
      "tl_jax/p.py:9: tl_jax.data._impl._secret (private name of tl_jax.data._impl)",
      "tl_jax/p.py:10: data.a._own (private name of tl_jax.data.a)",
      "tl_jax/p.py:11: getattr(mod, '_own') (private name of tl_jax.data.a)",
  ]
