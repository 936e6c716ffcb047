"""Opening LeRobot v3 datasets written by lerobot's own writer: by root, by repo id, and the errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from datahelpers import HORIZON, LENGTHS, embodiment

from pi0cli.data.lerobot import DatasetError, LeRobotFrames, read_numeric, read_tasks, resolve_dataset
from pi0cli.data.synthetic import DEFAULT_TASKS, synthetic_frames

pytestmark = pytest.mark.slow


def test_frames_by_root_with_action_chunks_and_padding(datasets):
    emb = embodiment("ur5")
    frames = LeRobotFrames(datasets["ur5"], action_key=emb.action_key, action_horizon=HORIZON)
    assert len(frames) == sum(LENGTHS)
    item = frames[0]
    assert item["image"].dtype == np.uint8 and item["image"].shape == (3, 32, 32)
    assert item["actions"].shape == (HORIZON, emb.action_dim) and item["actions"].dtype == np.float32
    assert item["prompt"] == DEFAULT_TASKS[0]
    assert not item["actions_is_pad"].any()
    numeric = read_numeric(datasets["ur5"], ["actions"])
    # Last frame of episode 0: the chunk repeats that frame's action, the repeats are flagged.
    last = LENGTHS[0] - 1
    item = frames[last]
    assert item["actions_is_pad"].tolist() == [False, True, True, True]
    np.testing.assert_array_equal(item["actions"], np.repeat(numeric["actions"][last][None], HORIZON, axis=0))
    assert frames[LENGTHS[0]]["prompt"] == DEFAULT_TASKS[1]
    # Frame 2 of episode 1 (length 5): two real steps, then two padded ones.
    item = frames[LENGTHS[0] + 2]
    assert item["actions_is_pad"].tolist() == [False, False, False, True]
    np.testing.assert_array_equal(item["actions"][:3], numeric["actions"][LENGTHS[0] + 2 : LENGTHS[0] + 5])


def test_decoded_video_matches_written_frames(datasets):
    emb = embodiment("libero")
    frames = LeRobotFrames(datasets["libero"], action_key="actions")
    rng = np.random.default_rng(3)  # libero is the fourth built-in, written with seed 3
    cameras = [c for c in emb.cameras if c.key in emb.dataset_keys]
    written = synthetic_frames(emb, LENGTHS[0], rng, (32, 32), cameras)
    for t in (0, 4, 8):
        decoded = np.moveaxis(frames[t]["image"], 0, -1).astype(np.float32)
        error = np.abs(decoded - written[t]["image"].astype(np.float32)).mean()
        assert error < 12, error  # lossy AV1, but the same picture
    np.testing.assert_allclose(frames[3]["state"], written[3]["state"])


def test_repo_id_from_local_cache(datasets, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_LEROBOT_HOME", str(tmp_path / "home"))
    shutil.copytree(datasets["droid"], tmp_path / "home" / "someone" / "droid_demo")
    repo, root = resolve_dataset("someone/droid_demo")
    assert repo == "someone/droid_demo" and root == tmp_path / "home" / "someone" / "droid_demo"
    frames = LeRobotFrames("someone/droid_demo", action_key="actions", action_horizon=2)
    assert frames[0]["actions"].shape == (2, 8)
    assert read_tasks(root) == list(DEFAULT_TASKS[:2])


def test_missing_dataset_offline_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_LEROBOT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetError) as err:
        resolve_dataset("nobody/nothing")
    message = str(err.value)
    assert "nobody/nothing" in message and str(tmp_path / "home" / "nobody" / "nothing") in message
    assert "offline" in message and "\n" not in message


def test_not_a_dataset_and_old_format(datasets, tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(DatasetError, match="not a LeRobot dataset"):
        resolve_dataset(tmp_path / "plain")
    old = tmp_path / "old"
    shutil.copytree(datasets["ur5"] / "meta", old / "meta")
    info = json.loads((old / "meta" / "info.json").read_text())
    (old / "meta" / "info.json").write_text(json.dumps({**info, "codebase_version": "v2.1"}))
    with pytest.raises(DatasetError, match="v2.1 dataset; pi0 reads format v3.0"):
        LeRobotFrames(old, action_key="actions")
    with pytest.raises(DatasetError, match="no action column 'action'"):
        LeRobotFrames(datasets["ur5"], action_key="action")


def test_writing_a_dataset_leaves_the_environment_alone(tmp_path, monkeypatch):
    """A dataset write once set HF_HUB_OFFLINE=1 for the whole process: every later download failed."""
    import os

    from pi0cli.data.synthetic import write_synthetic_dataset
    from pi0cli.downloads import offline

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("PI0_OFFLINE", raising=False)
    def ours() -> dict[str, str]:  # torch and pygame set their own variables on import
        return {k: v for k, v in os.environ.items() if k.startswith(("HF_", "PI0_"))}

    before = ours()
    write_synthetic_dataset(tmp_path / "ds", embodiment("ur5"), episodes=1, frames=3)
    assert ours() == before and not offline()


def test_a_dataset_for_another_robot_fails_naming_the_columns(datasets):
    from pi0cli.data.lerobot import check_dataset_fits, read_info

    info = read_info(datasets["ur5"])
    check_dataset_fits(embodiment("ur5"), info, "ur5")
    with pytest.raises(DatasetError, match="has no column .*'joint_position'.*dataset_keys"):
        check_dataset_fits(embodiment("droid"), info, "ur5")
