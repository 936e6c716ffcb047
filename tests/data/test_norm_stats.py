"""`pi0 norm-stats`: exact against numpy over the same frames, the reference JSON, clear errors, --check."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from datahelpers import HORIZON, LENGTHS, embodiment

from pi0cli.data.lerobot import DatasetError, LeRobotFrames
from pi0cli.data.stats import check_norm_stats, compute_norm_stats, load_columns
from pi0cli.normstats import ExactStats, NormStats, load_norm_stats, save_norm_stats
from pi0cli.transforms import DeltaActions, KeepKeys, compose

pytestmark = pytest.mark.slow


def reference_values(name: str, root: Path) -> dict[str, np.ndarray]:
    """State and action-chunk values as the training loader sees them: lerobot's ``dataset[i]`` (delta
    timestamps, padded chunks), then the embodiment's inputs and delta actions, frame by frame."""
    emb = embodiment(name)
    frames = LeRobotFrames(root, action_key=emb.action_key, action_horizon=HORIZON)
    transform = compose(emb.repack, KeepKeys(emb.inputs, ()), DeltaActions(emb.delta_action_mask))
    states, actions = [], []
    for i in range(len(frames)):
        out = transform(frames[i])
        states.append(np.asarray(out["state"], np.float32))
        actions.append(np.asarray(out["actions"], np.float32))
    return {"state": np.stack(states), "actions": np.concatenate(actions)}


def assert_matches_numpy(stats: dict[str, NormStats], values: dict[str, np.ndarray]) -> None:
    for key in ("state", "actions"):
        x = values[key].astype(np.float64)  # float32 values, statistics in float64
        got = stats[key]
        np.testing.assert_allclose(got.mean, x.mean(axis=0), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got.std, x.std(axis=0), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got.q01, np.quantile(x, 0.01, axis=0), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got.q99, np.quantile(x, 0.99, axis=0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["aloha", "droid", "ur5"])  # transforms + delta; split state; delta mask
def test_equals_numpy_over_the_loaders_frames(name, datasets):
    stats = compute_norm_stats(embodiment(name), datasets[name], horizon=HORIZON)
    values = reference_values(name, datasets[name])
    assert len(values["actions"]) == sum(LENGTHS) * HORIZON
    assert_matches_numpy(stats, values)


def test_exact_stats_on_awkward_distributions():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 101, 4097):
        x = np.stack([
            rng.normal(size=n) * 1e4, np.round(rng.normal(size=n)), np.full(n, -0.0), rng.uniform(-1e-6, 1e-6, n),
        ], axis=1).astype(np.float32)
        stats = ExactStats(4)
        parts = np.array_split(x, 3)
        for part in parts:
            stats.update(part)
        for part in reversed(parts):
            stats.refine(part)
        assert_matches_numpy({"state": stats.result(), "actions": stats.result()}, {"state": x, "actions": x})


def _run(pi0_exe, *args, cwd=None):
    env = {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([pi0_exe, "norm-stats", *args], capture_output=True, text=True, env=env, cwd=cwd)


def test_cli_writes_reference_json(pi0_exe, datasets, tmp_path):
    result = _run(pi0_exe, "aloha", "--dataset", str(datasets["aloha"]), "--out", str(tmp_path / "assets"),
                  "--horizon", str(HORIZON))
    assert result.returncode == 0, result.stderr
    path = tmp_path / "assets" / "trossen" / "norm_stats.json"
    assert f"wrote {path}" in result.stdout
    raw = json.loads(path.read_text())
    # The reference reads only "norm_stats"; "computed_for" (what the stats are for) rides along after it.
    assert list(raw) == ["norm_stats", "computed_for"] and set(raw["norm_stats"]) == {"state", "actions"}
    assert raw["computed_for"]["embodiment"] == "aloha"
    for entry in raw["norm_stats"].values():
        assert list(entry) == ["mean", "std", "q01", "q99"]
        assert all(len(v) == 14 and all(isinstance(x, float) for x in v) for v in entry.values())
    assert path.read_text().startswith('{\n  "norm_stats": {\n    "state": {\n      "mean": [')  # indent 2
    assert_matches_numpy(load_norm_stats(path.parent), reference_values("aloha", datasets["aloha"]))


def test_cli_default_out_and_horizon(pi0_exe, datasets, tmp_path):
    result = _run(pi0_exe, "aloha_sim", "-d", str(datasets["aloha_sim"]), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "action chunks of 50" in result.stdout  # aloha_sim's default model is pi0 (horizon 50)
    assert (tmp_path / "assets" / "lerobot" / "aloha_sim_transfer_cube_human" / "norm_stats.json").is_file()


def _one_red_line(result) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_cli_missing_column_and_missing_dataset(pi0_exe, datasets, tmp_path):
    line = _one_red_line(_run(pi0_exe, "droid", "--dataset", str(datasets["ur5"]), "--out", str(tmp_path)))
    assert "no column 'joint_position'" in line and "dataset_keys" in line
    line = _one_red_line(_run(pi0_exe, "ur5", "--dataset", "someone/not_here", "--out", str(tmp_path)))
    assert "'someone/not_here' not found" in line and "local cache" in line


def _rewrite_actions(root: Path, row: int, value: float) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = next((root / "data").glob("chunk-*/file-*.parquet"))
    table = pq.read_table(file)
    column = table.column("actions").combine_chunks()
    values = column.flatten().to_numpy().copy().reshape(len(column), -1)
    values[row, 2] = value
    array = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel(), pa.float32()), values.shape[1])
    pq.write_table(table.set_column(table.column_names.index("actions"), "actions", array), file)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_cli_nan_or_inf_names_column_and_episode(pi0_exe, datasets, tmp_path, value):
    root = tmp_path / "broken"
    shutil.copytree(datasets["ur5"], root)
    _rewrite_actions(root, LENGTHS[0] + 2, value)
    line = _one_red_line(_run(pi0_exe, "ur5", "--dataset", str(root), "--out", str(tmp_path)))
    assert "column 'actions' holds NaN or infinity in episode 1 (frame 2" in line


def test_dims_that_disagree_with_the_contract(datasets):
    emb = dataclasses.replace(embodiment("ur5"), action_dim=8)
    with pytest.raises(DatasetError, match=r"column 'actions' of .* has 7 dims but embodiment 'ur5' expects 8"):
        load_columns(emb, datasets["ur5"])


def test_empty_dataset(pi0_exe, datasets, tmp_path):
    root = tmp_path / "empty"
    shutil.copytree(datasets["ur5"] / "meta", root / "meta")
    info = json.loads((root / "meta" / "info.json").read_text())
    (root / "meta" / "info.json").write_text(json.dumps({**info, "total_frames": 0, "total_episodes": 0}))
    line = _one_red_line(_run(pi0_exe, "ur5", "--dataset", str(root), "--out", str(tmp_path)))
    assert f"dataset {root} is empty (0 frames)" in line


def test_check_reports_clip_rate_constant_dims_and_drift(pi0_exe, datasets, tmp_path):
    emb = embodiment("ur5")
    own = compute_norm_stats(emb, datasets["ur5"], horizon=HORIZON)
    reports, _ = check_norm_stats(emb, datasets["ur5"], own, horizon=HORIZON)
    assert len(reports) == emb.state_dim + emb.action_dim
    # 14 frames: at most the minimum and the maximum fall outside [q01, q99].
    assert all(r.clip_rate <= 2 / 14 + 1e-9 and not r.drifted and not r.near_constant for r in reports)
    # Shift the mean of state dim 0 by 3 std, make actions dim 6 constant in the stats.
    state, actions = own["state"], own["actions"]
    moved = NormStats(state.mean + np.eye(emb.state_dim)[0] * 3 * state.std, state.std, state.q01, state.q99)
    q99 = actions.q99.copy()
    q99[6] = actions.q01[6]
    flat = NormStats(actions.mean, actions.std, actions.q01, q99)
    save_norm_stats({"state": moved, "actions": flat}, tmp_path / "old")
    result = _run(pi0_exe, "ur5", "--dataset", str(datasets["ur5"]), "--horizon", str(HORIZON),
                  "--check", str(tmp_path / "old"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["drifted"] == ["state[0]"] and report["near_constant"] == ["actions[6]"]
    dims = {(d["key"], d["dim"]): d for d in report["dims"]}
    assert dims[("actions", 6)]["clip_rate"] > 0.3 and dims[("state", 0)]["drift"] == pytest.approx(3.0)
    assert not (tmp_path / "assets").exists()
    table = _run(pi0_exe, "ur5", "--dataset", str(datasets["ur5"]), "--horizon", str(HORIZON), "--check",
                 str(tmp_path / "old" / "norm_stats.json"))
    assert table.returncode == 0 and "drifted by more than one std: state[0]" in table.stdout


def test_fast_vocab_that_does_not_fit_the_preset_fails_before_reading(pi0_exe, tmp_path):
    # The small CPU model leaves room for 575 FAST ids (1024 - 1 - 128 reserved - 320 text ids); 1024 used to
    # pass here and fail only when `pi0 train` built the tokenizer.
    line = _one_red_line(_run(pi0_exe, "aloha_sim", "--dataset", str(tmp_path / "not_read"), "--preset",
                              "pi0_fast_aloha_sim_small", "--fast-tokenizer", "--vocab-size", "1024", "--out",
                              str(tmp_path)))
    assert "--vocab-size 1024 does not fit preset 'pi0_fast_aloha_sim_small'" in line and "575" in line
