"""Training core: loss falls, exact resume, LoRA freezing, checkpoint layout and loading."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import nnx
from train_helpers import fake_batches, tiny_config

from pi0cli.checkpoint import read_params
from pi0cli.models.config import preset
from pi0cli.models.params import export_flat, flatten, import_params
from pi0cli.models.pi0 import Pi0
from pi0cli.normstats import NormStats
from pi0cli.training import trainer
from pi0cli.training.checkpoints import Assets, read_assets

ASSETS = Assets({"toy": {"state": NormStats(mean=[0.0], std=[1.0]), "actions": NormStats(mean=[0.0], std=[1.0])}},
                {"model": "pi0_tiny"})


def _params(step_dir):
    return flatten(read_params(step_dir / "params"))


@pytest.mark.slow
def test_loss_falls_and_the_checkpoint_loads_back(tmp_path):
    config = tiny_config(num_train_steps=40, log_interval=5, save_interval=20)
    result = trainer.run(config, exp_dir=tmp_path / "exp", batches=fake_batches(config), assets=ASSETS)
    assert np.mean(result.losses[-5:]) < 0.5 * np.mean(result.losses[:5])
    assert sorted(p.name for p in (tmp_path / "exp").iterdir() if p.name.isdigit()) == ["40"]  # max_to_keep=1
    step = tmp_path / "exp" / "40"
    assert {p.name for p in step.iterdir()} >= {"params", "train_state", "assets"}
    assets = read_assets(step / "assets")
    assert assets.config == {"model": "pi0_tiny"} and set(assets.norm_stats) == {"toy"}
    model = Pi0(config.model, nnx.Rngs(123))
    import_params(model, read_params(step / "params"))
    loaded = export_flat(model)
    saved = _params(step)
    assert all(np.array_equal(np.asarray(loaded[k]), np.asarray(saved[k])) for k in saved)
    rows = [json.loads(line) for line in (tmp_path / "exp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 41))
    assert {"loss", "grad_norm", "param_norm", "steps_per_s"} <= set(rows[0])


@pytest.mark.slow
def test_resume_is_bit_for_bit(tmp_path):
    config = tiny_config(num_train_steps=8)
    straight = trainer.run(config, exp_dir=tmp_path / "a", batches=fake_batches(config), assets=ASSETS)
    trainer.run(config, exp_dir=tmp_path / "b", batches=fake_batches(config), assets=ASSETS, stop_after=4)
    resumed = trainer.run(config, exp_dir=tmp_path / "b", batches=fake_batches(config), assets=ASSETS, resume=True)
    assert resumed.losses == straight.losses[4:]
    a, b = _params(tmp_path / "a" / "8"), _params(tmp_path / "b" / "8")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)
    rows = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == list(range(1, 9))


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    config = tiny_config()
    with pytest.raises(trainer.TrainingError, match="no complete checkpoint to resume from"):
        trainer.run(config, exp_dir=tmp_path / "empty", batches=fake_batches(config), assets=ASSETS, resume=True)


@pytest.mark.slow
def test_lora_trains_only_adapters_and_unfrozen_projections(tmp_path):
    config = tiny_config(model=preset("pi0_tiny_lora"), freeze="lora_both", num_train_steps=3, ema_decay=None)
    model = Pi0(config.model, nnx.Rngs(config.seed))
    initial = {k: np.asarray(v) for k, v in export_flat(model).items()}
    static, state, _ = trainer.init_train_state(config, model)
    mu_paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state.opt_state[1][0].mu)}
    trained_paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state.params)}
    assert mu_paths == trained_paths
    for path in trained_paths:  # the optimizer holds nothing for frozen LLM weights
        assert "llm" not in path or "lora" in path, path

    trainer.run(config, exp_dir=tmp_path / "lora", batches=fake_batches(config), assets=ASSETS)
    final = _params(tmp_path / "lora" / "3")
    changed = {k for k in initial if not np.array_equal(initial[k], np.asarray(final[k]))}
    assert changed, "nothing trained"
    for key in changed:
        assert "lora" in key or "/llm/" not in f"/{key}", f"frozen weight {key} changed"
    assert any("lora" in k for k in changed) and any(k.startswith("action_") for k in changed)
    assert not any("/llm/" in f"/{k}" and "lora" not in k for k in changed)
