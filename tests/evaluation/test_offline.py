"""`pi0 eval --dataset`: action error of a checkpoint against recorded episodes, per dimension and horizon step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from plugin_helpers import run_pi0

from pi0cli.data.synthetic import write_synthetic_dataset
from pi0cli.errors import Pi0Error
from pi0cli.evaluation.offline import episode_indices, evaluate_offline, open_frames
from pi0cli.plugins.manager import load_registry

LENGTHS = (12, 9)


@pytest.fixture(scope="module")
def aloha():
    return load_registry({}).embodiment("aloha_sim")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, aloha) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("offline") / "demos", aloha, episodes=2, frames=LENGTHS,
                                   image_size=(24, 32))


class ZeroPolicy:
    """Predicts zeros: the error is then exactly the recorded actions' magnitude."""

    def __init__(self, horizon: int, dim: int):
        self.horizon, self.dim = horizon, dim
        self.seen: list[dict] = []

    def infer_batch(self, observations):
        self.seen += observations
        return [{"actions": np.zeros((self.horizon, self.dim))} for _ in observations]


def test_errors_cover_valid_frames_only(dataset, aloha):
    from pi0cli.data.lerobot import read_numeric

    horizon, stride = 4, 3
    columns = read_numeric(dataset, [aloha.action_key, "episode_index"])
    actions, episode = columns[aloha.action_key], columns["episode_index"]
    policy = ZeroPolicy(horizon, aloha.action_dim)
    report = evaluate_offline(open_frames(dataset, aloha, horizon, [0, 1]), policy, aloha, stride=stride,
                              batch_size=5)
    # By hand: frames 0, 3, 6, ... of the concatenated episodes; a chunk stops at its episode's end.
    rows: list[np.ndarray] = []
    per_step: list[list[float]] = [[] for _ in range(horizon)]
    for t in range(0, len(actions), stride):
        for h in range(horizon):
            if t + h < len(actions) and episode[t + h] == episode[t]:
                rows.append(np.abs(actions[t + h]))
                per_step[h].append(float(np.abs(actions[t + h]).mean()))
    errors = np.stack(rows)
    assert report["frames_compared"] == len(range(0, sum(LENGTHS), stride)) == len(policy.seen)
    assert report["horizon"] == horizon and report["episodes"] == [0, 1]
    np.testing.assert_allclose(report["mae"], errors.mean(), rtol=1e-6)
    np.testing.assert_allclose(report["mae_per_dim"], errors.mean(0), rtol=1e-6)
    np.testing.assert_allclose(report["mae_per_step"], [np.mean(s) for s in per_step], rtol=1e-6)
    np.testing.assert_allclose(report["rmse"], np.sqrt((errors ** 2).mean()), rtol=1e-6)
    # The policy saw robot observations with the episode's task, never the recorded actions.
    first = policy.seen[0]
    assert "actions" not in first and first["prompt"] and set(first) >= {"state", "images"}


def test_episode_selection(dataset):
    assert episode_indices(dataset, 1, None) == [1]  # held out: the last episodes by default
    assert episode_indices(dataset, None, None) == [0, 1]
    assert episode_indices(dataset, 1, 0) == [0]
    with pytest.raises(Exception, match="episodes 0-1"):
        episode_indices(dataset, 3, None)


@pytest.mark.slow
def test_cli_reports_and_plots(tmp_path, dataset, aloha):
    from pi0cli.testing import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "ckpt", aloha)
    result = run_pi0("eval", "--dataset", str(dataset), "--checkpoint", str(ckpt), "--episodes", "1", "--stride", "2",
                     "--out", str(tmp_path / "offline"))
    assert result.returncode == 0, result.stderr
    assert "MAE per horizon step" in result.stdout and "MAE per action dim" in result.stdout
    report = json.loads((tmp_path / "offline" / "offline_report.json").read_text())
    assert report["episodes"] == [1] and report["frames_compared"] == len(range(0, LENGTHS[1], 2))
    assert len(report["mae_per_dim"]) == aloha.action_dim and report["horizon"] == 10
    assert report["provenance"]["embodiment"] == "aloha_sim" and report["mae"] > 0
    plot = Path(report["plots"][0])
    assert plot.name == "episode_0001.png" and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors(tmp_path, dataset):
    cases = {
        ("eval", "--dataset", str(dataset)): "needs --checkpoint",
        ("eval", "--dataset", str(tmp_path / "nope"), "--checkpoint", str(tmp_path)): "does not say which robot",
        ("eval", "aloha_sim", "--dataset", str(tmp_path / "nope"), "--checkpoint", str(tmp_path)): "not found",
        ("eval", "aloha_sim", "--dataset", str(dataset), "--checkpoint", str(tmp_path), "--episodes", "5"):
            "episodes 0-1",
    }
    for args, needle in cases.items():
        result = run_pi0(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and needle in lines[0], (args, result.stderr)
    usage = run_pi0("eval")
    assert usage.returncode == 2 and "--dataset" in usage.stderr


def test_a_frame_that_is_not_a_valid_observation_is_named(dataset, aloha):
    """Dataset frames go through the embodiment's one observation check, as a served request would."""
    frames = open_frames(dataset, aloha, 4, [0, 1])
    state_column = aloha.dataset_keys["state"]

    class NaNFrame:
        def __len__(self):
            return len(frames)

        def __getitem__(self, index):
            row = frames[index]
            return row | {state_column: np.full_like(row[state_column], np.nan)} if index == 3 else row

    with pytest.raises(Pi0Error, match=r"episode 0 frame 3 .* 'state' holds NaN"):
        evaluate_offline(NaNFrame(), ZeroPolicy(4, aloha.action_dim), aloha, stride=3)
