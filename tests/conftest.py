"""Test-wide settings: nothing writes into the home directory, nothing reaches a hub."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _offline_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    home = tmp_path_factory.mktemp("hf-home")
    os.environ.setdefault("HF_HOME", str(home))
    os.environ.setdefault("HF_LEROBOT_HOME", str(home / "lerobot"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.pop("PI0_DEBUG", None)


@pytest.fixture(scope="session")
def pi0_exe() -> str:
    """The installed ``pi0`` console script of the interpreter running the tests."""
    exe = Path(sys.executable).parent / "pi0"
    if not exe.exists():
        pytest.fail(f"{exe} not found: install the project (pip install -r requirements-dev.txt)")
    return str(exe)
