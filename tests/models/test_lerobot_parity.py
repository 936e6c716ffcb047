"""Parity with LeRobot's independent PyTorch pi0 (lerobot 0.6.1 + transformers), on a small config.

LeRobot builds its PaliGemma-with-expert only from full-size Gemma variants and a So400m vision tower, and its
joint attention hard-codes 8 heads. So: the Gemma variant lookup is patched to small 8-head configs, the vision
tower and projector are swapped for a small HF SigLIP and Linear, every weight is copied from our model through
the reference-named export (``params.export_flat``) and the converter's LeRobot renaming
(``pi0cli.convert.lerobot_names``), and the same inputs, noise and time go through both. Compared: SigLIP image
tokens, prompt embeddings, the full training forward (per-element flow-matching loss) and ``sample_actions``
(10 Euler steps, KV cache) in float32.
"""

from __future__ import annotations

import numpy as np
import pytest

# LeRobot's PyTorch pi0 is an optional, independent implementation (dev extra); JAX is a hard dependency.
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
modeling_pi0 = pytest.importorskip("lerobot.policies.pi0.modeling_pi0")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from model_helpers import make_obs  # noqa: E402

from pi0cli.convert.verify import posemb_float32  # noqa: E402
from pi0cli.models import config as C  # noqa: E402
from pi0cli.models.params import export_flat  # noqa: E402
from pi0cli.models.pi0 import Pi0  # noqa: E402

VLM = C.GemmaConfig(width=64, depth=2, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16)
EXPERT = C.GemmaConfig(width=32, depth=2, mlp_dim=64, num_heads=8, num_kv_heads=1, head_dim=16)
SIGLIP = C.SigLIPConfig(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=8)
H, A, RES = 4, 8, 32

# Max abs differences measured by the last run, kept for the report (filled in by the tests).
RESULTS: dict[str, float] = {}


def _ours(mp: pytest.MonkeyPatch) -> Pi0:
    # Small variants for this module only: ``mp`` restores the global tables when the fixture ends.
    mp.setitem(C.GEMMA_VARIANTS, "parity_vlm", VLM)
    mp.setitem(C.GEMMA_VARIANTS, "parity_expert", EXPERT)
    mp.setitem(C.SIGLIP_VARIANTS, "parity", SIGLIP)
    cfg = C.Pi0Config(model_type="pi0", paligemma_variant="parity_vlm", action_expert_variant="parity_expert",
                      siglip_variant="parity", dtype="float32", action_dim=A, action_horizon=H, max_token_len=8,
                      image_resolution=(RES, RES), remat=False)
    model = Pi0(cfg, nnx.Rngs(3))
    # non-trivial norm scales and biases so that every parameter matters
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    for i, (path, var) in enumerate(flat):
        if path[-1] in ("scale", "bias") or "pos_embedding" in path:
            var[...] = var[...] + 0.1 * jax.random.normal(jax.random.key(100 + i), var.shape)
    nnx.update(model, nnx.from_flat_state(flat))
    return model


def _lerobot_state_dict(model: Pi0) -> dict[str, torch.Tensor]:
    """Our reference-named tree -> LeRobot/HF names, through the converter's mapping (``pi0 convert``)."""
    from pi0cli.convert.lerobot_names import EMBED_TOKENS, EXPERT_LM_HEAD, LM_HEAD, to_lerobot

    sd = {k.removeprefix("model."): v for k, v in to_lerobot(export_flat(model), model.config).items()}
    sd[EMBED_TOKENS] = sd.pop(LM_HEAD)  # what LeRobot's from_pretrained does with the tied embedding
    del sd[EXPERT_LM_HEAD]
    return {k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in sd.items()}


@pytest.fixture(scope="module")
def variants():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def pair(variants):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    lr_cfg = {"gemma_2b": modeling_pi0.GemmaConfig(VLM.width, VLM.depth, VLM.mlp_dim, VLM.num_heads,
                                                   VLM.num_kv_heads, VLM.head_dim),
              "gemma_300m": modeling_pi0.GemmaConfig(EXPERT.width, EXPERT.depth, EXPERT.mlp_dim,
                                                     EXPERT.num_heads, EXPERT.num_kv_heads, EXPERT.head_dim)}
    mp = pytest.MonkeyPatch()
    mp.setattr(modeling_pi0, "get_gemma_config", lambda name: lr_cfg[name])
    try:
        from lerobot.policies.pi0.configuration_pi0 import PI0Config

        torch.manual_seed(0)
        cfg = PI0Config(chunk_size=H, n_action_steps=H, max_state_dim=A, max_action_dim=A,
                        image_resolution=(RES, RES), dtype="float32", device="cpu", tokenizer_max_length=8)
        theirs = modeling_pi0.PI0Pytorch(cfg)
    finally:
        mp.undo()
    inner = theirs.paligemma_with_expert.paligemma.model
    # Swap the So400m tower (their only option) for a small SigLIP and a projector to our VLM width.
    inner.vision_tower = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=SIGLIP.width, intermediate_size=SIGLIP.mlp_dim, num_hidden_layers=SIGLIP.depth,
        num_attention_heads=SIGLIP.num_heads, image_size=RES, patch_size=SIGLIP.patch_size,
        hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, vision_use_head=False))
    inner.multi_modal_projector.linear = torch.nn.Linear(SIGLIP.width, VLM.width)
    theirs = theirs.float().eval()
    ours = _ours(variants)
    sd = _lerobot_state_dict(ours)
    missing, unexpected = theirs.load_state_dict(sd, strict=False)
    # The only weights we do not set: the expert's unused LM head / embedding and tied lm_head copies.
    assert not unexpected, unexpected
    assert all(("lm_head" in k) or ("gemma_expert" in k and "embed" in k) for k in missing), missing
    return ours, theirs


def _inputs(model, batch=2):
    obs = make_obs(model.config, batch=batch, seed=3)
    images = [torch.from_numpy(np.asarray(obs.images[k]).transpose(0, 3, 1, 2).copy()) for k in model.config.image_keys]
    masks = [torch.from_numpy(np.asarray(obs.image_masks[k])) for k in model.config.image_keys]
    tok = torch.from_numpy(np.asarray(obs.tokenized_prompt).astype(np.int64))
    tok_mask = torch.from_numpy(np.asarray(obs.tokenized_prompt_mask))
    state = torch.from_numpy(np.asarray(obs.state))
    return obs, (images, masks, tok, tok_mask, state)


def _run_both_ways(fn):
    """fn() as LeRobot ships it, and with its time embedding computed in float32 (the reference's precision)."""
    as_is = fn()
    mp = pytest.MonkeyPatch()
    mp.setattr(modeling_pi0, "create_sinusoidal_pos_embedding", posemb_float32)
    try:
        f32 = fn()
    finally:
        mp.undo()
    return as_is, f32


def _report(name, a, b):
    d = float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())
    RESULTS[name] = d
    print(f"lerobot parity {name}: max abs diff {d:.3e} (max |value| {float(np.abs(np.asarray(a)).max()):.3f})")
    return d


def test_vision_tokens_match(pair):
    ours, theirs = pair
    obs, (images, *_rest) = _inputs(ours)
    with torch.no_grad():
        t = theirs.paligemma_with_expert.embed_image(images[0]).numpy()
    o = np.asarray(ours.PaliGemma.img(obs.images["base_0_rgb"]))
    assert _report("siglip_image_tokens", o, t) < 1e-5


def test_prompt_embedding(pair):
    """Both embed prompt tokens as the reference's Gemma embedder does: the table row times sqrt(width)
    (transformers' Gemma embedding applies the same scale, so LeRobot's ``embed_language_tokens`` is already
    scaled: measured ratio 1.000000)."""
    ours, theirs = pair
    obs, (_, _, tok, _, _) = _inputs(ours)
    with torch.no_grad():
        t = theirs.paligemma_with_expert.embed_language_tokens(tok).numpy()
    o = np.asarray(ours.PaliGemma.llm.embed(obs.tokenized_prompt))
    table = np.asarray(ours.PaliGemma.llm.embedder.input_embedding[...])
    np.testing.assert_allclose(o, table[np.asarray(obs.tokenized_prompt)] * np.sqrt(VLM.width), rtol=1e-6)
    assert _report("prompt_embedding", o, t) < 1e-5


def test_training_forward_matches(pair):
    ours, theirs = pair
    obs, (images, masks, tok, tok_mask, state) = _inputs(ours)
    rng = np.random.default_rng(9)
    actions = rng.normal(size=(2, H, A)).astype(np.float32)
    noise = rng.normal(size=(2, H, A)).astype(np.float32)
    time = np.array([0.25, 0.8], np.float32)
    def run():
        with torch.no_grad():
            return theirs.forward(images, masks, tok, tok_mask, state, torch.from_numpy(actions),
                                  torch.from_numpy(noise), torch.from_numpy(time)).numpy()  # [B, H, A]

    t, t32 = _run_both_ways(run)
    o = np.asarray(ours.compute_loss(jax.random.key(0), obs, jnp.asarray(actions), noise=jnp.asarray(noise),
                                     time=jnp.asarray(time)))
    # LeRobot's float64 time embedding differs from float32 by ~1e-4 at the 4e-3 period (argument ~ 1570 t).
    assert _report("loss_per_example_step", o, t.mean(-1)) < 1e-3
    # what remains is float32 summation order (losses are ~7 here: 1e-5 absolute is ~2e-6 relative)
    assert _report("loss_per_example_step_f32_time_embedding", o, t32.mean(-1)) < 5e-5


def test_sample_actions_matches(pair):
    ours, theirs = pair
    obs, (images, masks, tok, tok_mask, state) = _inputs(ours)
    noise = np.random.default_rng(11).normal(size=(2, H, A)).astype(np.float32)
    def run():
        with torch.no_grad():
            return theirs.sample_actions(images, masks, tok, tok_mask, state, noise=torch.from_numpy(noise),
                                         num_steps=10).numpy()

    t, t32 = _run_both_ways(run)
    o = np.asarray(ours.sample_actions(None, obs, noise=jnp.asarray(noise), num_steps=10))
    assert _report("sample_actions_10_steps", o, t) < 1e-3
    assert _report("sample_actions_10_steps_f32_time_embedding", o, t32) < 1e-4
    # Remaining difference: LeRobot sets t = 1 + k * dt, the reference accumulates t += dt in float32. Our
    # velocity field integrated on LeRobot's time grid:
    pre = ours.preprocess(None, obs, False)
    pmask, cache = ours.prefill(pre)
    x = jnp.asarray(noise)
    for k in range(10):
        x = x - 0.1 * ours._velocity_cached(pre, pmask, cache, x, jnp.float32(1.0 + k * -0.1))
    assert _report("sample_actions_10_steps_f32_time_embedding_same_time_grid", np.asarray(x), t32) < 2e-5
