"""benchmarks/bench_rollout_smoothness.py: its measures on hand-made chunks and a lerobot-written dataset."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_rollout_smoothness as bench  # noqa: E402


def test_steps_within_chunks_and_at_boundaries_are_told_apart():
    ramp = np.arange(4.0)[:, None] * np.ones((1, 2))  # steps of 1 within each chunk
    episode = [ramp, ramp + 10.0]  # the second chunk starts 7 above where the first ended
    result = bench.measure([episode, [ramp]], executed=4)
    # Hand computation: 1 within every chunk; one boundary, |10 - 3| = 7.
    assert result["mean_step_within_chunks"] == 1.0 and result["mean_step_at_boundaries"] == 7.0
    assert result["per_chunk_mean_step"] == [[1.0, 1.0], [1.0]]
    # Only the executed steps count: executing 2 of 4 makes the boundary |10 - 1| = 9.
    assert bench.measure([episode], executed=2)["mean_step_at_boundaries"] == 9.0


def test_demo_actions_are_split_by_episode(tmp_path, aloha_sim):
    from pi0cli.data.synthetic import write_synthetic_dataset

    root = write_synthetic_dataset(tmp_path / "demos", aloha_sim, episodes=2, frames=6, seed=1,
                                   tasks=("transfer cube",))
    episodes = bench.demo_actions(Path(root))
    assert [e.shape for e in episodes] == [(6, aloha_sim.action_dim)] * 2
