"""The layering rule, read from the source with ``ast`` (no imports run):

- nothing under ``pi0cli/`` except ``pi0cli/cli/`` (and ``pi0cli/__main__.py``) imports ``pi0cli.cli`` (the
  library never reaches up into the CLI: it reports progress through callbacks and takes objects, not names);
- no core module imports a robot plugin (``pi0_embodiment_*``): built-in robots are plugins like any other;
- the module-level imports of ``pi0cli`` have no cycle (imports inside functions and under ``TYPE_CHECKING``
  are deliberate deferrals and are not counted).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pi0cli"


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


def imports(path: Path, module: str, *, module_level_only: bool,
            known: frozenset[str] = frozenset()) -> Iterator[tuple[str, int]]:
    """``(imported module, line)`` for every import in ``path``; with ``module_level_only``, only those that
    run when the module is imported (not in functions, not under ``if TYPE_CHECKING``). ``from pkg import
    mod`` of a ``known`` module counts as importing ``pkg.mod`` only (its package may still be initialising,
    which Python allows)."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"

    def visit(nodes: list[ast.stmt]) -> Iterator[tuple[str, int]]:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield alias.name, node.lineno
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(node, module, is_package)
                submodules = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known]
                if len(submodules) < len(node.names):
                    yield target, node.lineno
                for submodule in submodules:
                    yield submodule, node.lineno
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and module_level_only:
                continue
            elif isinstance(node, ast.If) and module_level_only and _is_type_checking(node.test):
                yield from visit(node.orelse)
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    children = getattr(node, field, None)
                    if isinstance(children, list):
                        yield from visit([c for c in children if isinstance(c, ast.stmt)] +
                                         [s for h in children if isinstance(h, ast.ExceptHandler) for s in h.body])

    yield from visit(tree.body)


def upward_imports(root: Path = PACKAGE) -> list[str]:
    problems = []
    known = modules(root)
    names = frozenset(known)
    for module, path in known.items():
        # ``python -m pi0cli`` is the CLI's second entry point, not library code.
        in_cli = module in ("pi0cli.cli", "pi0cli.__main__") or module.startswith("pi0cli.cli.")
        # Plugins named in a string (importlib.import_module, entry-point names) count too: the core names none.
        for line_no, text in enumerate(path.read_text().splitlines(), 1):
            if "pi0_embodiment_" in text:
                problems.append(f"{path.relative_to(root.parent)}:{line_no} names the robot plugin package "
                                "pi0_embodiment_*: the core names no plugin")
        # ``known``: ``from pi0cli import cli`` (or ``from .. import cli``) imports pi0cli.cli, not just pi0cli.
        for target, line in imports(path, module, module_level_only=False, known=names):
            where = f"{path.relative_to(root.parent)}:{line}"
            if not in_cli and (target == "pi0cli.cli" or target.startswith("pi0cli.cli.")):
                problems.append(f"{where} imports {target}: only pi0cli/cli may import the CLI")
            if target.split(".")[0].startswith("pi0_embodiment_"):
                problems.append(f"{where} imports the robot plugin {target}: the core imports no plugin")
    return sorted(set(problems))


def import_cycles(root: Path = PACKAGE) -> list[list[str]]:
    known = modules(root)
    names = frozenset(known)
    graph = {m: sorted({t for t, _ in imports(p, m, module_level_only=True, known=names) if t in known and t != m})
             for m, p in known.items()}
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


def test_no_upward_imports():
    assert upward_imports() == []


def test_no_import_cycles():
    assert import_cycles() == []


def test_the_checks_can_fail(tmp_path):
    """A library module importing the CLI, a plugin import and a two-module cycle are all caught."""
    pkg = tmp_path / "pi0cli"
    (pkg / "cli").mkdir(parents=True)
    for name in ("__init__.py", "cli/__init__.py", "cli/console.py"):
        (pkg / name).write_text("")
    (pkg / "training.py").write_text("def f():\n    from pi0cli.cli import console\n")
    (pkg / "sim.py").write_text("import pi0_embodiment_aloha\n")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nfrom pi0cli import b\n"
                              "if TYPE_CHECKING:\n    import x\n")
    (pkg / "b.py").write_text("from . import a\n")
    (pkg / "c.py").write_text("def g():\n    import pi0cli.a\n")  # deferred: no edge
    (pkg / "sub").mkdir()
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "d.py").write_text("class C:\n    def m(self):\n        from .. import cli\n")
    (pkg / "e.py").write_text("import importlib\nimportlib.import_module('pi0_embodiment_libero')\n")
    problems = upward_imports(pkg)
    assert any("training.py:2 imports pi0cli.cli" in p for p in problems), problems
    assert any("sub/d.py:3 imports pi0cli.cli" in p for p in problems), problems
    assert any("sim.py:1 imports the robot plugin" in p for p in problems), problems
    assert any("e.py:2 names the robot plugin" in p for p in problems), problems
    assert not any("c.py" in p or "a.py" in p for p in problems), problems
    assert import_cycles(pkg) == [["pi0cli.a", "pi0cli.b", "pi0cli.a"]]
