"""Real-time chunking on tiny pi0 / pi0.5: plain rows are the plain sampler bit for bit, the frozen prefix
follows the previous chunk, the soft-mask and guidance-weight schedules match a hand computation, and a
batch of rows with different delays equals the rows sampled one by one."""

from __future__ import annotations

import math

import jax  # a hard dependency: a broken install must fail, not skip
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_helpers import make_obs, tiny_model

from pi0cli.models.observation import Observation
from pi0cli.models.rtc import RTCInputs, guidance_weight, prefix_weights

# One jitted function each (compiled once per model structure and batch size, shared by the tests).
_PLAIN = nnx.jit(lambda m, o, n: m.sample_actions(None, o, noise=n))
_RTC = nnx.jit(lambda m, o, n, r: m.sample_actions(None, o, noise=n, rtc=r))
BATCH = 3


def _sample(model, obs, noise, rtc=None):
    return np.asarray(_PLAIN(model, obs, noise) if rtc is None else _RTC(model, obs, noise, rtc))


def _noise(cfg, batch, seed=5):
    return jax.random.normal(jax.random.key(seed), (batch, cfg.action_horizon, cfg.action_dim))


def _row(obs: Observation, i: int) -> Observation:
    return jax.tree.map(lambda x: x[i : i + 1], obs)


def test_prefix_weights_match_hand_computation():
    # H = 10, d = 2, s = 3: overlap 7; i < 2 frozen; 2 <= i < 7: c_i = (7 - i) / 6, W = c (e^c - 1) / (e - 1)
    def soft(c):
        return c * (math.exp(c) - 1) / (math.e - 1)

    expected = [1.0, 1.0, soft(5 / 6), soft(4 / 6), soft(3 / 6), soft(2 / 6), soft(1 / 6), 0.0, 0.0, 0.0]
    # second row: no previous chunk (s = H); third: d = 0, overlap 4 -> c_i = (4 - i) / 5
    plain = [0.0] * 10
    no_delay = [soft(4 / 5), soft(3 / 5), soft(2 / 5), soft(1 / 5), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    w = prefix_weights(10, jnp.array([2, 3, 0]), jnp.array([3, 10, 6]))
    np.testing.assert_allclose(np.asarray(w), np.array([expected, plain, no_delay]), rtol=1e-6, atol=1e-7)


def test_guidance_weight_matches_hand_computation():
    # w(t) = min(5, (t^2 + (1 - t)^2) / (t (1 - t))): 5 at both ends, 2 at t = 0.5
    times = jnp.array([1.0, 0.9, 0.8, 0.7, 0.5, 0.3, 0.1, 0.0])
    expected = [5.0, 5.0, 0.68 / 0.16, 0.58 / 0.21, 2.0, 0.58 / 0.21, 5.0, 5.0]
    np.testing.assert_allclose(np.asarray(guidance_weight(times)), expected, rtol=1e-5)
    assert float(guidance_weight(jnp.float32(0.5), max_weight=1.5)) == 1.5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pi0_tiny", "pi05_tiny"])
def test_no_previous_chunk_is_bitwise_the_plain_sampler(name):
    model = tiny_model(name)
    cfg = model.config
    h = cfg.action_horizon
    obs, noise = make_obs(cfg, batch=BATCH), _noise(cfg, BATCH)
    plain = _sample(model, obs, noise)
    none = _sample(model, obs, noise, RTCInputs.none(BATCH, h, cfg.action_dim))
    np.testing.assert_array_equal(none, plain)
    # Plain rows batched with an RTC row are still the plain sampler's rows, bit for bit (per-row select).
    prev = jax.random.normal(jax.random.key(9), noise.shape)
    mixed = _sample(model, obs, noise, RTCInputs(prev, jnp.array([0, 1, 0]), jnp.array([h, 1, h])))
    np.testing.assert_array_equal(mixed[[0, 2]], plain[[0, 2]])
    assert np.abs(mixed[1] - plain[1]).max() > 1e-3  # the RTC row was guided


def _smooth_model(name: str, scale: float):
    """A copy of the tiny model whose velocity depends weakly (scale) or not at all (0) on x_t, so that the
    denoised estimate's Jacobian is near the identity, as for a trained flow near the data. A random tiny
    model's Jacobian is badly conditioned (singular values 0.08..3.5 at t = 1), where no guidance converges."""
    model = nnx.clone(tiny_model(name))
    kernel = model.action_out_proj.kernel
    kernel[...] = kernel[...] * scale
    return model


@pytest.mark.slow
@pytest.mark.parametrize(("name", "scale"), [("pi0_tiny", 0.0), ("pi0_tiny", 0.1), ("pi05_tiny", 0.1)])
def test_frozen_prefix_follows_the_previous_chunk(name, scale):
    model = _smooth_model(name, scale)
    cfg = model.config
    h = cfg.action_horizon
    obs, noise = make_obs(cfg, batch=BATCH), _noise(cfg, BATCH)
    prev = 2.0 * jax.random.normal(jax.random.key(9), noise.shape)
    d, s = jnp.array([2, 1, 3]), jnp.array([1, 2, 0])  # overlaps of 3, 2 and 4 actions
    plain = _sample(model, obs, noise)
    out = _sample(model, obs, noise, RTCInputs(prev, d, s))
    prev = np.asarray(prev)
    for row in range(BATCH):
        frozen = slice(0, int(d[row]))
        before = np.abs(plain[row, frozen] - prev[row, frozen]).max()
        after = np.abs(out[row, frozen] - prev[row, frozen]).max()
        # x-independent velocity: the error shrinks by prod(1 - w(t) / 10) = 0.0106 over the 10 steps
        assert after < (0.011 if scale == 0.0 else 0.05) * before, (row, before, after)
        free = slice(h - int(s[row]), h)
        if scale == 0.0:  # the Jacobian is the identity: guidance cannot reach the free actions
            np.testing.assert_allclose(out[row, free], plain[row, free], atol=1e-5)
    # the soft part of the overlap moved toward the previous chunk too
    assert np.abs(out[0, 2] - prev[0, 2]).max() < np.abs(plain[0, 2] - prev[0, 2]).max()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pi0_tiny", "pi05_tiny"])
def test_batched_rows_with_different_delays_equal_rows_one_by_one(name):
    model = _smooth_model(name, 0.5)
    cfg = model.config
    h = cfg.action_horizon
    obs, noise = make_obs(cfg, batch=BATCH, seed=3), _noise(cfg, BATCH, seed=4)
    prev = jax.random.normal(jax.random.key(9), noise.shape)
    d, s = jnp.array([0, 1, 3]), jnp.array([h, 2, 1])
    batched = _sample(model, obs, noise, RTCInputs(prev, d, s))
    for i in range(BATCH):
        alone = _sample(model, _row(obs, i), noise[i : i + 1], RTCInputs(prev[i : i + 1], d[i : i + 1], s[i : i + 1]))
        np.testing.assert_allclose(batched[i], alone[0], atol=2e-5, rtol=0)
    # a different delay gives a different chunk from the same observation and noise
    other = _sample(model, _row(obs, 1), noise[1:2], RTCInputs(prev[1:2], jnp.array([2]), s[1:2]))
    assert np.abs(other[0] - batched[1]).max() > 1e-4
