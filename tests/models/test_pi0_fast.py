"""pi0-FAST: parameter tree, prefix-LM loss, KV-cached decoding (both conventions), LoRA, import, overfitting."""

from __future__ import annotations

import dataclasses
import functools

import jax  # a hard dependency: a broken install must fail, not skip
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pi0cli.models import config as C
from pi0cli.models.freeze import freeze_mode_for, trainable_filter
from pi0cli.models.observation import ModelInputError, Observation
from pi0cli.models.params import count_params, export_flat, import_params
from pi0cli.models.pi0_fast import Pi0FAST, left_to_right_align, reference_decode_window


@functools.cache
def tiny(name: str = "pi0_fast_tiny", seed: int = 0, **overrides) -> Pi0FAST:
    return Pi0FAST(C.preset(name, **overrides), nnx.Rngs(seed))


def make_obs(cfg: C.Pi0Config, prefix: list[int], postfix: list[int] | None = None, *, seed: int = 0,
             masked: tuple[str, ...] = (), tokens: np.ndarray | None = None) -> Observation:
    """Random images; text row b = ``prefix[b]`` prompt tokens then ``postfix[b]`` action tokens, right-padded."""
    rng = np.random.default_rng(seed)
    b, length = len(prefix), cfg.token_len
    postfix = postfix or [0] * b
    h, w = cfg.image_resolution
    images = {k: jnp.asarray(rng.uniform(-1, 1, (b, h, w, 3)), jnp.float32) for k in cfg.image_keys}
    masks = {k: jnp.full((b,), k not in masked) for k in cfg.image_keys}
    if tokens is None:
        tokens = rng.integers(4, cfg.vlm.vocab_size, (b, length)).astype(np.int32)
    valid, ar = np.zeros((b, length), bool), np.zeros((b, length), np.int32)
    for i, (n, m) in enumerate(zip(prefix, postfix, strict=True)):
        valid[i, : n + m] = True
        ar[i, n : n + m] = 1
    return Observation(
        images=images, image_masks=masks, state=jnp.zeros((b, cfg.action_dim)),
        tokenized_prompt=jnp.asarray(np.where(valid, tokens, 0), jnp.int32), tokenized_prompt_mask=jnp.asarray(valid),
        token_ar_mask=jnp.asarray(ar), token_loss_mask=jnp.asarray(ar.astype(bool)),
    )


@nnx.jit(static_argnames=("steps", "decoding"))
def _generate(model, obs, steps, decoding):
    return model.generate(jax.random.key(0), obs, max_decoding_steps=steps, decoding=decoding, return_logits=True)


@nnx.jit
def _token_logits(model, obs):
    return model.token_logits(None, obs)


def teacher_forced(model: Pi0FAST, obs: Observation, prefix: list[int], generated: np.ndarray):
    """Uncached forward of prompt + generated tokens: argmax and logits at the positions predicting them."""
    cfg, k = model.config, generated.shape[1]
    prompt = np.asarray(obs.tokenized_prompt)
    tokens = prompt.copy()
    for b, n in enumerate(prefix):
        tokens[b, n : n + k] = generated[b]
    full = make_obs(cfg, prefix, [k] * len(prefix), tokens=tokens)
    full = dataclasses.replace(full, images=obs.images, image_masks=obs.image_masks)
    logits = np.asarray(_token_logits(model, full))
    picked = np.stack([logits[b, n - 1 : n - 1 + k] for b, n in enumerate(prefix)])
    return picked.argmax(-1), picked


# ------------------------------------------------------------------------------------------- parameter tree
def test_parameter_names_are_the_reference_tree():
    keys = set(export_flat(tiny()))
    llm = {f"PaliGemma/llm/{k}" for k in (
        "embedder/input_embedding", "final_norm/scale", "layers/attn/q_einsum/w", "layers/attn/kv_einsum/w",
        "layers/attn/attn_vec_einsum/w", "layers/mlp/gating_einsum", "layers/mlp/linear",
        "layers/pre_attention_norm/scale", "layers/pre_ffw_norm/scale")}
    assert {k for k in keys if "/llm/" in k} == llm
    assert all(k.startswith("PaliGemma/img/") for k in keys - llm)
    assert "PaliGemma/img/head/kernel" in keys and "PaliGemma/img/pos_embedding" in keys
    assert not any("_1" in k.split("/img/")[-1] for k in llm)


def test_full_size_parameter_counts_by_eval_shape():
    model = nnx.eval_shape(lambda: Pi0FAST(C.preset("pi0_fast"), nnx.Rngs(0)))
    flat = export_flat(model)
    assert flat["PaliGemma/llm/embedder/input_embedding"].shape == (257_152, 2048)
    assert flat["PaliGemma/llm/layers/attn/q_einsum/w"].shape == (18, 8, 2048, 256)
    assert flat["PaliGemma/llm/layers/attn/kv_einsum/w"].shape == (18, 2, 1, 2048, 256)
    assert flat["PaliGemma/llm/layers/mlp/gating_einsum"].shape == (18, 2, 2048, 16_384)
    assert flat["PaliGemma/img/Transformer/encoderblock/MultiHeadDotProductAttention_0/query/kernel"].shape == (
        27, 1152, 16, 72)
    gemma = sum(count_params(v) for k, v in flat.items() if "/llm/" in k)
    siglip = sum(count_params(v) for k, v in flat.items() if "/img/" in k)
    # Hand counts: Gemma 2B = 257152*2048 + 18*(q 4,194,304 + kv 1,048,576 + out 4,194,304 + gating 67,108,864
    # + linear 33,554,432 + norms 4,096) + 2,048; So400m/14 with its 1152->2048 head = 414,803,696.
    assert gemma == 2_508_531_712
    assert siglip == 414_803_696
    lora = nnx.eval_shape(lambda: Pi0FAST(C.preset("pi0_fast_lora"), nnx.Rngs(0)))
    lora_flat = export_flat(lora)
    adapters = sum(count_params(v) for k, v in lora_flat.items() if "lora" in k)
    # Per layer (rank 16): q 294,912 + kv 73,728 + out 294,912 + gating 589,824 + linear 294,912; 18 layers.
    assert adapters == 18 * 1_548_288
    trainable = nnx.state(lora, trainable_filter(freeze_mode_for(lora.config)))
    assert count_params(trainable) == adapters + siglip  # the reference freezes the LLM but not SigLIP


def test_create_model_dispatches_on_model_type():
    from pi0cli.models import create_model
    from pi0cli.models.pi0 import Pi0

    assert isinstance(nnx.eval_shape(lambda: create_model(C.preset("pi0_fast_tiny"), nnx.Rngs(0))), Pi0FAST)
    assert isinstance(nnx.eval_shape(lambda: create_model(C.preset("pi0_tiny"), nnx.Rngs(0))), Pi0)


def test_config_defaults_for_fast():
    cfg = C.Pi0Config(model_type="pi0_fast")
    assert cfg.image_keys == ("base_0_rgb", "base_1_rgb", "wrist_0_rgb") and cfg.token_len == 250
    assert cfg.suffix_len == 0 and cfg.fast and not cfg.pi05
    assert freeze_mode_for(C.preset("pi0_fast_tiny_lora")) == "lora_vlm"
    assert freeze_mode_for(C.preset("pi0_fast_tiny")) == "full"
    with pytest.raises(C.ModelConfigError, match="fast_decoding"):
        C.Pi0Config(model_type="pi0_fast", fast_decoding="nope")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------- the loss
def test_loss_is_postfix_cross_entropy_normalised_per_example():
    model = tiny()
    obs = make_obs(model.config, [9, 12], [6, 3], seed=1)
    loss = np.asarray(nnx.jit(lambda m, o: m.compute_loss(jax.random.key(0), o))(model, obs))
    logits = np.asarray(_token_logits(model, obs), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    tokens = np.asarray(obs.tokenized_prompt)
    for b, (n, m) in enumerate([(9, 6), (12, 3)]):
        # Hand computation: tokens n..n+m-1 are predicted by logits n-1..n+m-2; mean over the m of them.
        want = -np.mean([logp[b, j - 1, tokens[b, j]] for j in range(n, n + m)])
        np.testing.assert_allclose(loss[b], want, rtol=2e-5)


def test_state_dropout_hides_the_state_tokens_of_a_share_of_training_examples():
    model = tiny(state_dropout=0.5)
    b, prefix, postfix = 16, 12, 6
    base = make_obs(model.config, [prefix] * b, [postfix] * b, seed=3)
    state_mask = np.zeros(base.tokenized_prompt.shape, bool)
    state_mask[:, 4:prefix - 1] = True  # as FASTTokenizer.state_token_mask: the bins, not the last prefix token
    other_tokens = np.asarray(base.tokenized_prompt).copy()
    other_tokens[state_mask] = (other_tokens[state_mask] + 7) % model.config.vlm.vocab_size
    obs = dataclasses.replace(base, state_token_mask=jnp.asarray(state_mask))
    other = dataclasses.replace(obs, tokenized_prompt=jnp.asarray(other_tokens))
    loss = nnx.jit(lambda m, o, train: m.compute_loss(jax.random.key(5), o, train=train), static_argnums=2)

    changed = ~np.isclose(np.asarray(loss(model, obs, True)), np.asarray(loss(model, other, True)), rtol=1e-6)
    # Training: the examples whose state was dropped do not see their state tokens; the others do.
    assert 3 <= int(changed.sum()) <= b - 3
    # Inference and a model without dropout read every example's state.
    assert (~np.isclose(np.asarray(loss(model, obs, False)), np.asarray(loss(model, other, False)), rtol=1e-6)).all()
    plain = tiny()
    assert (~np.isclose(np.asarray(loss(plain, obs, True)), np.asarray(loss(plain, other, True)), rtol=1e-6)).all()
    # Without the mask there is nothing to hide: one clear error rather than a silent no-op.
    with pytest.raises(ModelInputError, match="state_token_mask"):
        loss(model, base, True)
    # state_input "hidden": no example sees its state, in training or at inference (decoding included).
    hidden = tiny(state_dropout=0.5, state_input="hidden")
    for train in (True, False):
        np.testing.assert_allclose(np.asarray(loss(hidden, obs, train)), np.asarray(loss(hidden, other, train)),
                                   rtol=1e-6)
    prompt_only = make_obs(hidden.config, [prefix] * 2, seed=3)
    state_mask_2 = jnp.asarray(state_mask[:2])
    a = dataclasses.replace(prompt_only, state_token_mask=state_mask_2)
    other_state = np.where(state_mask[:2], 5, np.asarray(a.tokenized_prompt))
    b = dataclasses.replace(a, tokenized_prompt=jnp.asarray(other_state))
    gen_a, gen_b = _generate(hidden, a, 6, "training"), _generate(hidden, b, 6, "training")
    np.testing.assert_array_equal(np.asarray(gen_a.tokens), np.asarray(gen_b.tokens))
    np.testing.assert_allclose(np.asarray(gen_a.logits), np.asarray(gen_b.logits), rtol=1e-5, atol=1e-5)
    seen_a, seen_b = _generate(model, a, 6, "training"), _generate(model, b, 6, "training")  # state visible
    assert not np.allclose(np.asarray(seen_a.logits), np.asarray(seen_b.logits), rtol=1e-5, atol=1e-5)


def test_hidden_state_tokens_take_no_positions_so_their_count_tells_nothing():
    """How many tokens a state's text takes varies with the state; hidden, that count must not reach the model."""
    model = tiny(state_dropout=0.5, state_input="hidden")
    rng = np.random.default_rng(4)
    head, tail = rng.integers(4, 300, 4).tolist(), rng.integers(4, 300, 1).tolist()
    postfix = rng.integers(4, 300, 5).tolist()
    rows, masks = [], []
    for span in (7, 9):  # the same visible tokens around state texts of 7 and of 9 tokens
        text = head + rng.integers(4, 300, span).tolist() + tail + postfix
        row = np.zeros(model.config.token_len, np.int32)
        row[: len(text)] = text
        rows.append(row)
        mask = np.zeros(model.config.token_len, bool)
        mask[len(head): len(head) + span] = True
        masks.append(mask)
    n_prefix = [len(head) + 7 + 1, len(head) + 9 + 1]
    obs = make_obs(model.config, n_prefix, [len(postfix)] * 2, seed=2, tokens=np.stack(rows))
    obs = dataclasses.replace(obs, images={k: jnp.broadcast_to(v[:1], v.shape) for k, v in obs.images.items()},
                              state_token_mask=jnp.asarray(np.stack(masks)))
    loss = np.asarray(nnx.jit(lambda m, o: m.compute_loss(jax.random.key(0), o))(model, obs))
    np.testing.assert_allclose(loss[0], loss[1], rtol=1e-5)
    # Decoding from the prefix alone: the same logits whichever count the hidden text had.
    prefix_only = make_obs(model.config, n_prefix, seed=2, tokens=np.stack(rows))
    prefix_only = dataclasses.replace(prefix_only, images=obs.images, state_token_mask=obs.state_token_mask)
    generated = _generate(model, prefix_only, 4, "training")
    np.testing.assert_allclose(np.asarray(generated.logits[0]), np.asarray(generated.logits[1]), rtol=1e-4, atol=1e-5)
    # Visible, the two rows differ (the check can fail).
    seen = np.asarray(nnx.jit(lambda m, o: m.compute_loss(jax.random.key(0), o))(tiny(), obs))
    assert not np.isclose(seen[0], seen[1], rtol=1e-5)


def test_prefix_lm_attention_and_padding():
    model = tiny()
    obs = make_obs(model.config, [9], [6], seed=2)
    base = np.asarray(_token_logits(model, obs))
    tokens = np.asarray(obs.tokenized_prompt).copy()
    tokens[0, 14] = (tokens[0, 14] + 1) % 1000 + 4  # the last postfix token
    changed = np.asarray(_token_logits(model, dataclasses.replace(obs, tokenized_prompt=jnp.asarray(tokens))))
    np.testing.assert_allclose(changed[0, :14], base[0, :14], atol=1e-5)  # nobody before it sees it
    tokens[0, 10] = (tokens[0, 10] + 1) % 1000 + 4  # an earlier postfix token: later ones see it
    changed = np.asarray(_token_logits(model, dataclasses.replace(obs, tokenized_prompt=jnp.asarray(tokens))))
    np.testing.assert_allclose(changed[0, :10], base[0, :10], atol=1e-5)  # the prefix cannot see the postfix
    assert np.abs(changed[0, 10:14] - base[0, 10:14]).max() > 1e-3
    tokens[0, 20] = 77  # padding (mask False) changes nothing
    padded = np.asarray(_token_logits(model, dataclasses.replace(obs, tokenized_prompt=jnp.asarray(tokens))))
    np.testing.assert_allclose(padded[0, :15], changed[0, :15], atol=1e-5)


# ------------------------------------------------------------------------------------------------ decoding
@pytest.mark.parametrize(("masked", "chunk"), [((), 128), (("base_1_rgb",), 128), (("base_1_rgb",), 8)])
def test_cached_decoding_equals_uncached_teacher_forced_argmax(masked, chunk):
    model = tiny()
    if chunk != 128:  # query-chunked attention (the full-size path) in both the forward and the cached steps
        chunked = tiny(attention_chunk=chunk)
        nnx.update(chunked, nnx.state(model))
        model = chunked
    prefix = [10, 13]
    obs = make_obs(model.config, prefix, seed=3, masked=masked)
    gen = _generate(model, obs, 8, "training")
    tokens, steps = np.asarray(gen.tokens), int(gen.steps)
    assert tokens.shape == (2, 8) and tokens.dtype == np.int32 and steps == 8
    argmax, logits = teacher_forced(model, obs, prefix, tokens)
    np.testing.assert_array_equal(argmax, tokens)  # token for token
    np.testing.assert_allclose(np.asarray(gen.logits), logits, atol=2e-4)


def test_reference_decoding_equals_training_decoding_without_masked_cameras():
    model = tiny()
    prefix = [10, 13]
    obs = make_obs(model.config, prefix, seed=4)
    ours = _generate(model, obs, 6, "training")
    offset0 = tiny(fast_reference_position_offset=0)
    nnx.update(offset0, nnx.state(model))
    ref = _generate(offset0, obs, 6, "reference")
    np.testing.assert_array_equal(np.asarray(ref.tokens), np.asarray(ours.tokens))
    np.testing.assert_allclose(np.asarray(ref.logits), np.asarray(ours.logits), atol=2e-4)
    # The reference's own offset (+1) feeds every decoded token one position later than training did.
    ref1 = _generate(model, obs, 6, "reference")
    np.testing.assert_allclose(np.asarray(ref1.logits)[:, 0], np.asarray(ours.logits)[:, 0], atol=2e-4)  # prefill
    assert np.abs(np.asarray(ref1.logits)[:, 1:] - np.asarray(ours.logits)[:, 1:]).max() > 1e-3


def test_reference_decoding_is_wrong_with_a_masked_camera():
    model = tiny()
    offset0 = tiny(fast_reference_position_offset=0)
    nnx.update(offset0, nnx.state(model))
    prefix = [10, 13]
    obs = make_obs(model.config, prefix, seed=5, masked=("base_1_rgb",))
    ref = _generate(offset0, obs, 6, "reference")
    _, forced = teacher_forced(model, obs, prefix, np.asarray(ref.tokens))
    assert np.abs(np.asarray(ref.logits) - forced).max() > 1e-3  # not what training computed
    ours = _generate(model, obs, 6, "training")
    _, forced = teacher_forced(model, obs, prefix, np.asarray(ours.tokens))
    np.testing.assert_allclose(np.asarray(ours.logits), forced, atol=2e-4)


def test_reference_window_attends_a_masked_camera():
    # Two 2-token cameras, the second masked, then 3 prompt tokens and one padding slot.
    mask = jnp.array([[1, 1, 0, 0, 1, 1, 1, 0]], bool)
    x = jnp.arange(8.0)[None, :, None]
    attn = mask[:, :, None] & mask[:, None, :]
    x_al, mask_al, _ = left_to_right_align(x, mask, attn)
    assert np.asarray(x_al)[0, :, 0].tolist() == [7, 0, 1, 2, 3, 4, 5, 6]
    window = np.asarray(reference_decode_window(mask_al))[0]
    valid = np.asarray(mask_al)[0]
    # The window is the last 5 slots: it takes in the masked camera (slots 3, 4) and misses the first (1, 2).
    assert window.tolist() == [False, False, False, True, True, True, True, True]
    assert valid.tolist() == [False, True, True, False, False, True, True, True]


def test_early_stop_and_sampling():
    import pi0cli.models.pi0_fast as fast_module

    model = tiny()
    obs = make_obs(model.config, [10, 10], seed=6)
    obs = dataclasses.replace(obs, images={k: jnp.broadcast_to(v[:1], v.shape) for k, v in obs.images.items()},
                              tokenized_prompt=jnp.broadcast_to(obs.tokenized_prompt[:1], obs.tokenized_prompt.shape))
    greedy = np.asarray(model.sample_actions(jax.random.key(0), obs, max_decoding_steps=6))
    assert (greedy[0] == greedy[1]).all()
    eos = int(greedy[0, 2])
    first = int(np.argmax(greedy[0] == eos))
    original = fast_module.EOS_TOKEN
    fast_module.EOS_TOKEN = eos  # read at trace time
    try:
        gen = model.generate(jax.random.key(0), obs, max_decoding_steps=6)
    finally:
        fast_module.EOS_TOKEN = original
    assert int(gen.steps) == first + 1  # every row emitted "EOS": stop
    assert (np.asarray(gen.tokens)[:, first + 1 :] == 0).all()
    hot = [np.asarray(model.sample_actions(jax.random.key(s), obs, max_decoding_steps=6, temperature=5.0))
           for s in range(2)]
    assert not np.array_equal(hot[0], hot[1])  # sampling draws


@pytest.mark.parametrize("decoding", ["training", "reference"])
def test_constrained_decoding_of_an_untrained_model_always_decodes(decoding):
    """Random weights emit garbage freely; under the chunk grammar every row of a batch is a chunk, greedy and
    sampled, in both conventions."""
    from test_fast_tokenizer import smooth_chunks, train_sentencepiece

    from pi0cli.models.fast_tokenizer import FastActionTokenizer
    from pi0cli.models.tokenizer import FASTTokenizer, PaligemmaTokenizer

    cfg = C.preset("pi0_fast_tiny", max_token_len=16, fast_decoding=decoding)
    model = tiny("pi0_fast_tiny", max_token_len=16, fast_decoding=decoding)
    fast = FastActionTokenizer.fit(list(smooth_chunks(100, horizon=cfg.action_horizon, dim=2)), scale=60.0,
                                   vocab_size=300)
    tok = FASTTokenizer(PaligemmaTokenizer(16, train_sentencepiece()), fast, max_len=16,
                        vocab_size=cfg.vlm.vocab_size)
    grammar = tok.chunk_grammar(cfg.action_horizon, 2, 64)
    obs = make_obs(cfg, [10, 14, 7], seed=3)
    free = np.asarray(model.sample_actions(jax.random.key(0), obs, max_decoding_steps=64))
    assert not any(tok.extract_actions(row, cfg.action_horizon, 2)[1] for row in free)
    for temperature in (0.0, 2.0):
        out = np.asarray(model.sample_actions(jax.random.key(1), obs, max_decoding_steps=64,
                                              temperature=temperature, grammar=grammar))
        assert all(tok.extract_actions(row, cfg.action_horizon, 2)[1] for row in out), out


# -------------------------------------------------------------------------------------- import, LoRA, train
def test_flat_reference_dict_imports_through_the_params_path():
    model = tiny()
    flat = {k: np.asarray(v) for k, v in export_flat(model).items()}  # openpi names, "/"-joined
    other = Pi0FAST(C.preset("pi0_fast_tiny"), nnx.Rngs(1))
    import_params(other, flat)
    obs = make_obs(model.config, [9], [4], seed=7)
    np.testing.assert_array_equal(np.asarray(_token_logits(other, obs)), np.asarray(_token_logits(model, obs)))


def test_lora_variant_trains_only_adapters_and_vision():
    model = tiny("pi0_fast_tiny_lora")
    flat = export_flat(model)
    assert "PaliGemma/llm/layers/attn/q_einsum/lora_a" in flat and "PaliGemma/llm/layers/mlp/linear_lora_b" in flat
    trainable = export_flat_state(nnx.state(model, trainable_filter(freeze_mode_for(model.config))))
    assert trainable and all("lora" in k or "/img/" in k for k in trainable)
    assert any("lora" in k for k in trainable)


def export_flat_state(state) -> dict:
    from pi0cli.models.params import flatten

    return flatten(nnx.to_pure_dict(state))


@pytest.mark.slow
def test_tiny_fast_model_overfits_one_batch():
    import optax
    from test_fast_tokenizer import smooth_chunks, train_sentencepiece

    from pi0cli.models.fast_tokenizer import FastActionTokenizer
    from pi0cli.models.tokenizer import FASTTokenizer, PaligemmaTokenizer

    cfg = C.preset("pi0_fast_tiny", max_token_len=48)
    chunks = smooth_chunks(2, seed=9, horizon=cfg.action_horizon, dim=3)
    fast = FastActionTokenizer.fit(list(smooth_chunks(200, horizon=cfg.action_horizon, dim=3)), vocab_size=300)
    tok = FASTTokenizer(PaligemmaTokenizer(48, train_sentencepiece()), fast, max_len=48,
                        vocab_size=cfg.vlm.vocab_size)
    prompts = ["fold the towel", "transfer cube"]
    rows = [tok.tokenize(p, np.array([0.1, -0.2, 0.3]), c) for p, c in zip(prompts, chunks, strict=True)]
    tokens, mask, ar, loss = (np.stack(x) for x in zip(*rows, strict=True))
    obs = make_obs(cfg, [1, 1], seed=10)
    obs = dataclasses.replace(obs, tokenized_prompt=jnp.asarray(tokens), tokenized_prompt_mask=jnp.asarray(mask),
                              token_ar_mask=jnp.asarray(ar), token_loss_mask=jnp.asarray(loss))
    model = Pi0FAST(cfg, nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, obs):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m.compute_loss(jax.random.key(0), obs)))(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer, obs)) for _ in range(150)]
    assert losses[-1] < 0.05 * losses[0] and losses[-1] < 0.1, losses[::25]
    # Greedy decoding from the prompt alone reproduces the postfix and so the chunks.
    n_prefix = (ar == 0).sum(1) - (~mask).sum(1)
    prompt = np.where(ar == 0, tokens, 0)
    pobs = dataclasses.replace(obs, tokenized_prompt=jnp.asarray(prompt), tokenized_prompt_mask=jnp.asarray(
        mask & (ar == 0)), token_ar_mask=jnp.zeros_like(obs.token_ar_mask))
    out = np.asarray(model.sample_actions(jax.random.key(0), pobs, max_decoding_steps=40))
    for b in range(2):
        postfix = tokens[b, n_prefix[b] : mask[b].sum()]
        assert out[b, : len(postfix)].tolist() == postfix.tolist()
        actions, ok = tok.extract_actions(out[b], cfg.action_horizon, 3)
        assert ok
        np.testing.assert_allclose(actions, fast.decode(fast.encode(chunks[b]))[0], atol=1e-9)
    # Its free greedy output is well formed, so constrained decoding picks the same tokens (up to each EOS;
    # a finished row then repeats EOS until every row has finished, and the loop stops: zeros after).
    grammar = tok.chunk_grammar(cfg.action_horizon, 3, 40)
    constrained = np.asarray(model.sample_actions(jax.random.key(0), pobs, max_decoding_steps=40, grammar=grammar))
    for b in range(2):
        n = int(mask[b].sum() - n_prefix[b])
        assert constrained[b, :n].tolist() == out[b, :n].tolist()
        assert set(constrained[b, n:].tolist()) <= {tok.paligemma.eos_id, 0}


@pytest.mark.slow
def test_parity_entry_points_on_the_reduced_reference_config():
    """The parity check's shape of call: dummy Gemma (full vocabulary), float32, max_token_len 48, the
    reference's flat parameter dict, compute_loss per example, greedy sample_actions -> token ids [B, K]."""
    cfg = C.preset("pi0_fast", paligemma_variant="dummy", dtype="float32", max_token_len=48,
                   fast_decoding="reference", siglip_variant="tiny", image_resolution=(32, 32))
    source = Pi0FAST(cfg, nnx.Rngs(0))
    flat = {k: np.asarray(v) for k, v in export_flat(source).items()}
    assert flat["PaliGemma/llm/embedder/input_embedding"].shape == (257_152, 64)
    model = Pi0FAST(cfg, nnx.Rngs(1))
    import_params(model, flat)
    obs = make_obs(cfg, [20, 25], [10, 5], seed=11)
    loss = model.compute_loss(jax.random.key(0), obs)
    assert loss.shape == (2,) and np.isfinite(np.asarray(loss)).all()
    prompt_only = make_obs(cfg, [20, 25], seed=11)
    tokens = model.sample_actions(jax.random.key(0), prompt_only, max_decoding_steps=5, temperature=0.0)
    assert tokens.shape == (2, 5) and tokens.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(tokens), np.asarray(
        source.sample_actions(jax.random.key(0), prompt_only, max_decoding_steps=5, temperature=0.0)))


def test_parity_config_with_the_full_so400m_traces():
    """The parity check's exact config (dummy Gemma, the full So400m/14 SigLIP at 224 px, float32, 48 tokens):
    the parameter tree and both entry points trace to the reference's shapes (abstractly: nothing allocated)."""
    cfg = C.preset("pi0_fast", paligemma_variant="dummy", dtype="float32", max_token_len=48,
                   fast_decoding="reference")
    assert cfg.siglip_variant == "So400m/14" and cfg.image_resolution == (224, 224)
    shapes = export_flat(nnx.eval_shape(lambda: Pi0FAST(cfg, nnx.Rngs(0))))
    assert shapes["PaliGemma/img/embedding/kernel"].shape == (14, 14, 3, 1152)
    assert shapes["PaliGemma/img/head/kernel"].shape == (1152, 64)
    assert shapes["PaliGemma/llm/embedder/input_embedding"].shape == (257_152, 64)
    assert shapes["PaliGemma/llm/layers/attn/q_einsum/w"].shape == (4, 8, 64, 16)
    assert shapes["PaliGemma/llm/layers/attn/kv_einsum/w"].shape == (4, 2, 1, 64, 16)
    obs = make_obs(cfg, [20, 25], [10, 5], seed=11)
    prompt_only = make_obs(cfg, [20, 25], seed=11)
    loss = jax.eval_shape(lambda: Pi0FAST(cfg, nnx.Rngs(0)).compute_loss(jax.random.key(0), obs))
    tokens = jax.eval_shape(lambda: Pi0FAST(cfg, nnx.Rngs(0)).sample_actions(
        jax.random.key(0), prompt_only, max_decoding_steps=7, temperature=0.0))
    assert (loss.shape, loss.dtype) == ((2,), jnp.float32)
    assert (tokens.shape, tokens.dtype) == ((2, 7), jnp.int32)


@pytest.mark.slow
def test_checkpoint_round_trips_are_bit_exact(tmp_path):
    """pi0 -> openpi -> pi0 layouts keep every FAST weight, the config and the FAST tokenizer files."""
    from pi0cli.convert.checkpoints import Checkpoint, read_checkpoint, write_checkpoint

    model = tiny()
    params = {k: np.asarray(v) for k, v in export_flat(model).items()}
    assets = tmp_path / "assets"
    (assets / "aloha_sim" / "fast_tokenizer").mkdir(parents=True)
    (assets / "aloha_sim" / "fast_tokenizer" / "processor_config.json").write_text('{"scale": 10}')
    (assets / "aloha_sim" / "norm_stats.json").write_text('{"norm_stats": {}}')  # beside it, copied as is
    ckpt = Checkpoint(params=params, model_config=model.config, source=tmp_path, format="pi0",
                      embodiment="aloha_sim", asset_id="aloha_sim", assets_dir=assets)
    first = write_checkpoint(ckpt, tmp_path / "pi0", "pi0")
    openpi = write_checkpoint(read_checkpoint(first), tmp_path / "openpi", "openpi")
    back = read_checkpoint(write_checkpoint(read_checkpoint(openpi), tmp_path / "back", "pi0"))
    assert back.model_config == model.config and back.model_config.fast
    assert set(back.params) == set(params)
    for key, value in params.items():
        assert back.params[key].dtype == value.dtype and np.array_equal(back.params[key], value), key
    assert (tmp_path / "back" / "assets" / "aloha_sim" / "fast_tokenizer" / "processor_config.json").read_text() \
        == '{"scale": 10}'
    restored = Pi0FAST(back.model_config, nnx.Rngs(3))
    import_params(restored, back.params)
    obs = make_obs(model.config, [9], [4], seed=8)
    np.testing.assert_array_equal(np.asarray(_token_logits(restored, obs)), np.asarray(_token_logits(model, obs)))


def test_build_any_model_holds_the_params():
    from pi0cli.models.params import ParamTreeError, build_any_model, build_model

    model = tiny()
    flat = {k: np.asarray(v) for k, v in export_flat(model).items()}
    built = build_any_model(model.config, flat)
    assert isinstance(built, Pi0FAST)
    obs = make_obs(model.config, [9], [4], seed=8)
    np.testing.assert_array_equal(np.asarray(_token_logits(built, obs)), np.asarray(_token_logits(model, obs)))
    with pytest.raises(ParamTreeError, match="build_any_model"):
        build_model(model.config, flat)


@pytest.mark.slow
def test_lerobot_round_trip_and_names(tmp_path):
    """pi0 -> LeRobot (model.safetensors in LeRobot's pi0_fast names: its PaliGemma, no expert) -> pi0, bit-exact;
    the full-size names are pi0's PaliGemma names, which the pi0 parity test checks against LeRobot."""
    pytest.importorskip("safetensors")
    from pi0cli.convert.checkpoints import Checkpoint, read_checkpoint, write_checkpoint
    from pi0cli.convert.lerobot_names import to_lerobot
    from pi0cli.models.pi0 import Pi0

    model = tiny()
    params = {k: np.asarray(v) for k, v in export_flat(model).items()}
    ckpt = Checkpoint(params=params, model_config=model.config, source=tmp_path, format="pi0")
    back = read_checkpoint(write_checkpoint(ckpt, tmp_path / "lerobot", "lerobot"))
    assert back.model_config == model.config
    assert all(np.array_equal(back.params[k], v) for k, v in params.items()) and set(back.params) == set(params)

    full = C.preset("pi0_fast")
    names = set(jax.eval_shape(lambda p: to_lerobot(p, full),
                               export_flat(nnx.eval_shape(lambda: Pi0FAST(full, nnx.Rngs(0))))))
    pi0 = C.preset("pi0")
    pi0_names = set(jax.eval_shape(lambda p: to_lerobot(p, pi0),
                                   export_flat(nnx.eval_shape(lambda: Pi0(pi0, nnx.Rngs(0))))))
    assert names == {n for n in pi0_names if ".paligemma." in n}

    from pi0cli.convert.checkpoints import _config_from_lerobot, lerobot_config

    droid = C.preset("pi0_fast", action_dim=8, action_horizon=10)
    (tmp_path / "full").mkdir()
    lerobot_config(droid)._save_pretrained(tmp_path / "full")  # LeRobot's own config.json (type pi0_fast)
    read = _config_from_lerobot(tmp_path / "full")
    assert (read.model_type, read.action_dim, read.action_horizon, read.token_len) == ("pi0_fast", 8, 10, 250)

    from pi0cli.convert.verify import verify

    result = verify(ckpt, back)  # pi0-FAST: loss and greedy tokens through both sides
    assert result.passed and result.compared == "loss and greedy tokens"
    assert set(result.differences.values()) == {0.0} and result.signal == 2 * 16
    broken = dict(back.params)
    gate = broken["PaliGemma/llm/layers/mlp/gating_einsum"]
    broken["PaliGemma/llm/layers/mlp/gating_einsum"] = gate[..., ::-1].copy()
    wrong = verify(ckpt, dataclasses.replace(back, params=broken))
    assert not wrong.passed and wrong.differences["lerobot (pi0-FAST JAX) loss"] > 1e-4
