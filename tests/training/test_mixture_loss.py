"""The action-dim mask of a mixture: padded action dims provably do not reach the flow-matching loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pi0cli.models.config import preset
from pi0cli.models.observation import Observation
from pi0cli.models.pi0 import Pi0

REAL = 3  # the robot's action dims; the tiny model has 8


def _inputs(cfg, batch: int = 2):
    rng = np.random.default_rng(0)
    h, w = cfg.image_resolution
    obs = Observation(
        images={k: jnp.asarray(rng.uniform(-1, 1, (batch, h, w, 3)), jnp.float32) for k in cfg.image_keys},
        image_masks={k: jnp.ones(batch, bool) for k in cfg.image_keys},
        state=jnp.asarray(rng.normal(size=(batch, cfg.action_dim)), jnp.float32),
        tokenized_prompt=jnp.asarray(rng.integers(1, 50, (batch, cfg.token_len)), jnp.int32),
        tokenized_prompt_mask=jnp.ones((batch, cfg.token_len), bool),
    )
    actions = jnp.asarray(rng.normal(size=(batch, cfg.action_horizon, cfg.action_dim)), jnp.float32)
    mask = jnp.broadcast_to(jnp.arange(cfg.action_dim) < REAL, (batch, cfg.action_dim))
    return obs, actions, mask


def _output_grads(model: Pi0, obs, actions, mask):
    """d loss / d (the projection that makes each action dim's prediction), per output column."""
    graphdef, params = nnx.split(model)

    def loss(p):
        m = nnx.merge(graphdef, p)
        return jnp.mean(m.compute_loss(jax.random.key(1), obs, actions, action_mask=mask))

    grads = jax.grad(loss)(params)
    return np.asarray(grads["action_out_proj"]["kernel"][...]), np.asarray(grads["action_out_proj"]["bias"][...])


def test_padded_action_dims_do_not_reach_the_loss():
    model = Pi0(preset("pi0_tiny"), nnx.Rngs(0))
    obs, actions, mask = _inputs(model.config)
    kernel, bias = _output_grads(model, obs, actions, mask)
    # The padded dims' predictions come only from these columns: a zero gradient there means their errors add
    # nothing to the loss (exactly, not approximately).
    assert np.all(kernel[:, REAL:] == 0) and np.all(bias[REAL:] == 0)
    assert np.abs(kernel[:, :REAL]).max() > 0 and np.abs(bias[:REAL]).max() > 0
    # Without the mask (the reference, and a single-dataset run) the padded dims are trained toward their noise.
    kernel_ref, bias_ref = _output_grads(model, obs, actions, None)
    assert np.abs(kernel_ref[:, REAL:]).max() > 0 and np.abs(bias_ref[REAL:]).max() > 0


def test_the_mask_averages_over_the_real_dims_and_all_true_is_the_reference():
    model = Pi0(preset("pi0_tiny"), nnx.Rngs(0))
    obs, actions, mask = _inputs(model.config)
    key = jax.random.key(2)
    reference = model.compute_loss(key, obs, actions)
    full = model.compute_loss(key, obs, actions, action_mask=jnp.ones_like(mask))
    np.testing.assert_allclose(np.asarray(full), np.asarray(reference), rtol=1e-6)


def test_a_mixture_batch_accumulates_exactly_and_reports_each_source():
    """Micro-batches carry the mask; the per-source losses are the same whichever way the batch ran."""
    import dataclasses

    from train_helpers import fake_batches, tiny_config

    from pi0cli.training import trainer

    config = tiny_config(batch_size=8)
    batch = next(fake_batches(config)(0))
    batch["action_mask"] = np.tile(np.arange(config.model.action_dim) < REAL, (8, 1))
    batch["source"] = np.array([0, 1, 1, 0, 1, 1, 1, 0], np.int32)
    results = []
    for accum in (1, 4):
        cfg = dataclasses.replace(config, grad_accum_steps=accum)
        static, state, tx = trainer.init_train_state(cfg, Pi0(cfg.model, nnx.Rngs(0)))
        step = jax.jit(trainer.make_train_step(static, tx, None, grad_accum_steps=accum, source_names=("a", "b")))
        results.append(step(state, batch)[1])
    one, four = results
    for key in ("loss", "grad_norm", "loss/a", "loss/b"):
        np.testing.assert_allclose(four[key], one[key], atol=1e-5, rtol=1e-5)
    # The batch loss is the example-weighted mean of the sources' losses (3 of a, 5 of b).
    np.testing.assert_allclose(one["loss"], (3 * one["loss/a"] + 5 * one["loss/b"]) / 8, rtol=1e-5)
    assert float(one["loss/a"]) != float(one["loss/b"])
