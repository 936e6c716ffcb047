"""``pi0 record`` and ``pi0 eval`` over several Meta-World tasks: each episode's own instruction in the dataset,
failed scripted episodes counted (one task's failure does not drop the others), per-task / per-group / overall
success with Wilson intervals, the language ablation (``--prompt-from``), and one clear line for bad input."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("metaworld", reason="metaworld is not installed (pip install -e embodiments/metaworld)")
pytest.importorskip("lerobot", reason="lerobot is not installed")

from pi0_embodiment_metaworld.sim import SIMULATOR  # noqa: E402
from pi0_embodiment_metaworld.tasks import INSTRUCTIONS  # noqa: E402

from pi0cli.simulator import Episode, ScriptFailed  # noqa: E402

PI0 = str(Path(sys.executable).parent / "pi0")


def _pi0(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PI0, *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "COLUMNS": "200", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")})


def _episode_tasks(root: Path) -> dict[int, str]:
    from pi0cli.data.lerobot import quiet_lerobot_import

    quiet_lerobot_import()
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dataset = LeRobotDataset(f"local/{root.name}", root=root, video_backend="pyav")
    tasks: dict[int, str] = {}
    for start, end in zip(dataset.meta.episodes["dataset_from_index"], dataset.meta.episodes["dataset_to_index"],
                          strict=True):
        first, last = dataset[int(start)], dataset[int(end) - 1]
        assert first["task"] == last["task"]
        tasks[int(first["episode_index"])] = first["task"]
    return tasks


@pytest.mark.slow
def test_record_two_tasks_writes_each_episodes_task_and_counts_failures(tmp_path):
    # peg-insert-side's expert fails on seed 7 and succeeds on 8; reach's succeeds on 7.
    result = _pi0("record", "metaworld", "--scripted", "--tasks", "peg-insert-side,reach", "--episodes-per-task", "1",
                  "--seed", "7", "--out", "demos", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert _episode_tasks(tmp_path / "demos") == {0: INSTRUCTIONS["peg-insert-side-v3"], 1: INSTRUCTIONS["reach-v3"]}
    assert "2 of 3 attempts succeeded, 1 failed" in result.stdout
    rows = {line.split()[1]: line.split()[2:6] for line in result.stdout.splitlines() if "-v3" in line}
    assert rows == {"peg-insert-side-v3": ["│", "1/1", "│", "2"], "reach-v3": ["│", "1/1", "│", "1"]}


@pytest.mark.slow
def test_record_keeps_the_other_tasks_when_one_fails(tmp_path, monkeypatch, capsys):
    from pi0cli.cli import main, sim_common

    real = SIMULATOR.scripted
    assert real is not None

    def scripted(task: str, num_episodes: int, *, start_seed: int = 0, **options: Any) -> Iterator[Episode]:
        if task == "reach-v3":
            raise ScriptFailed(f"only 0/{num_episodes} scripted reach-v3 episodes succeeded in 12 seeds")
        return real(task, num_episodes, start_seed=start_seed, **options)

    broken = dataclasses.replace(SIMULATOR, scripted=scripted)
    embodiment, _ = sim_common.simulated("metaworld")
    monkeypatch.setattr(sim_common, "simulated", lambda name: (embodiment, broken))
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_:
        main(["record", "metaworld", "--scripted", "--tasks", "reach,drawer-close", "--episodes-per-task", "1",
                  "--out", str(tmp_path / "demos")])
    out, err = capsys.readouterr()
    assert exit_.value.code == 0, err
    assert _episode_tasks(tmp_path / "demos") == {0: INSTRUCTIONS["drawer-close-v3"]}
    assert "reach-v3: 0 of 1 episodes recorded: only 0/1 scripted reach-v3 episodes succeeded" in " ".join(err.split())
    assert "wrote 1 episodes of 2 task(s)" in out


@pytest.mark.parametrize(("args", "says"), [
    (["--tasks", "reach,no-such-task"], "unknown metaworld task or task group 'no-such-task'"),
    (["--tasks", "mt11"], "unknown metaworld task or task group 'mt11'; did you mean 'mt10'?"),
    (["--tasks", "mt10", "--episodes-per-task", "0"], "--episodes-per-task must be at least 1, got 0"),
    (["--tasks", "mt10", "--task", "reach"], "pass --task NAME (one task) or --tasks SELECTOR (several), not both"),
    (["--tasks", "mt10", "-n", "2"], "with --tasks, say how many episodes each task gets: --episodes-per-task N"),
])
def test_record_bad_task_selection_is_one_clear_line(tmp_path, args, says):
    result = _pi0("record", "metaworld", "--scripted", *args, "--out", "demos", cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith(f"Error: {says}"), line
    assert not (tmp_path / "demos").exists()
