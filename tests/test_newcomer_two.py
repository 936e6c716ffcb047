"""The first hour, part two (issue 25): what a newcomer still trips over, driven through the real CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def _pi0(cwd: Path, *args: str, env: dict[str, str] | None = None, columns: int = 80,
         timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess with its output in pipes, at ``columns`` (a newcomer's terminal width)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PI0_")}
    full_env.update({"COLUMNS": str(columns), **(env or {})})
    return subprocess.run([sys.executable, "-m", "pi0cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=full_env, timeout=timeout)


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.fixture()
def aloha_stats(tmp_path: Path) -> Path:
    """A working directory holding aloha_sim norm stats under ./assets (as `pi0 norm-stats` leaves them)."""
    from pi0cli.normstats import save_norm_stats
    from pi0cli.plugins.manager import load_registry
    from pi0cli.testing import example_norm_stats

    emb = load_registry({}).embodiment("aloha_sim")
    save_norm_stats(example_norm_stats(emb), tmp_path / "assets" / emb.asset_id)
    return tmp_path


# ------------------------------------------------------------------------ 1. a hub dataset not fetched yet


@pytest.mark.parametrize("dataset", [(), ("--dataset", "someone/some_dataset")])
def test_an_unreachable_hub_dataset_is_one_line_saying_what_to_do(aloha_stats, dataset):
    """Online (no offline switch) with the hub unreachable: the dataset is fetched before anything reads its
    files, and the failure is one line naming the ways out."""
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{_dead_port()}", "HF_HUB_OFFLINE": "",
           "HF_LEROBOT_HOME": str(aloha_stats / "cache")}
    result = _pi0(aloha_stats, "train", "pi0_aloha_sim_tiny", "--steps", "5", *dataset, env=env)
    line = _one_error_line(result)
    repo = dataset[1] if dataset else "lerobot/aloha_sim_transfer_cube_human"
    assert f"dataset {repo!r} is not in the local cache" in line and "could not be downloaded" in line
    assert "pi0 record" in line and "--dataset PATH" in line and "go online" in line
    assert "tasks.parquet" not in result.stderr


# ------------------------------------------------------------------- 4. no noise around a one-line error


@pytest.fixture(scope="module")
def corrupt_checkpoint(tmp_path_factory) -> Path:
    """A tiny aloha_sim checkpoint whose parameter files were cut short (as by a full disk)."""
    from pi0cli.plugins.manager import load_registry
    from pi0cli.testing import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path_factory.mktemp("corrupt") / "ckpt", load_registry({}).embodiment("aloha_sim"))
    for data in (ckpt / "params").rglob("*"):
        if data.is_file() and data.parent.name == "d":
            data.write_bytes(data.read_bytes()[:100])
    return ckpt


@pytest.mark.parametrize("command", [
    ("eval", "aloha_sim", "--episodes", "1", "--checkpoint", "{ckpt}"),
    ("serve", "--embodiment", "aloha_sim", "--port", "0", "--checkpoint", "{ckpt}"),
    ("convert", "checkpoint", "{ckpt}", "--to", "pi0", "--out", "out"),
])
def test_a_corrupt_checkpoint_is_one_line_and_no_traceback(command, corrupt_checkpoint, tmp_path):
    """Orbax's failed read leaves tensorstore replies in flight; they used to print 'Event loop is closed'
    tracebacks (0 to ~100 per run) around the error. Three runs per command make a silent pass unlikely."""
    args = [part.format(ckpt=corrupt_checkpoint) for part in command]
    for _ in range(3):
        line = _one_error_line(_pi0(tmp_path, *args))
        assert "cannot read the parameters" in line
        assert not (tmp_path / "out").exists()
