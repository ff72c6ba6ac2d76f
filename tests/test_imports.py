"""The package has no import circle: every module can be read (and imported)
after the modules it uses, function-level imports included."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "icsjax"


def module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: pathlib.Path, modules: set[str]) -> set[str]:
  """The package's modules that `path` imports (a name imported from a module
  counts as that module, or as the submodule it names)."""
  name = module_name(path)
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        up = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(up + ([node.module] if node.module else []))
      targets = [base] + [f"{base}.{a.name}" for a in node.names]
    else:
      continue
    for t in targets:
      while t and t not in modules:
        t = t.rpartition(".")[0]
      # A module importing its own package (or a parent) is how Python loads it.
      if t and t != name and not name.startswith(t + "."):
        found.add(t)
  return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components with more than one module."""
  order, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    order[v] = low[v] = len(order)
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in order:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], order[w])
    if low[v] == order[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in graph:
    if v not in order:
      visit(v)
  return out


def package_graph() -> dict[str, set[str]]:
  paths = list(PACKAGE.rglob("*.py"))
  modules = {module_name(p) for p in paths}
  return {module_name(p): imports_of(p, modules) for p in paths}


def test_no_import_circles():
  assert circles(package_graph()) == []


def test_the_check_finds_a_circle():
  assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  graph = package_graph()
  assert "icsjax.records" in graph["icsjax.train"]  # imports are read
  assert "icsjax.norms" in graph["icsjax.models"]


def test_a_run_starts_without_the_heavy_modules_it_does_not_use():
  """Every run, and each of the tests' subprocesses, pays for what the command
  line imports before its first step: scikit-learn and scipy.stats take a
  second each to import and the report's modules another, which a run does not
  need (the digits ship as arrays; p-values come from scipy.special; the
  report is imported when it is written)."""
  import subprocess
  import sys
  code = ("import sys; import icsjax.main, icsjax.runner, icsjax.study; "
          "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn' "
          "or m.startswith(('scipy.stats', 'icsjax.report', 'icsjax.analysis', 'matplotlib'))))")
  out = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "[]"
