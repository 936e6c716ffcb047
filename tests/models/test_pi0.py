"""Pi0 / pi0.5 end to end on tiny configs: cached sampling == uncached Euler, loss conventions, inputs."""

from __future__ import annotations

import dataclasses

import jax  # a hard dependency: a broken install must fail, not skip
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_helpers import make_obs, tiny_model

from pi0cli.models import config as C
from pi0cli.models.observation import ModelInputError, Observation, preprocess_observation
from pi0cli.models.pi0 import Pi0


def _randomize_adarms(model):
    """Zero-initialised adaRMS Dense layers would hide bugs in the conditioning path: give them weights."""
    state = nnx.state(model, nnx.Param)
    flat = nnx.to_flat_state(state)
    for i, (path, var) in enumerate(flat):
        if "Dense_0" in path and "llm" in path:
            var[...] = jax.random.normal(jax.random.key(i), var.shape) * 0.05
    nnx.update(model, nnx.from_flat_state(flat))


@pytest.mark.parametrize("name", ["pi0_tiny", "pi05_tiny"])
def test_cached_sampling_equals_uncached_euler(name):
    model = tiny_model(name)
    if model.config.pi05:
        _randomize_adarms(model)
    obs = make_obs(model.config, batch=2)
    noise = jax.random.normal(jax.random.key(5), (2, model.config.action_horizon, model.config.action_dim))
    cached = nnx.jit(lambda m, o, n: m.sample_actions(jax.random.key(0), o, noise=n))(model, obs, noise)
    full = nnx.jit(lambda m, o, n: m.sample_actions(jax.random.key(0), o, noise=n, use_kv_cache=False))(
        model, obs, noise)

    # An independent Euler loop in Python, each step a full prefix+suffix forward via compute_loss's path.
    # time accumulates in float32 as in the jitted loop (the 4e-3 period makes the embedding sensitive to it)
    x, t, dt = noise, np.float32(1.0), np.float32(-1.0 / 10)
    pre = model.preprocess(None, obs, False)
    prefix, pmask, par = model.embed_prefix(pre)
    steps = 0
    while t >= -dt / 2:
        x = x + dt * model._velocity_full(pre, prefix, pmask, par, x, jnp.float32(t))
        t = np.float32(t + dt)
        steps += 1
    assert steps == 10
    np.testing.assert_allclose(np.asarray(cached), np.asarray(full), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(cached), np.asarray(x), atol=1e-5, rtol=0)
    assert cached.shape == (2, model.config.action_horizon, model.config.action_dim)
    assert np.abs(np.asarray(cached) - np.asarray(noise)).max() > 1e-3  # the model did something


@pytest.mark.parametrize("name", ["pi0_tiny", "pi05_tiny"])
def test_compute_loss_conventions(name):
    model = tiny_model(name)
    cfg = model.config
    obs = make_obs(cfg, batch=2)
    actions = jax.random.normal(jax.random.key(1), (2, cfg.action_horizon, cfg.action_dim))
    noise = jax.random.normal(jax.random.key(2), actions.shape)
    time = jnp.array([0.3, 0.9])
    loss = model.compute_loss(jax.random.key(0), obs, actions, noise=noise, time=time)
    assert loss.shape == (2, cfg.action_horizon)
    # x_t = t * noise + (1 - t) * actions, target u = noise - actions, v from one joint forward
    pre = model.preprocess(None, obs, False)
    prefix, pmask, par = model.embed_prefix(pre)
    x_t = time[:, None, None] * noise + (1 - time[:, None, None]) * actions
    v = model._velocity_full(pre, prefix, pmask, par, x_t, time)
    np.testing.assert_allclose(np.asarray(loss), np.asarray(jnp.mean((v - (noise - actions)) ** 2, -1)), rtol=1e-5)
    # default noise/time are random but reproducible from the rng
    a = model.compute_loss(jax.random.key(7), obs, actions)
    b = model.compute_loss(jax.random.key(7), obs, actions)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_prefix_and_suffix_layout():
    model = tiny_model("pi0_tiny")
    cfg = model.config
    obs = make_obs(cfg, batch=2)
    tokens, mask, ar = model.embed_prefix(obs)
    n = cfg.tokens_per_image
    assert tokens.shape == (2, cfg.prefix_len, cfg.vlm.width)
    assert not bool(ar.any())
    assert bool(mask[:, : 2 * n].all()) and not bool(mask[:, 2 * n: 3 * n].any())  # masked 3rd camera
    np.testing.assert_array_equal(np.asarray(mask[:, 3 * n:]), np.asarray(obs.tokenized_prompt_mask))
    x = jnp.zeros((2, cfg.action_horizon, cfg.action_dim))
    s_tokens, s_mask, s_ar, cond = model.embed_suffix(obs, x, jnp.ones(2))
    assert s_tokens.shape == (2, 1 + cfg.action_horizon, cfg.expert.width) and cond is None
    np.testing.assert_array_equal(np.asarray(s_ar), [1, 1] + [0] * (cfg.action_horizon - 1))
    m05 = tiny_model("pi05_tiny")
    s_tokens, _, s_ar, cond = m05.embed_suffix(obs, x, jnp.ones(2))
    assert s_tokens.shape == (2, cfg.action_horizon, cfg.expert.width) and cond.shape == (2, cfg.expert.width)
    np.testing.assert_array_equal(np.asarray(s_ar), [1] + [0] * (cfg.action_horizon - 1))


def test_masked_camera_and_padding_do_not_matter():
    """A masked camera's pixels and padded prompt tokens must not change the actions."""
    model = tiny_model("pi0_tiny")
    cfg = model.config
    obs = make_obs(cfg, batch=1)
    noise = jnp.ones((cfg.action_horizon, cfg.action_dim))
    a = model.sample_actions(jax.random.key(0), obs, noise=noise)
    last = cfg.image_keys[-1]
    images = dict(obs.images, **{last: obs.images[last] * 0 + 0.3})
    tokens = jnp.where(obs.tokenized_prompt_mask, obs.tokenized_prompt, 17)
    obs2 = dataclasses.replace(obs, images=images, tokenized_prompt=tokens)
    b = model.sample_actions(jax.random.key(0), obs2, noise=noise)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_observation_from_dict_and_preprocess():
    cfg = C.preset("pi0_tiny")
    rng = np.random.default_rng(0)
    data = {
        "image": {k: rng.integers(0, 256, (2, 20, 40, 3), dtype=np.uint8) for k in cfg.image_keys},
        "state": np.zeros((2, 8), np.float32),
    }
    obs = Observation.from_dict(data)
    img = np.asarray(obs.images["base_0_rgb"])
    np.testing.assert_allclose(img, data["image"]["base_0_rgb"] / 255 * 2 - 1, atol=1e-6)
    assert bool(obs.image_masks["right_wrist_0_rgb"].all())  # masks default to True
    out = preprocess_observation(None, obs, image_keys=cfg.image_keys, image_resolution=(32, 32))
    assert out.images["base_0_rgb"].shape == (2, 32, 32, 3)
    np.testing.assert_allclose(np.asarray(out.images["base_0_rgb"])[:, :8], -1.0)  # 20x40 -> 16x32, padded
    aug = preprocess_observation(jax.random.key(0), obs, train=True, image_keys=cfg.image_keys,
                                 image_resolution=(32, 32))
    for k in cfg.image_keys:
        x = np.asarray(aug.images[k])
        assert x.shape == (2, 32, 32, 3) and x.min() >= -1 - 1e-6 and x.max() <= 1 + 1e-6
        assert np.abs(x - np.asarray(out.images[k])).max() > 1e-3  # augmented
    # the two examples of a batch get different augmentations
    assert np.abs(np.asarray(aug.images["base_0_rgb"][0] - aug.images["base_0_rgb"][1])).max() > 0
    with pytest.raises(ModelInputError, match="right_wrist_0_rgb"):
        bad = Observation.from_dict({**data, "image": {"base_0_rgb": data["image"]["base_0_rgb"]}})
        preprocess_observation(None, bad, image_keys=cfg.image_keys, image_resolution=(32, 32))


def test_geometric_augmentation_can_be_switched_off():
    cfg = C.preset("pi0_tiny")
    image = np.zeros((4, 32, 32, 3), np.uint8)
    image[:, 5, 23] = 255  # one bright pixel off-centre: a crop or rotation moves it
    obs = Observation.from_dict({"image": {k: image for k in cfg.image_keys}, "state": np.zeros((4, 8), np.float32)})

    def brightest(augment_geometric):
        out = preprocess_observation(jax.random.key(1), obs, train=True, image_keys=cfg.image_keys,
                                     image_resolution=(32, 32), augment_geometric=augment_geometric)
        base = np.asarray(out.images["base_0_rgb"]).sum(-1).reshape(4, -1)
        return {np.unravel_index(i, (32, 32)) for i in base.argmax(-1)}, out

    kept, out = brightest(False)
    assert kept == {(5, 23)}
    assert not np.allclose(np.asarray(out.images["base_0_rgb"]), image / 255 * 2 - 1, atol=1e-3)  # colour jitter stays
    moved, _ = brightest(True)
    assert moved != {(5, 23)}


def test_state_dropout_hides_whole_states_in_training_only():
    cfg = C.preset("pi0_tiny")
    state = np.random.default_rng(0).uniform(1, 2, (64, 8)).astype(np.float32)
    obs = Observation.from_dict({"image": {k: np.zeros((64, 8, 8, 3), np.uint8) for k in cfg.image_keys},
                                 "state": state})
    kwargs = dict(image_keys=cfg.image_keys, image_resolution=(32, 32), state_dropout=0.5)
    dropped = np.asarray(preprocess_observation(jax.random.key(0), obs, train=True, **kwargs).state)
    hidden = (dropped == 0).all(-1)
    np.testing.assert_array_equal(dropped[~hidden], state[~hidden])  # the rest pass untouched
    assert 16 < hidden.sum() < 48
    np.testing.assert_array_equal(np.asarray(preprocess_observation(None, obs, **kwargs).state), state)  # inference
    with pytest.raises(C.ModelConfigError, match="state_dropout 1.0 must be a probability"):
        C.preset("pi0_tiny", state_dropout=1.0)


def test_hidden_state_input_zeroes_every_state_in_training_and_at_inference():
    cfg = C.preset("pi0_tiny", state_input="hidden", state_dropout=0.5)
    state = np.random.default_rng(0).uniform(1, 2, (8, cfg.action_dim)).astype(np.float32)
    obs = Observation.from_dict({"image": {k: np.zeros((8, 8, 8, 3), np.uint8) for k in cfg.image_keys},
                                 "state": state})
    model = Pi0(cfg, nnx.Rngs(0))
    for rng, train in ((None, False), (jax.random.key(0), True)):
        assert (np.asarray(model.preprocess(rng, obs, train).state) == 0).all()
    visible = Pi0(C.preset("pi0_tiny"), nnx.Rngs(0))
    np.testing.assert_array_equal(np.asarray(visible.preprocess(None, obs, False).state), state)
    with pytest.raises(C.ModelConfigError, match="state_input 'hidden' needs pi0"):
        C.preset("pi05_tiny", state_input="hidden")
    with pytest.raises(C.ModelConfigError, match="state_input 'blind' must be one of visible, hidden"):
        C.preset("pi0_tiny", state_input="blind")


def test_bfloat16_forward_runs_and_is_close():
    cfg32 = C.preset("pi0_tiny")
    m16 = Pi0(dataclasses.replace(cfg32, dtype="bfloat16"), nnx.Rngs(0))
    obs = make_obs(cfg32, batch=1)
    noise = jnp.ones((cfg32.action_horizon, cfg32.action_dim)) * 0.5
    a16 = m16.sample_actions(jax.random.key(0), obs, noise=noise)
    a32 = tiny_model("pi0_tiny").sample_actions(jax.random.key(0), obs, noise=noise)
    assert a16.dtype == jnp.float32
    assert np.isfinite(np.asarray(a16)).all()
    assert np.abs(np.asarray(a16) - np.asarray(a32)).max() < 0.1


def test_scan_remat_and_unrolled_layers_agree():
    """Same weights: lax.scan + remat and the unrolled loop give the same loss and gradients."""
    from pi0cli.models.params import export_params, import_params

    base = C.preset("pi05_tiny")
    a = Pi0(dataclasses.replace(base, scan=True, remat=True), nnx.Rngs(0))
    b = Pi0(dataclasses.replace(base, scan=False, remat=False), nnx.Rngs(1))
    _randomize_adarms(a)
    import_params(b, export_params(a))
    obs = make_obs(base, batch=2)
    actions = jnp.ones((2, base.action_horizon, base.action_dim))
    t = jnp.array([0.2, 0.7])

    @nnx.jit
    def loss_and_grad(m):
        return nnx.value_and_grad(lambda m: m.compute_loss(jax.random.key(0), obs, actions, time=t).mean())(m)

    la, ga = loss_and_grad(a)
    lb, gb = loss_and_grad(b)
    np.testing.assert_allclose(float(la), float(lb), rtol=1e-6)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def test_compute_loss_with_training_augmentation():
    model = tiny_model("pi0_tiny")
    cfg = model.config
    obs = make_obs(cfg, batch=2)
    actions = jnp.zeros((2, cfg.action_horizon, cfg.action_dim))
    kw = dict(noise=jnp.ones_like(actions), time=jnp.array([0.5, 0.5]))
    eval_loss = model.compute_loss(jax.random.key(0), obs, actions, **kw)
    train_loss = model.compute_loss(jax.random.key(0), obs, actions, train=True, **kw)
    assert np.isfinite(np.asarray(train_loss)).all()
    assert np.abs(np.asarray(train_loss - eval_loss)).max() > 0
