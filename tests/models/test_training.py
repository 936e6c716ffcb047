"""Training: freeze filters and overfitting a fixed batch with a tiny model."""

from __future__ import annotations

import time

import jax  # a hard dependency: a broken install must fail, not skip
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from model_helpers import make_obs, tiny_model

from pi0cli.errors import UnknownNameError
from pi0cli.models import config as C
from pi0cli.models.freeze import freeze_mode_for, trainable_filter
from pi0cli.models.params import flatten
from pi0cli.models.pi0 import Pi0


def _trainable_keys(model, mode, **kw):
    state = nnx.state(model, trainable_filter(mode, **kw))
    return set(flatten(nnx.to_pure_dict(state)))


@pytest.fixture(scope="module")
def lora_model():
    return tiny_model("pi0_tiny_lora")


def test_freeze_filters(lora_model):
    all_keys = set(flatten(nnx.to_pure_dict(nnx.state(lora_model, nnx.Param))))
    llm = {k for k in all_keys if "/llm/" in k}
    expert = {k for k in llm if any(p.endswith("_1") for p in k.split("/"))}
    lora = {k for k in all_keys if "lora" in k}
    img = {k for k in all_keys if "/img/" in k}
    assert lora and expert and img
    assert _trainable_keys(lora_model, "full") == all_keys
    assert _trainable_keys(lora_model, "lora_both") == (all_keys - llm) | lora
    assert _trainable_keys(lora_model, "lora_vlm") == (all_keys - (llm - expert)) | lora
    assert _trainable_keys(lora_model, "lora_expert") == (all_keys - expert) | lora
    assert _trainable_keys(lora_model, "full", freeze_vision=True) == all_keys - img
    assert _trainable_keys(lora_model, "lora_both", freeze_vision=True) == (all_keys - llm - img) | lora
    assert freeze_mode_for(lora_model.config) == "lora_both"
    assert freeze_mode_for(C.preset("pi0")) == "full"
    assert freeze_mode_for(C.preset("pi0", paligemma_variant="gemma_2b_lora")) == "lora_vlm"
    with pytest.raises(UnknownNameError):
        trainable_filter("lora_everything")


def test_lora_step_changes_only_trainable(lora_model):
    model = nnx.clone(lora_model)
    cfg = model.config
    before = {k: np.asarray(v) for k, v in flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param))).items()}
    opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=trainable_filter("lora_both", freeze_vision=True))
    obs = make_obs(cfg, batch=2)
    actions = jnp.ones((2, cfg.action_horizon, cfg.action_dim))

    def loss_fn(m):
        return m.compute_loss(jax.random.key(0), obs, actions).mean()

    grads = nnx.grad(loss_fn, argnums=nnx.DiffState(0, trainable_filter("lora_both", freeze_vision=True)))(model)
    opt.update(model, grads)
    after = {k: np.asarray(v) for k, v in flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param))).items()}
    changed = {k for k in before if np.abs(before[k] - after[k]).max() > 0}
    assert changed and all(("lora" in k) or ("/llm/" not in k and "/img/" not in k) for k in changed)
    assert any("lora" in k for k in changed) and "action_out_proj/kernel" in changed


def _train_setup(name, batch=8, lr=3e-3):
    cfg = C.preset(name)
    model = Pi0(cfg, nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)
    obs = make_obs(cfg, batch=batch, seed=1)
    k1, k2, k3 = jax.random.split(jax.random.key(42), 3)
    actions = jax.random.normal(k1, (batch, cfg.action_horizon, cfg.action_dim))
    noise = jax.random.normal(k2, actions.shape)
    t = jax.random.beta(k3, 1.5, 1.0, (batch,)) * 0.999 + 0.001

    @nnx.jit
    def step(model, opt, obs, actions, noise, t):
        def loss_fn(m):
            return m.compute_loss(jax.random.key(0), obs, actions, noise=noise, time=t, train=False).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    return model, opt, (obs, actions, noise, t), step


def test_tiny_model_overfits_fixed_batch():
    """Fixed batch = fixed observation, actions, noise and time: the loss must fall by 90% in 100 Adam steps.

    (pi0 only, to keep the test short: compiling the train step dominates on CPU; pi0.5's gradients are
    exercised by test_pi0.py::test_scan_remat_and_unrolled_layers_agree.)"""
    model, opt, batch, step = _train_setup("pi0_tiny", lr=1e-2)
    losses = [float(step(model, opt, *batch))]  # includes compilation
    t0 = time.perf_counter()
    for _ in range(99):
        losses.append(float(step(model, opt, *batch)))
    per_step = (time.perf_counter() - t0) / 99
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])
    # one training step at batch 8 on this CPU takes well under a second
    assert per_step < 0.5, per_step
