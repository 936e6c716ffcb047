"""Raw LIBERO demonstrations (made with h5py in the documented layout) into LeRobot datasets: pi0 convert dataset
libero-hdf5."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

PI0 = [sys.executable, "-m", "pi0cli"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PI0, *args], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})


def _open(root: Path, repo: str = "local/x"):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset(repo, root=root, video_backend="pyav")


def _libero_file(path: Path, demos: int = 2, length: int = 6, **broken) -> None:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for d in range(demos):
            g = data.create_group(f"demo_{d}")
            g["actions"] = broken.get("actions", rng.normal(size=(length, 7)).astype(np.float32))
            g["obs/ee_pos"] = rng.normal(size=(length, 3))
            g["obs/ee_ori"] = rng.normal(size=(length, 3))
            g["obs/gripper_states"] = rng.normal(size=(length, 2))
            image = np.zeros((length, 128, 128, 3), np.uint8)
            image[:, 0, 0] = 255  # a marker that the 180-degree rotation moves to the bottom-right
            g["obs/agentview_rgb"] = image
            g["obs/eye_in_hand_rgb"] = image


@pytest.mark.slow
def test_libero_hdf5_converts_with_task_from_file_name(tmp_path):
    path = tmp_path / "KITCHEN_SCENE3_turn_on_the_stove_demo.hdf5"
    _libero_file(path)
    result = _run("convert", "dataset", "libero-hdf5", str(path), "--out", str(tmp_path / "ds"))
    assert result.returncode == 0, result.stderr
    ds = _open(tmp_path / "ds")
    assert ds.num_episodes == 2 and ds.num_frames == 12
    item = ds[0]
    assert item["task"] == "turn on the stove"
    image = item["image"].numpy()
    assert image.shape == (3, 256, 256) and image[:, -3:, -3:].mean() > image[:, :3, :3].mean()
    with h5py.File(path) as f:
        g = f["data/demo_0"]
        state = np.concatenate([g["obs/ee_pos"][0], g["obs/ee_ori"][0], g["obs/gripper_states"][0]])
    np.testing.assert_allclose(item["state"].numpy(), state, rtol=1e-6)


def test_corrupt_libero_input_names_the_demo(tmp_path):
    path = tmp_path / "task_demo.hdf5"
    _libero_file(path, actions=np.zeros((6, 6), np.float32))
    result = _run("convert", "dataset", "libero-hdf5", str(path), "--out", str(tmp_path / "ds"))
    assert result.returncode == 1
    assert "task_demo.hdf5 data/demo_0: 'actions' has shape (6, 6)" in result.stderr
