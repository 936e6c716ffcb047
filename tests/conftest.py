"""Fixtures shared by the core tests: the ``pi0`` executable, the ALOHA-sim embodiment and a tiny checkpoint
(the session-wide settings, which the robot plugins' tests need too, are in the root conftest.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def pi0_exe() -> str:
    """The installed ``pi0`` console script of the interpreter running the tests."""
    exe = Path(sys.executable).parent / "pi0"
    if not exe.exists():
        pytest.fail(f"{exe} not found: install the project (pip install -r requirements-dev.txt)")
    return str(exe)


@pytest.fixture(scope="session")
def aloha_sim():
    from pi0_embodiment_aloha import ALOHA_SIM

    return ALOHA_SIM


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, aloha_sim):
    """A random-weight tiny pi0 checkpoint for ALOHA sim (action_dim 32, horizon 10)."""
    from pi0cli.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_aloha_sim", aloha_sim)
