"""The README's plugin guide works as written: its files are extracted, installed and tested.

Every fenced block of README.md whose first line is ``# file: RELATIVE/PATH`` is written to that path under a
temporary directory; each extracted folder holding a ``pyproject.toml`` is pip-installed (as the guide says) into a
fresh venv, its robots must be listed by ``pi0 embodiments list`` and its tests must pass.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from plugin_helpers import run_pi0

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^(?P<indent>[ \t]*)```[\w-]*\n(?P<body>.*?)^(?P=indent)```", re.MULTILINE | re.DOTALL)
MARKER = re.compile(r"#\s*file:\s*(?P<path>\S+)")


def guide_files(text: str) -> dict[str, str]:
    """``{relative path: content}`` of the README's blocks marked with a ``# file:`` first line."""
    files = {}
    for match in FENCE.finditer(text):
        body = textwrap.dedent(match["body"])
        first, _, rest = body.partition("\n")
        marker = MARKER.fullmatch(first.strip())
        if marker is None:
            continue
        path = marker["path"]
        assert not Path(path).is_absolute() and ".." not in Path(path).parts, path
        assert path not in files, f"README marks two blocks as {path}"
        files[path] = rest
    return files


def test_the_guide_marks_the_files_of_a_complete_plugin():
    files = guide_files(README.read_text())
    names = {Path(p).name for p in files}
    assert {"pyproject.toml", "__init__.py"} <= names, sorted(files)
    assert any(Path(p).parts[-2] == "tests" for p in files), sorted(files)
    pyproject = next(content for path, content in files.items() if path.endswith("pyproject.toml"))
    for required in ("[build-system]", "version =", "[project.entry-points.pi0]"):
        assert required in pyproject


def test_extraction_dedents_list_item_blocks():
    text = "1. one\n\n   ```toml\n   # file: x/pyproject.toml\n   [a]\n   b = 1\n   ```\n\n```\nplain\n```\n"
    assert guide_files(text) == {"x/pyproject.toml": "[a]\nb = 1\n"}


@pytest.fixture(scope="module")
def guide_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("guide")
    for path, content in guide_files(README.read_text()).items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(content)
    return root


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv seeing this environment's packages through a .pth file (no network, no JAX reinstall)."""
    path = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    site_packages = next((path / "lib").glob("python*/site-packages"))
    (site_packages / "_pi0_test_base.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    return path


@pytest.mark.slow
def test_the_plugin_guide_installs_lists_and_passes_its_conformance_test(guide_dir, venv):
    python = str(venv / "bin" / "python")
    packages = sorted(p.parent for p in guide_dir.rglob("pyproject.toml"))
    assert packages
    for package in packages:
        # As the guide says (pip install DIR), minus the network: pi0 and hatchling are already installed.
        result = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                                 str(package)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    listed = run_pi0("embodiments", "list", "--json", python=python)
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["myarm"]["distribution"] == "pi0-embodiment-myarm", sorted(rows)
    shown = run_pi0("embodiments", "show", "myarm", python=python)
    assert shown.returncode == 0, shown.stderr
    for package in packages:
        tests = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                               capture_output=True, text=True, cwd=package)
        assert tests.returncode == 0, tests.stdout + tests.stderr
        assert " passed" in tests.stdout and "failed" not in tests.stdout
