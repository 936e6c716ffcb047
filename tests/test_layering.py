"""The layering rule, read from the source with ``ast`` (no imports run):

- every module of ``pi0cli`` belongs to one layer of :data:`LAYERS` (docs/architecture.md, "Layers"), and no
  import points from a lower layer to a higher one, whether it runs at import time or inside a function: a
  deferred import is still a dependency, it only moves the moment it bites;
- nothing under ``pi0cli/`` except ``pi0cli/cli/`` (and ``pi0cli/__main__.py``) imports ``pi0cli.cli`` (the
  library reaches the CLI through callbacks and takes objects, not names);
- no core module imports or names a robot plugin (``pi0_embodiment_*``): built-in robots are plugins like any
  other;
- the imports of ``pi0cli``, module-level and deferred alike, have no circle. Only imports under
  ``if TYPE_CHECKING:`` (types, never run) are left out.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

PACKAGE = Path(__file__).resolve().parents[1] / "pi0cli"

#: The layers from the bottom up, each with the modules (and packages: every module under them) it holds; a
#: module belongs to its longest matching entry. A new top-level module gets a row here, in the layer whose
#: modules it may import.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("contracts", ("pi0cli", "pi0cli.errors", "pi0cli.transforms", "pi0cli.normstats", "pi0cli.models.config",
                   "pi0cli.models.families", "pi0cli.embodiment", "pi0cli.observation_types",
                   "pi0cli.observation_check", "pi0cli.simulator", "pi0cli.diagnostics")),
    ("files", ("pi0cli.checkpoint", "pi0cli.downloads", "pi0cli.scheduling")),
    # The model families' registry (pi0cli/models/families/__init__.py) is a contract the config checks
    # model_type against; the families themselves are model code.
    ("model", ("pi0cli.models", "pi0cli.models.families.base", "pi0cli.models.families.pi0",
               "pi0cli.models.families.pi05", "pi0cli.models.families.pi0_fast")),
    ("data", ("pi0cli.data", "pi0cli.pipeline")),
    ("jobs", ("pi0cli.training", "pi0cli.policy", "pi0cli.serving", "pi0cli.evaluation", "pi0cli.convert",
              "pi0cli.client", "pi0cli.export", "pi0cli.runtime")),
    ("registry", ("pi0cli.plugins", "pi0cli.doctor")),
    ("front ends", ("pi0cli.cli", "pi0cli.__main__", "pi0cli.testing")),
)


class Import(NamedTuple):
    target: str
    line: int
    deferred: bool  # inside a function: runs when it is called, not when the module is imported


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Collector(ast.NodeVisitor):
    """Every import of one module that can run, with whether it sits inside a function."""

    def __init__(self, module: str, is_package: bool, known: frozenset[str]) -> None:
        self.module, self.is_package, self.known = module, is_package, known
        self.found: list[Import] = []
        self.depth = 0

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):  # types only: never runs
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append(Import(alias.name, node.lineno, self.depth > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        # ``from pkg import mod`` of a known module imports ``pkg.mod`` (its package may still be initialising,
        # which Python allows); any other name imports ``pkg`` itself.
        target = _resolve(node, self.module, self.is_package)
        submodules = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in self.known]
        if len(submodules) < len(node.names):
            self.found.append(Import(target, node.lineno, self.depth > 0))
        self.found.extend(Import(sub, node.lineno, self.depth > 0) for sub in submodules)


def imports(path: Path, module: str, known: frozenset[str] = frozenset()) -> list[Import]:
    """Every import in ``path`` that can run: at module level or inside a function (``deferred``); imports
    under ``if TYPE_CHECKING:`` are left out."""
    collector = _Collector(module, path.name == "__init__.py", known)
    collector.visit(ast.parse(path.read_text(), str(path)))
    return collector.found


def layer_of(module: str, layers: Sequence[tuple[str, Sequence[str]]] = LAYERS) -> int | None:
    """The index in ``layers`` of the longest entry naming ``module`` or a package holding it (None: unplaced)."""
    best: tuple[int, int] | None = None
    for index, (_, entries) in enumerate(layers):
        for entry in entries:
            # The root package's row holds only its __init__: every module is "under" it.
            under = module.startswith(entry + ".") and "." in entry
            if (module == entry or under) and (best is None or len(entry) > best[1]):
                best = (index, len(entry))
    return None if best is None else best[0]


def unplaced_modules(root: Path = PACKAGE, layers: Sequence[tuple[str, Sequence[str]]] = LAYERS) -> list[str]:
    return [m for m in modules(root) if layer_of(m, layers) is None]


def upward_imports(root: Path = PACKAGE, layers: Sequence[tuple[str, Sequence[str]]] = LAYERS) -> list[str]:
    problems = []
    known = modules(root)
    names = frozenset(known)
    for module, path in known.items():
        where = path.relative_to(root.parent)
        # ``python -m pi0cli`` is the CLI's second entry point, not library code.
        in_cli = module in ("pi0cli.cli", "pi0cli.__main__") or module.startswith("pi0cli.cli.")
        # Plugins named in a string (importlib.import_module, entry-point names) count too: the core names none.
        for line_no, text in enumerate(path.read_text().splitlines(), 1):
            if "pi0_embodiment_" in text:
                problems.append(f"{where}:{line_no} names the robot plugin package pi0_embodiment_*: the core "
                                "names no plugin")
        own = layer_of(module, layers)
        for target, line, deferred in imports(path, module, names):
            if not in_cli and (target == "pi0cli.cli" or target.startswith("pi0cli.cli.")):
                problems.append(f"{where}:{line} imports {target}: only pi0cli/cli may import the CLI")
            if target.split(".")[0].startswith("pi0_embodiment_"):
                problems.append(f"{where}:{line} imports the robot plugin {target}: the core imports no plugin")
            theirs = layer_of(target, layers) if target in known else None
            if own is not None and theirs is not None and theirs > own:
                how = "inside a function" if deferred else "at import time"
                problems.append(f"{where}:{line} ({layers[own][0]}) imports {target} ({layers[theirs][0]}) {how}: "
                                "a lower layer never imports a higher one; move the shared piece down")
    return sorted(set(problems))


def import_graph(root: Path = PACKAGE) -> Mapping[str, list[str]]:
    """Module -> the ``pi0cli`` modules it imports, at module level or deferred."""
    known = modules(root)
    names = frozenset(known)
    return {m: sorted({i.target for i in imports(p, m, names) if i.target in known and i.target != m})
            for m, p in known.items()}


def import_cycles(root: Path = PACKAGE) -> list[list[str]]:
    graph = import_graph(root)
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in graph:
        if start in state:
            continue
        path: list[str] = [start]
        stack = [iter(graph[start])]
        state[start] = 1
        while stack:  # iterative depth-first search
            for nxt in stack[-1]:
                if state.get(nxt) == 1:
                    cycles.append(path[path.index(nxt):] + [nxt])
                elif nxt not in state:
                    state[nxt] = 1
                    path.append(nxt)
                    stack.append(iter(graph[nxt]))
                    break
            else:
                state[path.pop()] = 2
                stack.pop()
    return cycles


def test_every_module_has_a_layer():
    assert unplaced_modules() == [], "add each module to LAYERS in tests/test_layering.py (and docs/architecture.md)"


def test_no_upward_imports():
    assert upward_imports() == []


def test_no_import_cycles():
    assert import_cycles() == []


def _write(root: Path, files: Mapping[str, str]) -> Path:
    pkg = root / "pi0cli"
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    return pkg


#: A synthetic package's layers: low < high < cli.
TOY_LAYERS = (("low", ("pi0cli", "pi0cli.low", "pi0cli.sub")), ("high", ("pi0cli.high", "pi0cli.a", "pi0cli.b")),
              ("cli", ("pi0cli.cli",)))


def test_the_checks_can_fail(tmp_path):
    """A library module importing the CLI (even deferred), a plugin import or name, an upward import at import
    time and inside a function, a module-level circle and a circle closed by a deferred import are all caught;
    imports under TYPE_CHECKING are not counted."""
    pkg = _write(tmp_path, {
        "__init__.py": "", "cli/__init__.py": "", "cli/console.py": "",
        "low.py": "from typing import TYPE_CHECKING\nimport pi0cli.high\nif TYPE_CHECKING:\n    import pi0cli.cli\n",
        "sub/__init__.py": "", "sub/d.py": "class C:\n    def m(self):\n        from .. import cli\n",
        "sub/e.py": "import importlib\nimportlib.import_module('pi0_embodiment_libero')\n",
        "sub/f.py": "def f():\n    from pi0cli.high import x\n",
        "sub/g.py": "import pi0_embodiment_aloha\n",
        "high.py": "import pi0cli.low\nx = 1\n",
        "a.py": "from pi0cli import b\n",
        "b.py": "def late():\n    from . import a\n",
    })
    problems = upward_imports(pkg, TOY_LAYERS)
    assert any("sub/d.py:3 imports pi0cli.cli" in p for p in problems), problems
    assert any("sub/d.py:3 (low) imports pi0cli.cli (cli) inside a function" in p for p in problems), problems
    assert any("low.py:2 (low) imports pi0cli.high (high) at import time" in p for p in problems), problems
    assert any("sub/f.py:2 (low) imports pi0cli.high (high) inside a function" in p for p in problems), problems
    assert any("sub/g.py:1 imports the robot plugin" in p for p in problems), problems
    assert any("sub/e.py:2 names the robot plugin" in p for p in problems), problems
    assert not any("low.py:4" in p for p in problems), problems  # TYPE_CHECKING: types only
    assert not any(p.startswith("pi0cli/high.py") for p in problems), problems  # downward is fine
    cycles = import_cycles(pkg)
    assert ["pi0cli.high", "pi0cli.low", "pi0cli.high"] in cycles, cycles
    assert ["pi0cli.a", "pi0cli.b", "pi0cli.a"] in cycles, cycles  # closed by a deferred import
    assert unplaced_modules(pkg, TOY_LAYERS) == []
    assert unplaced_modules(pkg, TOY_LAYERS[1:]) == ["pi0cli", "pi0cli.low", "pi0cli.sub", "pi0cli.sub.d",
                                                     "pi0cli.sub.e", "pi0cli.sub.f", "pi0cli.sub.g"]


def test_the_tree_passes_and_a_circle_there_would_not(tmp_path):
    """The real tree's graph has no circle; the same graph plus one deferred import back from the bottom
    (transforms importing the pipeline inside a function) has one."""
    import shutil

    assert import_cycles() == []
    copy = tmp_path / "pi0cli"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.json"))
    transforms = copy / "transforms.py"
    transforms.write_text(transforms.read_text() + "\n\ndef _late():\n    from pi0cli import pipeline\n")
    assert any(c[0] == "pi0cli.transforms" or "pi0cli.transforms" in c for c in import_cycles(copy))
    assert any("transforms.py" in p and "inside a function" in p for p in upward_imports(copy))
