"""Policy checkpoints and the Policy itself, with a tiny random-weight pi0 for ALOHA sim."""

from __future__ import annotations

import json
import shutil
from typing import Any, cast

import numpy as np
import pytest
from obs_helpers import sim_obs

from pi0cli.checkpoint import CheckpointError, config_from_dict, save_policy_checkpoint
from pi0cli.errors import ObservationError
from pi0cli.normstats import load_norm_stats
from pi0cli.policy import load_policy


@pytest.fixture(scope="module")
def policy(tiny_checkpoint, aloha_sim):
    policy = load_policy(tiny_checkpoint, embodiment=aloha_sim, batch_sizes=(1, 2))
    policy.warmup()
    return policy


def test_checkpoint_layout(tiny_checkpoint, aloha_sim):
    assert (tiny_checkpoint / "params").is_dir()
    stats = load_norm_stats(tiny_checkpoint / "assets" / aloha_sim.asset_id)
    assert stats["state"].dim == 14 and stats["actions"].dim == 14
    config = json.loads((tiny_checkpoint / "pi0_config.json").read_text())
    assert config["embodiment"] == "aloha_sim" and config["asset_id"] == aloha_sim.asset_id
    model = config_from_dict(config["model"])
    assert model.action_dim == 32 and model.action_horizon == 10
    assert not [p for p in tiny_checkpoint.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_infer_returns_the_robot_action_chunk(policy):
    result = policy.infer(sim_obs(0))
    assert result["actions"].shape == (10, 14) and result["actions"].dtype == np.float32
    assert np.isfinite(result["actions"]).all()
    assert result["policy_timing"]["infer_ms"] > 0


def test_infer_batch_pads_and_splits_and_isolates_failures(policy):
    observations = [sim_obs(1), {"state": np.zeros(14, np.float32)}, sim_obs(2), sim_obs(3)]
    results = policy.infer_batch(observations, return_exceptions=True)
    assert isinstance(results[1], ObservationError)
    for r in (results[0], results[2], results[3]):
        assert r["actions"].shape == (10, 14)
    assert {r["policy_timing"]["padded_batch_size"] for r in (results[0], results[3])} <= {1, 2}
    with pytest.raises(ObservationError):
        policy.infer_batch(observations)


def test_warmup_consumes_no_noise(tiny_checkpoint, aloha_sim):
    """A warmed-up (served) policy and a cold in-process one draw the same noise for the same request sequence."""
    cold = load_policy(tiny_checkpoint, embodiment=aloha_sim, batch_sizes=(1,))
    warm = load_policy(tiny_checkpoint, embodiment=aloha_sim, batch_sizes=(1, 2))
    warm.warmup()
    first = [cold.infer(sim_obs(5))["actions"], warm.infer(sim_obs(5))["actions"]]
    np.testing.assert_array_equal(*first)
    np.testing.assert_array_equal(cold.infer(sim_obs(6))["actions"], warm.infer(sim_obs(6))["actions"])
    # The noise does advance between requests: the same observation again gets a different chunk.
    assert not np.array_equal(cold.infer(sim_obs(5))["actions"], first[0])


def test_default_prompt_is_used_when_the_request_has_none(policy):
    obs = {k: v for k, v in sim_obs(4).items() if k != "prompt"}
    assert policy.infer(obs)["actions"].shape == (10, 14)  # the checkpoint's embodiment default ("Transfer cube")


def test_reference_checkpoint_needs_a_model_name(tiny_checkpoint, tmp_path, aloha_sim):
    ref = tmp_path / "openpi_ckpt"
    shutil.copytree(tiny_checkpoint / "params", ref / "params")
    shutil.copytree(tiny_checkpoint / "assets", ref / "assets")
    with pytest.raises(CheckpointError, match="--model"):
        load_policy(ref, embodiment=aloha_sim)
    model = config_from_dict(json.loads((tiny_checkpoint / "pi0_config.json").read_text())["model"])
    policy = load_policy(ref, embodiment=aloha_sim, model=model, tokenizer=tiny_checkpoint / "tokenizer.model")
    assert policy.metadata == dict(aloha_sim.metadata)
    with pytest.raises(CheckpointError, match="params/"):
        load_policy(tmp_path, embodiment=aloha_sim, model=model)


def test_training_step_layout_loads(tiny_checkpoint, tmp_path):
    step = tmp_path / "exp" / "3000"
    shutil.copytree(tiny_checkpoint, step)
    saved = json.loads((step / "pi0_config.json").read_text())
    (step / "pi0_config.json").unlink()
    (step / "assets" / "pi0_config.json").write_text(json.dumps(
        {"name": "pi0_aloha_sim_tiny", "embodiment": "aloha_sim", "model": saved["model"], "delta_action_mask": None,
         "default_prompt": "Transfer cube", "policy_metadata": {"reset_pose": [1.0]}}))
    from pi0_embodiment_aloha import ALOHA_SIM

    policy = load_policy(step, embodiment=ALOHA_SIM)
    assert policy.metadata["reset_pose"] == [1.0]


def test_save_refuses_to_overwrite(tiny_checkpoint, aloha_sim):
    with pytest.raises(CheckpointError, match="already exists"):
        save_policy_checkpoint(tiny_checkpoint, params={}, model_config=cast(Any, None), embodiment="aloha_sim",
                               norm_stats={}, asset_id="x")


def test_non_finite_actions_are_never_returned(policy, monkeypatch):
    """Issue 14: a finite but huge state came back as NaN actions; now an error names the likely cause and the
    request's batchmates are still served. (This tiny model stays finite, so its output is made to overflow.)"""
    from pi0cli.policy.policy import NonFiniteActionsError

    sample = policy._sample

    def overflowing(rng, batch):
        actions = np.asarray(sample(rng, batch))
        huge = np.abs(np.asarray(batch["state"])).max(axis=-1) > 1e6
        return np.where(huge[:, None, None], np.float32(np.nan), actions)

    monkeypatch.setattr(policy, "_sample", overflowing)
    state = np.zeros(14, np.float32)
    state[3] = 1e12  # below the 1e18 overflow refusal: it reaches the model
    huge, fine = policy.infer_batch([sim_obs() | {"state": state}, sim_obs()], return_exceptions=True)
    assert isinstance(huge, NonFiniteActionsError), huge
    assert "norm stats" in str(huge) and "dimension 3" in str(huge)
    assert np.isfinite(fine["actions"]).all()


def test_a_checkpoint_can_be_served_without_its_state(tiny_checkpoint, aloha_sim):
    visible = load_policy(tiny_checkpoint, embodiment=aloha_sim, batch_sizes=(1,))
    # This checkpoint never trained without its state (state_dropout 0): allowed, with a warning saying so.
    with pytest.warns(UserWarning, match="state_dropout 0"):
        hidden = load_policy(tiny_checkpoint, embodiment=aloha_sim, batch_sizes=(1,), state_input="hidden")
    same = load_policy(tiny_checkpoint, embodiment=aloha_sim, batch_sizes=(1,), state_input="visible")
    obs = sim_obs(7)
    seen, blind, again = (p.infer(obs)["actions"] for p in (visible, hidden, same))
    np.testing.assert_array_equal(seen, again)  # "visible" is what the checkpoint already does
    assert blind.shape == seen.shape and not np.allclose(blind, seen)
