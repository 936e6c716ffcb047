"""Shell completion: the committed scripts are current, and completing through the program works."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pi0cli.cli.completion import SHELLS, render

COMPLETIONS = Path(__file__).resolve().parents[1] / "completions"


@pytest.mark.parametrize("shell", sorted(SHELLS))
def test_committed_completion_scripts_are_current(shell):
    committed = (COMPLETIONS / SHELLS[shell]).read_text()
    assert committed == render(shell), (
        f"completions/{SHELLS[shell]} is stale: run `python -m pi0cli.cli.completion` and commit the result"
    )


def _complete_bash(pi0_exe: str, words: str) -> list[str]:
    env = {**os.environ, "_PI0_COMPLETE": "complete_bash", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}
    result = subprocess.run([pi0_exe], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_bash_completion_of_subcommands_and_embodiment_names(pi0_exe):
    assert "embodiments" in _complete_bash(pi0_exe, "pi0 emb")
    assert _complete_bash(pi0_exe, "pi0 embodiments show al") == ["aloha", "aloha_sim"]
    assert _complete_bash(pi0_exe, "pi0 embodiments ") == ["list", "show"]


def test_bash_script_loads_in_bash():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not installed")
    subprocess.run([bash, "-n", str(COMPLETIONS / "pi0.bash")], check=True)
