"""Raw ALOHA recordings (made with h5py in the documented layout) into LeRobot datasets: pi0 convert dataset
aloha-hdf5."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

PI0 = [sys.executable, "-m", "pi0cli"]


def _aloha_episode(path: Path, length: int = 12, compress: bool = False, **broken) -> None:
    rng = np.random.default_rng(len(path.name))
    with h5py.File(path, "w") as f:
        f.attrs["compress"] = compress
        f["/observations/qpos"] = broken.get("qpos", rng.normal(size=(length, 14)).astype(np.float32))
        f["/observations/qvel"] = rng.normal(size=(length, 14)).astype(np.float32)
        f["/action"] = broken.get("action", rng.normal(size=(length, 14)).astype(np.float32))
        for cam in broken.get("cameras", ("cam_high", "cam_left_wrist", "cam_right_wrist")):
            # Smooth images (video codecs keep those well): a gradient that moves with the frame index.
            ys, xs = np.mgrid[0:48, 0:64]
            frames = np.stack([np.stack([(xs * 4 + t * 5) % 256, ys * 5, np.full_like(xs, 128)], -1)
                               for t in range(length)]).astype(np.uint8)
            if compress:
                encoded = []
                for frame in frames:
                    buf = io.BytesIO()
                    Image.fromarray(frame).save(buf, format="JPEG", quality=95)
                    encoded.append(np.frombuffer(buf.getvalue(), np.uint8))
                padded = np.zeros((length, max(len(e) for e in encoded) + 16), np.uint8)
                for i, e in enumerate(encoded):
                    padded[i, : len(e)] = e
                f[f"/observations/images/{cam}"] = padded
            else:
                f[f"/observations/images/{cam}"] = frames


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PI0, *args], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})


def _open(root: Path, repo: str = "local/x"):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset(repo, root=root, video_backend="pyav")


@pytest.mark.slow
@pytest.mark.parametrize("compress", [False, True])
def test_aloha_hdf5_converts(tmp_path, compress):
    src = tmp_path / "fold_towel"
    src.mkdir()
    for i in range(2):
        _aloha_episode(src / f"episode_{i}.hdf5", compress=compress)
    result = _run("convert", "dataset", "aloha-hdf5", str(src), "--out", str(tmp_path / "ds"), "--fps", "50")
    assert result.returncode == 0, result.stderr
    ds = _open(tmp_path / "ds")
    assert ds.num_episodes == 2 and ds.num_frames == 24
    item = ds[13]
    assert item["task"] == "fold towel"
    assert tuple(item["observation.images.cam_high"].shape) == (3, 48, 64)
    with h5py.File(src / "episode_1.hdf5") as f:
        np.testing.assert_allclose(item["observation.state"].numpy(), f["/observations/qpos"][1], rtol=1e-6)
        original = f["/observations/images/cam_high"][1] if not compress else None
    if original is not None:  # video is lossy: close, not equal
        decoded = (item["observation.images.cam_high"].numpy().transpose(1, 2, 0) * 255)
        assert np.abs(decoded - original).mean() < 8
    # The result is a dataset the aloha robot can train on.
    from pi0cli.plugins.manager import load_registry

    aloha = load_registry({}).embodiment("aloha")
    row = {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in item.items()}
    aloha.validate_observation(aloha.repack(row))


@pytest.mark.parametrize("make, match", [
    (lambda p: _aloha_episode(p, qpos=np.zeros((12, 13), np.float32)), "'/observations/qpos' has shape \\(12, 13\\)"),
    (lambda p: _aloha_episode(p, action=np.zeros((11, 14), np.float32)), "'/action' has 11 frames"),
    (lambda p: _aloha_episode(p, cameras=("cam_left_wrist",)), "missing '/observations/images/cam_high'"),
    (lambda p: _aloha_episode(p, qpos=np.full((12, 14), np.nan, np.float32)), "NaN"),
    (lambda p: p.write_bytes(b"not hdf5"), "not a readable HDF5 file"),
])
def test_corrupt_aloha_input_is_one_clear_error(tmp_path, make, match):
    src = tmp_path / "src"
    src.mkdir()
    _aloha_episode(src / "episode_0.hdf5")
    make(src / "episode_1.hdf5")
    result = _run("convert", "dataset", "aloha-hdf5", str(src), "--out", str(tmp_path / "ds"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "episode_1.hdf5" in lines[0], result.stderr
    import re

    assert re.search(match, lines[0]), lines[0]
    assert not (tmp_path / "ds").exists() and not list(tmp_path.glob(".ds.partial*"))
