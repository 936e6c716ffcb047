"""The fused/chunked attention matches the whole-matrix attention it replaced (float32, 1e-5)."""

from __future__ import annotations

import dataclasses

import jax  # a hard dependency: a broken install must fail, not skip
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_helpers import make_obs

from pi0cli.models import config as C
from pi0cli.models import gemma, siglip
from pi0cli.models.lora import FeedForward
from pi0cli.models.pi0 import Pi0, make_attn_mask

TOL = dict(atol=1e-5, rtol=1e-5)


def reference_attention(q, k, v, mask, **_):
    """The attention as it was written before (whole float32 score matrix), kept here as the oracle."""
    b, t, n, h = q.shape
    kv = k.shape[2]
    q = q.reshape(b, t, kv, n // kv, h)
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, k, preferred_element_type=jnp.float32)
    if mask is not None:
        logits = jnp.where(mask[:, None, None, :, :], logits, gemma.MASK_VALUE)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("BKGTS,BSKH->BTKGH", probs, v).reshape(b, t, n, h)


def _inputs(seed, b=2, t=37, s=37, n=4, kv=1, h=8):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(b, t, n, h)) * h**-0.5, jnp.float32)
    k = jnp.asarray(rng.normal(size=(b, s, kv, h)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(b, s, kv, h)), jnp.float32)
    return q, k, v


def _prefix_lm_mask(b, prefix, suffix, pad):
    """Prefix-LM (bidirectional prefix, causal suffix) with the last ``pad`` prefix tokens padding."""
    valid = np.ones((b, prefix + suffix), bool)
    valid[:, prefix - pad : prefix] = False
    ar = np.concatenate([np.zeros(prefix, bool), np.ones(suffix, bool)])
    return make_attn_mask(jnp.asarray(valid), jnp.asarray(ar))


@pytest.mark.parametrize("impl", ["chunked", "xla"])
@pytest.mark.parametrize(("chunk", "kv"), [(8, 1), (16, 2), (64, 1), (5, 4)])
def test_masked_attention_and_its_gradients_match(impl, chunk, kv):
    q, k, v = _inputs(0, kv=kv)
    mask = _prefix_lm_mask(2, 30, 7, pad=4)  # padded prefix rows see nothing: uniform, as before
    new = gemma.dot_product_attention(q, k, v, mask, impl=impl, chunk=chunk)
    np.testing.assert_allclose(new, reference_attention(q, k, v, mask), **TOL)

    def loss(fn, q, k, v):
        return jnp.sum(jnp.sin(fn(q, k, v, mask, impl=impl, chunk=chunk)))

    g_new = jax.grad(lambda *a: loss(gemma.dot_product_attention, *a), argnums=(0, 1, 2))(q, k, v)
    g_ref = jax.grad(lambda *a: loss(reference_attention, *a), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g_new, g_ref, strict=True):
        np.testing.assert_allclose(a, b, **TOL)


def test_unmasked_attention_matches():
    q, k, v = _inputs(1, t=50, s=50, n=2, kv=2)
    np.testing.assert_allclose(gemma.dot_product_attention(q, k, v, None, chunk=16),
                               reference_attention(q, k, v, None), **TOL)


def test_kv_cache_attention_matches():
    """Suffix queries over cached prefix keys (T < S), in chunks."""
    q, k, v = _inputs(2, t=11, s=40)
    prefix_valid = jnp.asarray(np.arange(29) < 25)[None].repeat(2, 0)
    suffix_mask = make_attn_mask(jnp.ones((2, 11), bool), jnp.arange(11) == 0)
    mask = jnp.concatenate([jnp.broadcast_to(prefix_valid[:, None], (2, 11, 29)), suffix_mask], axis=-1)
    np.testing.assert_allclose(gemma.dot_product_attention(q, k, v, mask, chunk=4),
                               reference_attention(q, k, v, mask), **TOL)


@pytest.mark.slow
def test_only_one_chunk_of_scores_is_live():
    """The chunked form's compiled temporaries are far below one whole float32 score matrix."""
    b, t, n = 2, 2048, 8
    q, k, v = (jax.ShapeDtypeStruct((b, t, n if i == 0 else 1, 64), jnp.float32) for i in range(3))
    mask = jax.ShapeDtypeStruct((b, t, t), jnp.bool_)
    scores = b * n * t * t * 4

    def temp(impl):
        fn = jax.jit(jax.grad(lambda q, k, v, m: jnp.sum(gemma.dot_product_attention(q, k, v, m, impl=impl)),
                              argnums=(0, 1, 2)))
        return fn.lower(q, k, v, mask).compile().memory_analysis().temp_size_in_bytes

    assert temp("xla") >= scores
    assert temp("chunked") < scores / 2


def test_chunked_mlp_matches():
    mlp = FeedForward(16, 32, lora=C.LoRAConfig(4, 4.0), param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 45, 16)), jnp.float32)
    chunked = FeedForward(16, 32, lora=C.LoRAConfig(4, 4.0), param_dtype=jnp.float32, rngs=nnx.Rngs(0), chunk=8)
    np.testing.assert_allclose(chunked(x), mlp(x), **TOL)
    g1 = jax.grad(lambda x: jnp.sum(jnp.tanh(chunked(x))))(x)
    g2 = jax.grad(lambda x: jnp.sum(jnp.tanh(mlp(x))))(x)
    np.testing.assert_allclose(g1, g2, **TOL)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pi0_tiny", "pi05_tiny"])
def test_model_loss_grads_and_cached_sampling_match_the_old_attention(name, monkeypatch):
    """Whole models, chunks of 8 tokens (prefix 56 + suffix): loss, gradients and KV-cached sampling."""
    cfg = dataclasses.replace(C.preset(name), attention_chunk=8, mlp_chunk=16)
    model = Pi0(cfg, nnx.Rngs(0))
    obs = make_obs(cfg, batch=2)
    actions = jnp.asarray(np.random.default_rng(4).normal(size=(2, cfg.action_horizon, cfg.action_dim)), jnp.float32)
    rng = jax.random.PRNGKey(0)
    graphdef, params = nnx.split(model)

    def loss(params):
        return jnp.mean(nnx.merge(graphdef, params).compute_loss(rng, obs, actions))

    def sample(params):
        return nnx.merge(graphdef, params).sample_actions(rng, obs, num_steps=3)

    new = (jax.value_and_grad(loss)(params), sample(params))
    monkeypatch.setattr(gemma, "dot_product_attention", reference_attention)
    monkeypatch.setattr(siglip, "dot_product_attention", reference_attention)
    plain = dataclasses.replace(cfg, mlp_chunk=None)
    graphdef = nnx.split(Pi0(plain, nnx.Rngs(0)))[0]
    old = (jax.value_and_grad(loss)(params), sample(params))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), new, old)
