"""A third party adds a robot with `pip install pi0-embodiment-demo` and nothing else."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import pytest
from plugin_helpers import run_pi0, toy_plugin_source

PYPROJECT = """
[build-system]
requires = ["hatchling>=1.25"]
build-backend = "hatchling.build"

[project]
name = "pi0-embodiment-demo"
version = "0.3.0"
requires-python = ">=3.12"
dependencies = ["pi0"]

[project.entry-points.pi0]
demo = "pi0_embodiment_demo"

[tool.hatch.build.targets.wheel]
packages = ["pi0_embodiment_demo"]
"""

PLUGIN_TEST = """
from pi0cli.testing import check_embodiment
from pi0_embodiment_demo import ROBOT


def test_demo_conforms():
    check_embodiment(ROBOT)


def test_fixture_from_the_pytest_plugin(pi0_registry):
    assert not pi0_registry.embodiments
"""


@pytest.fixture(scope="module")
def demo_package(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pi0-embodiment-demo")
    (root / "pyproject.toml").write_text(PYPROJECT)
    (root / "pi0_embodiment_demo").mkdir()
    (root / "pi0_embodiment_demo" / "__init__.py").write_text(toy_plugin_source("demo"))
    (root / "tests").mkdir()
    (root / "tests" / "test_demo.py").write_text(textwrap.dedent(PLUGIN_TEST))
    return root


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtual environment that sees this environment's packages (pi0 and its dependencies) through a
    .pth file, so the test needs no network and does not reinstall JAX."""
    path = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    site_packages = next((path / "lib").glob("python*/site-packages"))
    (site_packages / "_pi0_test_base.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n"
    )
    return path


def _pip(venv: Path, *args: str) -> None:
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _listed(venv: Path) -> dict[str, dict]:
    result = run_pi0("embodiments", "list", "--json", python=str(venv / "bin" / "python"))
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


@pytest.mark.slow
def test_pip_install_adds_the_robot_and_uninstall_removes_it(demo_package, venv):
    assert "demo" not in _listed(venv)
    _pip(venv, "install", "--no-deps", "--no-build-isolation", "--no-index", str(demo_package))
    listed = _listed(venv)
    assert listed["demo"]["distribution"] == "pi0-embodiment-demo"
    assert listed["demo"]["version"] == "0.3.0"
    assert {"aloha", "droid", "libero", "ur5"} <= set(listed)

    # The plugin author's own tests use the conformance check shipped as a pytest plugin.
    tests = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            str(demo_package / "tests")], capture_output=True, text=True, cwd=demo_package)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "2 passed" in tests.stdout

    _pip(venv, "uninstall", "-y", "pi0-embodiment-demo")
    assert "demo" not in _listed(venv)


@pytest.mark.slow
def test_a_plugin_author_gets_a_tiny_checkpoint_for_their_robot(tmp_path):
    """pi0cli.testing.make_tiny_checkpoint(path, embodiment): a random-weight checkpoint a third party's robot
    loads and serves, without pi0's own tests or any download."""
    from pi0cli.policy import load_policy
    from pi0cli.testing import make_tiny_checkpoint

    namespace: dict[str, object] = {}
    exec(textwrap.dedent(toy_plugin_source("demo")), namespace)
    robot = namespace["ROBOT"]
    directory = make_tiny_checkpoint(tmp_path / "tiny", robot)
    policy = load_policy(directory, embodiment=robot)
    actions = policy.infer({**robot.example_observation(0), "prompt": "wave"})["actions"]
    assert actions.shape == (10, robot.action_dim) and actions.dtype == np.float32
