"""Scripted Meta-World demonstrations written as LeRobot v3 datasets, read back with lerobot's own
``LeRobotDataset``: the right task string on every episode, LeRobot's Meta-World columns."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("metaworld", reason="metaworld is not installed (pip install -e embodiments/metaworld)")
pytest.importorskip("lerobot", reason="lerobot is not installed")

from pi0_embodiment_metaworld import METAWORLD  # noqa: E402
from pi0_embodiment_metaworld.sim.episodes import scripted_episodes  # noqa: E402
from pi0_embodiment_metaworld.tasks import INSTRUCTIONS  # noqa: E402


def _open(root: Path):  # noqa: ANN202 - lerobot's type
    from pi0cli.data.lerobot import quiet_lerobot_import

    quiet_lerobot_import()
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset(f"local/{root.name}", root=root, video_backend="pyav")


def _episode_tasks(dataset) -> dict[int, str]:  # noqa: ANN001
    tasks: dict[int, str] = {}
    for start in dataset.meta.episodes["dataset_from_index"]:
        item = dataset[int(start)]
        tasks[int(item["episode_index"])] = item["task"]
    return tasks


@pytest.mark.slow
def test_multi_task_demonstrations_carry_their_task(tmp_path):
    from pi0cli.data.writer import DatasetWriter, embodiment_features, frame_from_observation

    root = tmp_path / "mt"
    lengths = []
    with DatasetWriter(root, fps=METAWORLD.control_hz, features=embodiment_features(METAWORLD),
                       robot_type=METAWORLD.name) as writer:
        for task in ("reach-v3", "pick-place-v3"):
            for episode in scripted_episodes(task, 1, start_seed=3):
                for frame in episode.frames:
                    writer.add_frame(frame_from_observation(METAWORLD, frame["observation"], frame["action"]),
                                     episode.prompt)
                writer.save_episode()
                lengths.append(episode.length)
    dataset = _open(root)
    assert dataset.meta.fps == 80 and dataset.meta.total_episodes == 2
    assert _episode_tasks(dataset) == {0: INSTRUCTIONS["reach-v3"], 1: INSTRUCTIONS["pick-place-v3"]}
    assert list(dataset.meta.episodes["length"]) == lengths
    item = dataset[0]
    assert item["observation.image"].shape == (3, 224, 224) and item["observation.state"].shape == (4,)
    assert item["action"].shape == (4,) and float(np.abs(item["action"].numpy()).max()) <= 1.0


@pytest.mark.slow
def test_pi0_record_writes_a_dataset_lerobot_opens(tmp_path):
    root = tmp_path / "demos"
    pi0 = Path(sys.executable).parent / "pi0"
    result = subprocess.run([str(pi0), "record", "metaworld", "--scripted", "--task", "drawer-close", "-n", "1",
                             "--seed", "0", "--out", str(root)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "1 of 1 attempts succeeded" in result.stdout
    dataset = _open(root)
    assert dataset.meta.robot_type == "metaworld"
    assert _episode_tasks(dataset) == {0: INSTRUCTIONS["drawer-close-v3"]}
    assert set(METAWORLD.dataset_keys.values()) <= set(dataset.meta.features)


@pytest.mark.slow
def test_pi0_eval_runs_a_policy_in_metaworld(tmp_path):
    import json
    import os

    from pi0cli.testing import make_tiny_checkpoint

    make_tiny_checkpoint(tmp_path / "ckpt", METAWORLD)
    result = subprocess.run([str(Path(sys.executable).parent / "pi0"), "eval", "metaworld", "--checkpoint", "ckpt",
                             "--task", "window-open", "-n", "1", "--no-videos", "--out", "report"],
                            capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["task"] == "window-open-v3" and report["episodes"] == 1
    episode = report["per_episode"][0]
    assert episode["seed"] == 1000 and 0 < episode["steps"] <= 500
    assert report["provenance"]["packages"]["metaworld"] == "3.0.0"
