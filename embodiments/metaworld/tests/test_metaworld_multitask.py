"""``pi0 record`` and ``pi0 eval`` over several Meta-World tasks: each episode's own instruction in the dataset,
failed scripted episodes counted (one task's failure does not drop the others), per-task / per-group / overall
success with Wilson intervals, the language ablation (``--prompt-from``), and one clear line for bad input."""

from __future__ import annotations

import dataclasses
import json
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


@pytest.mark.slow
def test_eval_two_tasks_reports_success_per_task_group_and_overall(tmp_path):
    from pi0_embodiment_metaworld import METAWORLD

    from pi0cli.evaluation.closed_loop import wilson_interval
    from pi0cli.testing import make_tiny_checkpoint

    make_tiny_checkpoint(tmp_path / "ckpt", METAWORLD)
    result = _pi0("eval", "metaworld", "--checkpoint", "ckpt", "--tasks", "reach,peg-insert-side",
                  "--episodes-per-task", "1", "--no-videos", "--out", "report", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["tasks"] == ["reach-v3", "peg-insert-side-v3"] and report["tasks_selector"] == "reach,peg-insert-side"
    assert set(report["per_task"]) == {"reach-v3", "peg-insert-side-v3"}
    for name, stats in report["per_task"].items():
        assert stats["episodes"] == 1 and [e["seed"] for e in stats["per_episode"]] == [1000]
        assert stats["prompt"] == stats["own_prompt"] == INSTRUCTIONS[name] and stats["prompt_from"] == name
        assert stats["success_rate_ci95"] == list(wilson_interval(stats["successes"], 1))
    groups = report["per_group"]
    assert {g: (s["tasks"], s["tasks_in_group"]) for g, s in groups.items()} == {
        "mt10": (["reach-v3", "peg-insert-side-v3"], 10), "mt50": (["peg-insert-side-v3", "reach-v3"], 50),
        "easy": (["reach-v3"], 28), "medium": (["peg-insert-side-v3"], 11)}
    successes = sum(s["successes"] for s in report["per_task"].values())
    assert groups["easy"]["episodes"] == 1 and groups["mt10"]["episodes"] == 2
    assert report["overall"] == {"episodes": 2, "successes": successes, "success_rate": successes / 2,
                                 "success_rate_ci95": list(wilson_interval(successes, 2)),
                                 "mean_return": report["overall"]["mean_return"]}
    assert report["provenance"]["seeds"] == [1000] and report["prompt_from"] is None
    assert "group easy (1 of 28 tasks)" in result.stdout and "overall" in result.stdout
    assert "peg-insert-side-v3 episode seed 1000" in result.stderr


class _PromptRecorder:
    """A fake policy: holds still and records the prompt of every request."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        self.prompts.append(obs["prompt"])
        return {"actions": np.zeros((50, 4), np.float32)}

    def reset(self) -> None:
        pass


@pytest.mark.slow
def test_prompt_from_shifted_gives_each_task_another_tasks_instruction(tmp_path, monkeypatch, capsys):
    from pi0cli.cli import main, sim_common

    policy = _PromptRecorder()
    observations: list[Any] = []

    def rollout(task: str, seed: int, act: Any, **kwargs: Any) -> Iterator[Any]:
        for frame in SIMULATOR.rollout(task, seed, act, **kwargs):
            observations.append(frame["observation"])
            yield frame

    watched = dataclasses.replace(SIMULATOR, rollout=rollout)
    embodiment, _ = sim_common.simulated("metaworld")
    monkeypatch.setattr(sim_common, "simulated", lambda name: (embodiment, watched))
    monkeypatch.setattr(sim_common, "open_policy", lambda *a, **k: (policy, {"fake": True}))
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "metaworld", "--server", "ws://unused:1", "--tasks", "reach,drawer-close",
              "--episodes-per-task", "1", "--prompt-from", "shifted", "--no-videos", "--out", str(tmp_path / "r")])
    out, err = capsys.readouterr()
    assert exit_.value.code == 0, err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["prompt_from"] == "shifted"
    assert {t: (s["prompt_from"], s["prompt"]) for t, s in report["per_task"].items()} == {
        "reach-v3": ("drawer-close-v3", INSTRUCTIONS["drawer-close-v3"]),
        "drawer-close-v3": ("reach-v3", INSTRUCTIONS["reach-v3"])}
    # The policy is asked once per chunk of 10 steps (under the broker), with the other task's instruction.
    steps = [s["per_episode"][0]["steps"] for s in report["per_task"].values()]
    chunks = [-(-n // 10) for n in steps]
    assert policy.prompts == [INSTRUCTIONS["drawer-close-v3"]] * chunks[0] + [INSTRUCTIONS["reach-v3"]] * chunks[1]
    # Without videos, only the observations the policy is asked with are rendered: one per chunk.
    assert len(observations) == sum(steps)
    assert sum(o.rendered for o in observations) == sum(chunks)
    assert "instruction of" in out


@pytest.mark.parametrize(("args", "says"), [
    (["--tasks", "mt11"], "unknown metaworld task or task group 'mt11'; did you mean 'mt10'?"),
    (["--tasks", "reach,drawer-close", "--episodes-per-task", "0"], "--episodes-per-task must be at least 1, got 0"),
    (["--tasks", "reach", "--prompt-from", "no-such-task"], "unknown --prompt-from task (shifted or a task of "
                                                            "metaworld) 'no-such-task'"),
    (["--tasks", "reach", "--prompt-from", "shifted"], "--prompt-from shifted needs another task with a different "
                                                       "instruction in the selection"),
])
def test_eval_bad_task_selection_is_one_clear_line(tmp_path, args, says):
    result = _pi0("eval", "metaworld", "--server", "ws://127.0.0.1:9", *args, cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith(f"Error: {says}"), line


@pytest.mark.slow
@pytest.mark.parametrize("carried", [True, False])
def test_recorded_rollouts_carry_each_tasks_prompt(tmp_path, monkeypatch, capsys, carried):
    """Rollouts of several tasks: each episode is written with the prompt its observations carry, or, for a
    simulator whose observations carry none, its task's instruction, which the policy is also asked with."""
    from pi0cli.cli import main, sim_common

    policy = _PromptRecorder()

    def rollout(task: str, seed: int, act: Any, **kwargs: Any) -> Iterator[Any]:
        def relabelled(obs: Any) -> Any:
            plain = {k: v for k, v in obs.items() if k != "prompt"}
            return {**plain, "prompt": f"custom {task}"} if carried else plain

        for frame in SIMULATOR.rollout(task, seed, lambda obs: act(relabelled(obs)), **{**kwargs, "max_steps": 3}):
            yield {**frame, "observation": relabelled(frame["observation"])}

    short = dataclasses.replace(SIMULATOR, rollout=rollout)
    embodiment, _ = sim_common.simulated("metaworld")
    monkeypatch.setattr(sim_common, "simulated", lambda name: (embodiment, short))
    monkeypatch.setattr(sim_common, "open_policy", lambda *a, **k: (policy, {"fake": True}))
    with pytest.raises(SystemExit) as exit_:
        main(["record", "metaworld", "--policy", "ws://unused:1", "--tasks", "reach,drawer-close",
              "--episodes-per-task", "1", "--out", str(tmp_path / "rollouts")])
    assert exit_.value.code == 0, capsys.readouterr().err
    expected = ([f"custom {t}" for t in ("reach-v3", "drawer-close-v3")] if carried else
                [INSTRUCTIONS["reach-v3"], INSTRUCTIONS["drawer-close-v3"]])
    assert _episode_tasks(tmp_path / "rollouts") == dict(enumerate(expected))
    assert policy.prompts == expected  # one chunk per 3-step episode
