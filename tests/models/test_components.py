"""Each building block pinned to hand-computed values or to a direct numpy computation of the same math."""

from __future__ import annotations

import math

import jax  # a hard dependency: a broken install must fail, not skip
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pi0cli.models import config as C
from pi0cli.models.gemma import MASK_VALUE, Attention, Block, RMSNorm, apply_rope
from pi0cli.models.lora import Einsum
from pi0cli.models.observation import resize_with_pad
from pi0cli.models.pi0 import make_attn_mask, posemb_sincos


def test_rmsnorm_hand_values():
    norm = RMSNorm(4, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    norm.scale[...] = jnp.array([0.0, 1.0, -0.5, 0.5])  # multipliers 1 + scale = 1, 2, 0.5, 1.5
    y, gate = norm(jnp.array([[[1.0, 2.0, 3.0, 4.0]]]))
    # mean(x^2) = 30/4 = 7.5, so x / sqrt(7.5 + 1e-6) * (1 + scale)
    r = 1 / math.sqrt(7.5 + 1e-6)
    np.testing.assert_allclose(np.asarray(y)[0, 0], [1 * r, 4 * r, 1.5 * r, 6 * r], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(y)[0, 0], [0.36514837, 1.46059349, 0.54772256, 2.19089023], rtol=1e-6)
    assert gate is None


def test_adarms_scale_shift_gate():
    norm = RMSNorm(2, cond_dim=3, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    assert float(jnp.abs(norm.Dense_0.kernel[...]).sum()) == 0.0  # zero init: starts as plain RMSNorm
    norm.Dense_0.bias[...] = jnp.array([1.0, 1.0, 0.5, 0.5, 2.0, 2.0])  # scale 1, shift 0.5, gate 2
    y, gate = norm(jnp.array([[[3.0, -4.0]]]), jnp.ones((1, 3)))
    # rms = sqrt(12.5); y = x / rms * 2 + 0.5
    r = 1 / math.sqrt(12.5 + 1e-6)
    np.testing.assert_allclose(np.asarray(y)[0, 0], [3 * r * 2 + 0.5, -4 * r * 2 + 0.5], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(gate)[0, 0], [2.0, 2.0])


def test_rope_hand_values():
    # head_dim 4: timescales 10000^(0/4)=1 and 10000^(2/4)=100; pairs (0,2) and (1,3) rotate.
    x = jnp.array([1.0, 0.0, 0.0, 1.0]).reshape(1, 1, 1, 4)
    at0 = apply_rope(x, jnp.array([[0]]))
    np.testing.assert_allclose(np.asarray(at0).ravel(), [1, 0, 0, 1], atol=1e-7)
    at1 = np.asarray(apply_rope(x, jnp.array([[1]]))).ravel()
    # [x1*cos - x2*sin, x2*cos + x1*sin] with x1=(1,0), x2=(0,1), angles (1, 0.01)
    expected = [math.cos(1.0), -math.sin(0.01), math.sin(1.0), math.cos(0.01)]
    np.testing.assert_allclose(at1, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(at1, [0.5403023, -0.00999983, 0.84147098, 0.99995], rtol=1e-5)


def _mask(ar, valid=None):
    ar = jnp.asarray([ar], bool)
    valid = jnp.ones_like(ar) if valid is None else jnp.asarray([valid], bool)
    return np.asarray(make_attn_mask(valid, ar)[0]).astype(int)


def test_make_attn_mask_causal():
    np.testing.assert_array_equal(_mask([1, 1, 1, 1]), np.tril(np.ones((4, 4), int)))


def test_make_attn_mask_prefix_lm():
    expected = [
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1],
    ]
    np.testing.assert_array_equal(_mask([0, 0, 0, 1, 1, 1]), expected)


def test_make_attn_mask_block_causal():
    expected = [
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 1, 1],
    ]
    np.testing.assert_array_equal(_mask([1, 0, 1, 0, 0, 1, 0, 0]), expected)
    # the same blocks with [1,0,0,1,0,0]: two blocks of three
    b = _mask([1, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(b[:3], [[1, 1, 1, 0, 0, 0]] * 3)
    np.testing.assert_array_equal(b[3:], [[1] * 6] * 3)


def test_make_attn_mask_padding():
    m = _mask([0, 0, 0, 1], valid=[1, 1, 0, 1])
    np.testing.assert_array_equal(m, [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 0, 1]])


def test_posemb_sincos_hand_values():
    # dim 4 -> periods (1, 4); t = 0.5: sin(pi), sin(pi/4), cos(pi), cos(pi/4)
    out = np.asarray(posemb_sincos(jnp.array([0.5]), 4, min_period=1.0, max_period=4.0))[0]
    np.testing.assert_allclose(out, [0.0, math.sqrt(0.5), -1.0, math.sqrt(0.5)], atol=1e-6)
    full = np.asarray(posemb_sincos(jnp.array([0.0, 1.0]), 1024, min_period=4e-3, max_period=4.0))
    assert full.shape == (2, 1024)
    np.testing.assert_allclose(full[0], [0.0] * 512 + [1.0] * 512)
    # first period 4e-3: sin(2 pi / 4e-3) = sin(500 pi) = 0; last period 4: sin(pi/2) = 1
    np.testing.assert_allclose([full[1, 0], full[1, 511], full[1, 1023]], [0.0, 1.0, 0.0], atol=2e-4)


def test_lora_einsum_is_weight_plus_low_rank():
    e = Einsum("BTD,NDH->BTNH", (2, 5, 3), init=jax.nn.initializers.normal(1.0),
               lora=C.LoRAConfig(rank=2, alpha=4.0), param_dtype=jnp.float32, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(0), (1, 4, 5))
    w = np.asarray(e.w[...]) + 2.0 * np.einsum("ndr,nrh->ndh", np.asarray(e.lora_a[...]), np.asarray(e.lora_b[...]))
    np.testing.assert_allclose(np.asarray(e(x)), np.einsum("btd,ndh->btnh", np.asarray(x), w), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------ two-expert layer vs plain numpy
def _np_rms(x, scale):
    x = x.astype(np.float64)
    return x / np.sqrt(np.mean(x**2, -1, keepdims=True) + 1e-6) * (1 + scale)


def _np_rope(x, pos):
    h = x.shape[-1] // 2
    ts = 10000.0 ** (2 * np.arange(h) / x.shape[-1])
    ang = pos[..., None, None] / ts  # [B,T,1,h]
    x1, x2 = x[..., :h], x[..., h:]
    return np.concatenate([x1 * np.cos(ang) - x2 * np.sin(ang), x2 * np.cos(ang) + x1 * np.sin(ang)], -1)


def _np_gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _np_block(p, xs, pos, mask):
    """One mixture layer in float64 numpy, straight from the math."""
    qs, ks, vs, lens = [], [], [], []
    normed = []
    for i, x in enumerate(xs):
        s = "" if i == 0 else f"_{i}"
        h = _np_rms(x, p[f"pre_attention_norm{s}"]["scale"])
        normed.append(h)
        qs.append(np.einsum("btd,ndh->btnh", h, p["attn"][f"q_einsum{s}"]["w"]))
        kv = np.einsum("bsd,ckdh->cbskh", h, p["attn"][f"kv_einsum{s}"]["w"])
        ks.append(kv[0])
        vs.append(kv[1])
        lens.append(x.shape[1])
    q, k, v = (np.concatenate(a, 1) for a in (qs, ks, vs))
    q = _np_rope(q, pos) / math.sqrt(q.shape[-1])
    k = _np_rope(k, pos)
    n, kh = q.shape[2], k.shape[2]
    k = np.repeat(k, n // kh, axis=2)
    v = np.repeat(v, n // kh, axis=2)
    logits = np.einsum("btnh,bsnh->bnts", q, k)
    logits = np.where(mask[:, None], logits, MASK_VALUE)
    logits = logits - logits.max(-1, keepdims=True)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    enc = np.einsum("bnts,bsnh->btnh", probs, v)
    outs, start = [], 0
    for i, x in enumerate(xs):
        s = "" if i == 0 else f"_{i}"
        e = enc[:, start:start + x.shape[1]]
        start += x.shape[1]
        x = x + np.einsum("btnh,nhd->btd", e, p["attn"][f"attn_vec_einsum{s}"]["w"])
        h = _np_rms(x, p[f"pre_ffw_norm{s}"]["scale"])
        g = p[f"mlp{s}"]["gating_einsum"]
        hid = _np_gelu_tanh(h @ g[0]) * (h @ g[1])
        outs.append(x + hid @ p[f"mlp{s}"]["linear"])
    return outs


def test_two_expert_layer_matches_numpy():
    cfgs = [C.gemma_variant("tiny"), C.gemma_variant("tiny_expert")]
    block = Block(cfgs, [None, None], param_dtype=jnp.float32, rngs=nnx.Rngs(3))
    # make the norm scales non-trivial so (1 + scale) is exercised
    for name in ("pre_attention_norm", "pre_attention_norm_1", "pre_ffw_norm", "pre_ffw_norm_1"):
        m = getattr(block, name)
        m.scale[...] = jax.random.normal(jax.random.key(len(name)), m.scale.shape) * 0.3
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), nnx.to_pure_dict(nnx.state(block, nnx.Param)))
    rng = np.random.default_rng(0)
    b, t0, t1 = 2, 5, 3
    x0 = rng.normal(size=(b, t0, cfgs[0].width)).astype(np.float32)
    x1 = rng.normal(size=(b, t1, cfgs[1].width)).astype(np.float32)
    valid = np.ones((b, t0 + t1), bool)
    valid[1, 3:5] = False  # padding inside the prefix of example 1
    ar = np.array([0] * t0 + [1, 0, 0], bool)
    mask = np.asarray(make_attn_mask(jnp.asarray(valid), jnp.asarray(ar)))
    pos = np.cumsum(valid, 1) - 1
    (y0, y1), (k, v) = block([jnp.asarray(x0), jnp.asarray(x1)], jnp.asarray(pos), jnp.asarray(mask), [None, None])
    e0, e1 = _np_block(p, [x0.astype(np.float64), x1.astype(np.float64)], pos, mask)
    # fully padded query rows see nothing: compare only valid rows (their softmax is uniform junk in both)
    np.testing.assert_allclose(np.asarray(y0)[valid[:, :t0]], e0[valid[:, :t0]], rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(np.asarray(y1), e1, rtol=2e-5, atol=2e-5)
    assert k.shape == (b, t0 + t1, 1, cfgs[0].head_dim)


def test_attention_kv_cache_equals_joint():
    """Prefix through expert 0 then suffix through expert 1 with the cache == one joint pass (suffix part)."""
    cfgs = [C.gemma_variant("tiny"), C.gemma_variant("tiny_expert")]
    attn = Attention(cfgs, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    x0 = jax.random.normal(jax.random.key(1), (1, 4, 32))
    x1 = jax.random.normal(jax.random.key(2), (1, 2, 16))
    valid = jnp.ones((1, 6), bool)
    ar = jnp.array([0, 0, 0, 0, 1, 0], bool)
    full = make_attn_mask(valid, ar)
    pos = jnp.arange(6)[None]
    (_, y1), _ = attn([x0, x1], pos, full)
    _, cache = attn([x0, None], pos[:, :4], full[:, :4, :4])
    (_, y1c), _ = attn([None, x1], pos[:, 4:], full[:, 4:], kv_cache=cache)
    np.testing.assert_allclose(np.asarray(y1c), np.asarray(y1), rtol=1e-5, atol=1e-6)


def test_siglip_patch_embedding_is_a_strided_conv():
    from pi0cli.models.siglip import SigLIP

    cfg = C.siglip_variant("tiny")
    enc = SigLIP(cfg, image_resolution=(16, 24), out_width=8, dtype=jnp.float32, rngs=nnx.Rngs(0))
    img = jax.random.normal(jax.random.key(0), (2, 16, 24, 3))
    k = enc.embedding.kernel[...]
    conv = jax.lax.conv_general_dilated(img, k, (8, 8), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    p = img.reshape(2, 2, 8, 3, 8, 3).transpose(0, 1, 3, 2, 4, 5)
    np.testing.assert_allclose(np.asarray(enc.embedding(p)), np.asarray(conv + enc.embedding.bias[...]),
                               rtol=1e-5, atol=1e-5)
    assert enc(img).shape == (2, 6, 8)


def test_resize_with_pad():
    img = jnp.ones((1, 16, 32, 3)) * 0.5
    out = np.asarray(resize_with_pad(img, 32, 32))
    assert out.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(out[0, :8], -1.0)  # 8 rows of padding on top, 8 below
    np.testing.assert_allclose(out[0, 24:], -1.0)
    np.testing.assert_allclose(out[0, 8:24], 0.5, atol=1e-6)
    same = jnp.zeros((1, 32, 32, 3))
    assert resize_with_pad(same, 32, 32) is same
