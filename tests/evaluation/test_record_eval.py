"""`pi0 record` writes scripted demonstrations as a LeRobot dataset; `pi0 eval` gives the same result through a
server as from the checkpoint directly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from net_helpers import free_port

PI0 = [sys.executable, "-m", "pi0cli"]
ENV = {**os.environ, "COLUMNS": "200", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}


def _pi0(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PI0, *args], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=900)


@pytest.mark.slow
def test_record_two_scripted_episodes(tmp_path):
    result = _pi0("record", "aloha_sim", "--scripted", "--episodes", "2", "--out", "demos", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/demos", root=tmp_path / "demos", video_backend="pyav")
    assert ds.num_episodes == 2 and ds.num_frames == 600  # transfer-cube episodes are 300 steps
    for index in (0, 299, 300, 599):  # video frames decode at both ends of both episodes
        item = ds[index]
        image = item["observation.images.top"].numpy()
        assert image.shape == (3, 224, 224) and image.std() > 0.01
        assert item["task"] == "Transfer cube"
    assert ds[599]["episode_index"].item() == 1
    state = np.stack([ds[i]["observation.state"].numpy() for i in range(0, 300, 50)])
    assert np.abs(np.diff(state, axis=0)).max() > 0.01  # the arms move


@pytest.mark.slow
def test_eval_through_a_server_matches_eval_of_the_checkpoint(tmp_path):
    from pi0cli.plugins.manager import load_registry
    from pi0cli.testing import make_tiny_checkpoint

    make_tiny_checkpoint(tmp_path / "ckpt", load_registry({}).embodiment("aloha_sim"))
    # Three steps per chunk: ~100 model calls per episode, so any drift in the noise stream shows.
    direct = _pi0("eval", "aloha_sim", "--checkpoint", "ckpt", "--episodes", "1", "--open-loop-steps", "3",
                  "--out", "direct", cwd=tmp_path)
    assert direct.returncode == 0, direct.stderr
    port = free_port()
    # One request per model call: the same noise as the checkpoint evaluated directly.
    server = subprocess.Popen([*PI0, "serve", "--checkpoint", "ckpt", "--embodiment", "aloha_sim",
                               "--host", "127.0.0.1", "--port", str(port), "--max-batch", "1"], cwd=tmp_path, env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        from pi0cli.client.policy import wait_until_ready

        wait_until_ready("127.0.0.1", port, timeout=300)
        served = _pi0("eval", "aloha_sim", "--server", f"ws://127.0.0.1:{port}", "--episodes", "1",
                      "--open-loop-steps", "3", "--out", "served", cwd=tmp_path)
        assert served.returncode == 0, served.stderr
    finally:
        server.terminate()
        server.wait(timeout=60)
    a = json.loads((tmp_path / "direct" / "report.json").read_text())
    b = json.loads((tmp_path / "served" / "report.json").read_text())
    assert a["success_rate"] == b["success_rate"]
    keys = ("seed", "success", "episode_return", "steps", "actions_sha256")
    assert [{k: e[k] for k in keys} for e in a["per_episode"]] == [{k: e[k] for k in keys} for e in b["per_episode"]]
    assert Path(a["per_episode"][0]["video"]).is_file()
    assert a["provenance"]["config"]["embodiment"] == "aloha_sim" and "packages" in a["provenance"]
    assert "server_metadata" in b["provenance"]
    assert a["open_loop_steps"] == b["open_loop_steps"] == 3


def test_eval_refuses_a_robot_without_a_simulator(tmp_path):
    result = _pi0("eval", "ur5", "--checkpoint", "x", cwd=tmp_path)
    assert result.returncode == 1 and "has no simulator" in result.stderr
    # libero names a simulator no installed plugin registers: refused with the robots that have one, before
    # the checkpoint is looked at (it used to say "unknown task None; tasks: transfer_cube, insertion").
    result = _pi0("eval", "libero", "--checkpoint", "x", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "embodiment 'libero' has no simulator" in lines[0]
    assert "aloha_sim" in lines[0].split("simulated robots: ")[1].split(", ")  # those shipped, others may be installed
    # Tasks are the chosen simulator's own.
    result = _pi0("eval", "aloha_sim", "--checkpoint", "x", "--task", "stack_blocks", cwd=tmp_path)
    assert result.returncode == 1 and "unknown gym_aloha task 'stack_blocks'; known: insertion, transfer_cube" in (
        result.stderr)
    result = _pi0("record", "aloha_sim", "--out", "d", cwd=tmp_path)
    assert result.returncode == 1 and "pass one source of actions" in result.stderr


def test_wilson_interval():
    from pi0cli.evaluation.closed_loop import wilson_interval

    low, high = wilson_interval(0, 10)
    assert low == 0.0 and 0.27 < high < 0.29  # the "rule of three"-like upper bound for 0/10
    low, high = wilson_interval(45, 50)
    assert 0.78 < low < 0.79 and 0.95 < high < 0.96
