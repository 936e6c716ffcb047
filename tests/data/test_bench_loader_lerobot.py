"""The LeRobot baseline of ``benchmarks/bench_loader.py``: lerobot's LeRobotDataset in a torch DataLoader."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from datahelpers import HORIZON, LENGTHS, embodiment

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_loader.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_loader", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lerobot_baseline_batches_have_the_right_shapes(datasets):
    import torch

    bench = load_bench()
    emb = embodiment("libero")
    last = LENGTHS[0] - 1  # the last frame of episode 0: its chunk runs past the episode's end
    batches = [[0, 1, last], [LENGTHS[0], LENGTHS[0] + 1]]
    loader, backend = bench.lerobot_loader(datasets["libero"], emb.action_key, HORIZON, batches, workers=0)
    assert backend in ("pyav", "torchcodec")
    got = list(loader)
    assert [b["index"].tolist() for b in got] == batches  # the frames asked for, in that order
    first = got[0]
    assert first[emb.action_key].shape == (3, HORIZON, emb.action_dim)
    assert first[f"{emb.action_key}_is_pad"].tolist()[2] == [False] + [True] * (HORIZON - 1)
    cameras = [emb.dataset_keys[c.key] for c in emb.cameras if c.key in emb.dataset_keys]
    assert cameras
    for key in cameras:
        assert first[key].shape == (3, 3, 32, 32) and first[key].dtype == torch.float32  # lerobot's default
    assert len(first["task"]) == 3 and isinstance(first["task"][0], str)
    assert got[1][emb.action_key].shape == (2, HORIZON, emb.action_dim)


def test_the_benchmark_runs_end_to_end_and_reports_every_ratio(tmp_path):
    """A miniature run of the whole benchmark: every loader of a round, the ratios the docs quote, the JSON."""
    import json

    out = tmp_path / "loader.json"
    results = load_bench().main(["--quick", "--episodes", "2", "--frames", "6", "--image-size", "32", "--steps", "2",
                                 "--batch-size", "2", "--workers", "1", "--repeats", "1", "--out", str(out)])
    for key in ("baseline", "thread", "process", "lerobot", "thread_via_lerobot", "mixture", "thread_vs_lerobot",
                "process_vs_lerobot", "direct_speedup", "mixture_vs_single"):
        assert results[key] > 0, key
    assert json.loads(out.read_text())["results"] == results
