"""The FAST action tokenizer (DCT + BPE) and the pi0-FAST token sequences (hand-computed cases)."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pi0cli.models.fast_tokenizer import (
    FastActionTokenizer,
    FastTokenizerError,
    _dct_matrix,
    dct,
    evaluate,
    idct,
    quantization_error_bound,
)
from pi0cli.models.tokenizer import (
    FAST_SKIP_TOKENS,
    FASTTokenizer,
    PaligemmaTokenizer,
    PromptTruncatedWarning,
    TokenizerError,
    fast_clean_text,
    fast_image_slots,
)

H, D = 10, 7


def smooth_chunks(n: int, seed: int = 0, horizon: int = H, dim: int = D) -> np.ndarray:
    """Structured chunks like recorded robot motion: each dim a slow sinusoid plus a ramp, in about [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, horizon)[None, :, None]
    freq = rng.uniform(0.1, 1.5, (n, 1, dim))
    phase = rng.uniform(0, 2 * np.pi, (n, 1, dim))
    amp = rng.uniform(0.1, 0.8, (n, 1, dim))
    ramp = rng.uniform(-0.3, 0.3, (n, 1, dim))
    x = amp * np.sin(2 * np.pi * freq * t + phase) + ramp * t
    x[..., -1] = np.where(rng.uniform(size=(n, 1)) < 0.5, -1.0, 1.0)  # a binary gripper dim
    return np.clip(x, -1, 1)


@pytest.fixture(scope="module")
def fast() -> FastActionTokenizer:
    return FastActionTokenizer.fit(list(smooth_chunks(400)), vocab_size=512)


def train_sentencepiece() -> bytes:
    """A tiny sentencepiece model with Gemma's special ids (pad 0, eos 1, bos 2, unk 3)."""
    import sentencepiece

    corpus = ["Task: pick up the cube, State: 0 12 128 255;\n", "Action: ", "|", "fold the towel",
              "transfer cube", "open the drawer slowly", "0 1 2 3 4 5 6 7 8 9 10 100 127 128 192 255"] * 20
    buffer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=buffer, vocab_size=320, model_type="bpe", byte_fallback=True,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, hard_vocab_limit=False, minloglevel=2,
    )
    return buffer.getvalue()


@pytest.fixture(scope="module")
def paligemma() -> PaligemmaTokenizer:
    return PaligemmaTokenizer(48, train_sentencepiece())


# ------------------------------------------------------------------------------------------------ DCT, codec
def test_dct_is_the_orthonormal_dct_ii():
    x = np.random.default_rng(0).normal(size=(H, D))
    m = _dct_matrix(H)
    np.testing.assert_allclose(m @ m.T, np.eye(H), atol=1e-12)
    np.testing.assert_allclose(dct(x, axis=0), m @ x, atol=1e-12)
    np.testing.assert_allclose(idct(dct(x, axis=0), axis=0), x, atol=1e-12)


def test_round_trip_on_structured_chunks_is_within_the_quantization_bound(fast):
    chunks = smooth_chunks(200, seed=1)  # not the fitting chunks
    report = evaluate(fast, list(chunks))
    bound = quantization_error_bound(H, fast.scale)
    assert report.decode_failures == 0
    assert report.max_abs_error <= bound
    assert report.mean_tokens < H * D  # BPE compresses the 70 coefficients
    assert report.compression > 1.5


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float64, (H, D), elements=st.floats(-1, 1, allow_nan=False)))
def test_round_trip_on_random_chunks_is_within_the_quantization_bound(fast, chunk):
    # Random chunks reach DCT coefficients beyond the fitted range; values above it still encode (byte-level
    # alphabet), values below min_token are clipped: keep the test inside the representable range.
    coef = np.around(dct(chunk, axis=0) * fast.scale)
    if coef.min() < fast.min_token:
        chunk = chunk * 0.5
    tokens = fast.encode(chunk)
    result = fast.decode_with_status(tokens, time_horizon=H, action_dim=D)
    assert result.ok.all()
    assert np.abs(result.actions[0] - chunk).max() <= quantization_error_bound(H, fast.scale) + 1e-12


def test_fitting_is_deterministic():
    chunks = list(smooth_chunks(150, seed=3))
    a = FastActionTokenizer.fit(chunks, vocab_size=400)
    b = FastActionTokenizer.fit(chunks, vocab_size=400)
    assert a._json == b._json and a.min_token == b.min_token
    assert a.encode(np.stack(chunks)) == b.encode(np.stack(chunks))
    c = FastActionTokenizer.fit(chunks[:-1], vocab_size=400)
    assert c._json != a._json  # the test can tell tokenizers apart


def test_saved_directory_loads_back_with_identical_tokens(fast, tmp_path):
    fast.save(tmp_path / "fast")
    cfg = json.loads((tmp_path / "fast" / "processor_config.json").read_text())
    assert cfg["processor_class"] == "UniversalActionProcessor"
    assert {cfg["scale"], cfg["vocab_size"], cfg["min_token"]} == {fast.scale, 512, fast.min_token}
    assert json.loads((tmp_path / "fast" / "tokenizer.json").read_text())["model"]["type"] == "BPE"
    loaded = FastActionTokenizer.load(tmp_path / "fast")
    chunks = smooth_chunks(30, seed=5)
    assert loaded.encode(chunks) == fast.encode(chunks)
    np.testing.assert_array_equal(loaded.decode(fast.encode(chunks)), fast.decode(fast.encode(chunks)))
    again = pickle.loads(pickle.dumps(loaded))
    assert again.encode(chunks) == fast.encode(chunks)


def test_published_layout_without_optional_fields_loads(fast, tmp_path):
    """The hub directory carries extra keys (auto_map) and null shape fields; decoding then needs the shape."""
    d = tmp_path / "hub"
    d.mkdir()
    (d / "tokenizer.json").write_text(fast._json)
    (d / "processor_config.json").write_text(json.dumps({
        "auto_map": {"AutoProcessor": "processing_action_tokenizer.UniversalActionProcessor"},
        "processor_class": "UniversalActionProcessor", "scale": 10, "vocab_size": 512,
        "min_token": fast.min_token, "action_dim": None, "time_horizon": None,
    }))
    loaded = FastActionTokenizer.load(d)
    tokens = loaded.encode(smooth_chunks(2))
    with pytest.raises(FastTokenizerError, match="pass time_horizon and action_dim"):
        loaded.decode(tokens)
    assert loaded.decode(tokens, time_horizon=H, action_dim=D).shape == (2, H, D)


def test_bad_directories_name_the_problem(tmp_path):
    with pytest.raises(FastTokenizerError, match="not a FAST tokenizer directory"):
        FastActionTokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "processor_config.json").write_text("{}")
    with pytest.raises(FastTokenizerError, match="not a tokenizers JSON"):
        FastActionTokenizer.load(tmp_path)


def test_decode_failures_are_counted_and_give_zeros(fast):
    good = fast.encode(smooth_chunks(1))[0]
    result = fast.decode_with_status([good, good[:-3], [fast.bpe_vocab_size + 5]], time_horizon=H, action_dim=D)
    assert result.ok.tolist() == [True, False, False] and result.failures == 2
    assert (result.actions[1:] == 0).all() and np.abs(result.actions[0]).sum() > 0
    np.testing.assert_array_equal(fast.decode([good[:-3]], time_horizon=H, action_dim=D), np.zeros((1, H, D)))


def test_lenient_decoding_repairs_the_coefficient_count_at_the_highest_frequencies(fast):
    good = fast.encode(smooth_chunks(1))[0]
    text = fast._bpe.decode(good, skip_special_tokens=False)
    assert len(text) == H * D
    np.testing.assert_array_equal(fast.decode_one(good, H, D, lenient=True), fast.decode_one(good, H, D))

    def by_hand(values: list[int]) -> np.ndarray:  # zero coefficients after the given ones
        coef = np.asarray(values + [-fast.min_token] * (H * D - len(values)), np.float64) + fast.min_token
        return idct(coef.reshape(H, D) / fast.scale, axis=0)

    cut = next(k for k in range(len(good) - 1, 0, -1)  # the longest prefix that decodes to whole symbols
               if "\ufffd" not in fast._bpe.decode(good[:k], skip_special_tokens=False))
    short = fast._bpe.decode(good[:cut], skip_special_tokens=False)
    assert len(short) < H * D and fast.decode_one(good[:cut], H, D) is None
    np.testing.assert_allclose(fast.decode_one(good[:cut], H, D, lenient=True),
                               by_hand([ord(c) for c in short]), atol=1e-12)
    longer = good + good[:3]  # extra symbols beyond H * D are cut
    assert fast.decode_one(longer, H, D) is None
    np.testing.assert_allclose(fast.decode_one(longer, H, D, lenient=True), fast.decode_one(good, H, D), atol=1e-12)
    assert fast.decode_one([], H, D, lenient=True) is None  # nothing to repair


def test_fit_rejects_bad_input():
    with pytest.raises(FastTokenizerError, match="no action chunks"):
        FastActionTokenizer.fit([])
    with pytest.raises(FastTokenizerError, match="one shape"):
        FastActionTokenizer.fit([np.zeros((4, 2)), np.zeros((5, 2))])
    with pytest.raises(FastTokenizerError, match="below the 256 byte symbols"):
        FastActionTokenizer.fit([np.zeros((4, 2))], vocab_size=100)


# --------------------------------------------------------------------------------------- pi0-FAST tokenization
def test_prompt_cleaning_lowercases_and_keeps_newlines():
    assert fast_clean_text("  Pick_Up the Cube \n") == "pick up the cube"
    assert fast_clean_text("a\nb_c") == "a\nb c"


def test_id_mapping_is_the_top_of_the_vocabulary(paligemma, fast):
    ft = FASTTokenizer(paligemma, fast, max_len=64, vocab_size=1024)
    # Hand computation: 1024 - 1 - 128 - id.
    assert ft.fast_to_model_ids([0, 1, 5, 511]).tolist() == [895, 894, 890, 384]
    assert ft.model_to_fast_ids([895, 384]).tolist() == [0, 511]
    assert ft.is_action_id(np.array([896, 895, 384, 383, 3])).tolist() == [False, True, True, False, False]
    # The reference's PaliGemma vocabulary: FAST id 0 is 257023, below the last 128 special tokens.
    big = FASTTokenizer(paligemma, fast, vocab_size=257_152)
    assert big.fast_to_model_ids([0, 511]).tolist() == [257_152 - 1 - FAST_SKIP_TOKENS, 256_512]


def test_prefix_is_bos_task_and_state_bins(paligemma, fast):
    ft = FASTTokenizer(paligemma, fast, max_len=64, vocab_size=1024)
    state = np.array([-1.5, -1.0, 0.0, 0.5, 0.999, 1.0, 2.0])
    tokens, mask, ar, loss = ft.tokenize("Pick_up the CUBE", state)
    # Hand computation of the bins: digitize(s, linspace(-1, 1, 257)[:-1]) - 1.
    text = "Task: pick up the cube, State: -1 0 128 192 255 255 255;\n"
    expected = [2, *paligemma.encode(text)]
    n = len(expected)
    assert tokens.dtype == np.int32 and ar.dtype == np.int32 and mask.dtype == bool and loss.dtype == bool
    assert tokens.tolist() == expected + [0] * (64 - n)
    assert mask.tolist() == [True] * n + [False] * (64 - n)
    assert ar.tolist() == [0] * 64 and loss.tolist() == [False] * 64


@settings(max_examples=40, deadline=None)
@given(st.lists(hnp.arrays(np.float64, 5, elements=st.floats(-1.2, 1.2)), min_size=2, max_size=4),
       st.sampled_from(["fold the towel", "Transfer cube", "open the drawer slowly"]))
def test_state_token_mask_covers_every_state_token_and_nothing_else(paligemma, fast, states, prompt):
    ft = FASTTokenizer(paligemma, fast, max_len=64, vocab_size=1024)
    head = [2, *paligemma.encode(f"Task: {fast_clean_text(prompt)}, State:")]
    rows = [ft.tokenize(prompt, s) for s in states]
    masks = [ft.state_token_mask(prompt, s) for s in states]
    visible = []
    for (tokens, valid, _, _), mask in zip(rows, masks, strict=True):
        n = int(valid.sum())
        # The head (BOS, task, "State:") stays visible, and so does the prefix's last token.
        assert tokens[: len(head)].tolist() == head
        assert np.flatnonzero(mask).tolist() == list(range(len(head), n - 1))
        visible.append(tokens[valid & ~mask].tolist())
    # With the mask hidden, every state reads the same: nothing the state says leaks outside the mask.
    assert all(v == visible[0] for v in visible)


def test_state_token_mask_hides_exactly_the_bins(paligemma, fast):
    ft = FASTTokenizer(paligemma, fast, max_len=64, vocab_size=1024)
    state = np.array([-1.0, 0.0, 0.5, 1.0])
    tokens, valid, _, _ = ft.tokenize("Pick up the cube", state)
    mask = ft.state_token_mask("Pick up the cube", state)
    # Hand computation: the bins are -1+... -> 0 128 192 255 (see test_prefix_is_bos_task_and_state_bins).
    hidden_text = paligemma.decode(tokens[mask].tolist())
    visible_text = paligemma.decode(tokens[valid & ~mask].tolist()[1:])
    assert hidden_text.strip().startswith("0 128 192 255") and "Task" not in hidden_text
    assert visible_text.startswith("Task: pick up the cube, State:") and "192" not in visible_text
    assert not mask[int(valid.sum()) - 1:].any()  # the last prefix token and the padding stay as they are
    # Cut by max_len like the tokens.
    short = FASTTokenizer(paligemma, fast, max_len=10, vocab_size=1024).state_token_mask("Pick up the cube", state)
    assert short.shape == (10,) and short.tolist() == mask[:10].tolist()


def test_postfix_is_action_marker_mapped_ids_bar_eos(paligemma, fast):
    ft = FASTTokenizer(paligemma, fast, max_len=120, vocab_size=1024)
    state, chunk = np.zeros(3), smooth_chunks(1)[0]
    tokens, mask, ar, loss = ft.tokenize("fold the towel", state, chunk)
    prefix = [2, *paligemma.encode("Task: fold the towel, State: 128 128 128;\n")]
    mapped = [1024 - 1 - 128 - i for i in fast.encode(chunk)[0]]
    postfix = [*paligemma.encode("Action: "), *mapped, *paligemma.encode("|"), 1]
    n_p, n_a = len(prefix), len(postfix)
    pad = 120 - n_p - n_a
    assert tokens.tolist() == prefix + postfix + [0] * pad
    assert mask.tolist() == [True] * (n_p + n_a) + [False] * pad
    assert ar.tolist() == [0] * n_p + [1] * n_a + [0] * pad
    assert loss.tolist() == [False] * n_p + [True] * n_a + [False] * pad
    # Detokenizing the generated part (the postfix, then padding) gives the chunk back.
    actions, ok = ft.extract_actions(tokens[n_p:], H, D)
    assert ok
    np.testing.assert_allclose(actions, fast.decode(fast.encode(chunk), time_horizon=H, action_dim=D)[0])


def test_truncation_warns_and_cuts_every_mask(paligemma, fast):
    ft = FASTTokenizer(paligemma, fast, max_len=12, vocab_size=1024)
    chunk = smooth_chunks(1)[0]
    full = FASTTokenizer(paligemma, fast, max_len=200, vocab_size=1024).tokenize("fold", np.zeros(2), chunk)
    with pytest.warns(PromptTruncatedWarning, match="truncated to max_token_len 12"):
        tokens, mask, ar, loss = ft.tokenize("fold", np.zeros(2), chunk)
    assert tokens.tolist() == full[0][:12].tolist() and mask.all()
    assert ar.tolist() == full[2][:12].tolist() and loss.tolist() == full[3][:12].tolist()


def test_extraction_failures(paligemma, fast):
    ft = FASTTokenizer(paligemma, fast, max_len=64, vocab_size=1024)
    actions, ok = ft.extract_actions(np.array(paligemma.encode("no actions here") + [1, 0, 0]), H, D)
    assert not ok and (actions == 0).all() and actions.shape == (H, D)
    marker = paligemma.encode("Action: ")
    actions, ok = ft.extract_actions(np.array([*marker, 895, 894, 1]), H, D)  # too few tokens for a chunk
    assert not ok and (actions == 0).all()
    assert ft.action_ids([*marker, 895, 894, *paligemma.encode("|"), 1, 880]) == [0, 1]


def test_action_range_overlapping_text_ids_is_refused(paligemma, fast):
    with pytest.raises(TokenizerError, match="overlapping"):
        FASTTokenizer(paligemma, fast, vocab_size=700)  # 700 - 129 - 511 = 60 < 320 text ids


def test_camera_slots_for_fast():
    img = {k: np.full((4, 4, 3), i, np.uint8) for i, k in enumerate(["base_0_rgb", "left_wrist_0_rgb",
                                                                       "right_wrist_0_rgb"])}
    # DROID / LIBERO: no right wrist camera (zero image, mask False) -> base_1 zeros but shown, as the reference.
    images, masks = fast_image_slots({**img, "right_wrist_0_rgb": np.zeros((4, 4, 3), np.uint8)},
                                     {"base_0_rgb": True, "left_wrist_0_rgb": True, "right_wrist_0_rgb": False})
    assert list(images) == ["base_0_rgb", "base_1_rgb", "wrist_0_rgb"]
    assert (images["wrist_0_rgb"] == 1).all() and (images["base_1_rgb"] == 0).all()
    assert {k: bool(v) for k, v in masks.items()} == {"base_0_rgb": True, "base_1_rgb": True, "wrist_0_rgb": True}
    # ALOHA: the right wrist fills base_1; a robot without wrist cameras gets a masked zero wrist image.
    images, masks = fast_image_slots(img, {k: True for k in img})
    assert (images["base_1_rgb"] == 2).all()
    images, masks = fast_image_slots({"base_0_rgb": img["base_0_rgb"]}, {"base_0_rgb": True})
    assert not masks["wrist_0_rgb"] and masks["base_1_rgb"] and (images["wrist_0_rgb"] == 0).all()


def test_fast_action_outputs_count_failures(paligemma, fast):
    from pi0cli.models.tokenizer import FastActionOutputs, FastDecodeError

    ft = FASTTokenizer(paligemma, fast, max_len=120, vocab_size=1024)
    chunk = smooth_chunks(1)[0]
    tokens, _, ar, _ = ft.tokenize("fold", np.zeros(2), chunk)
    generated = np.concatenate([tokens[ar == 1], np.zeros(5, np.int32)])
    out = FastActionOutputs(ft, H, D, pad_to=32)({"actions": generated, "state": np.zeros(32)})
    assert out["actions"].shape == (H, 32) and out["decode_failures"] == 0 and (out["actions"][:, D:] == 0).all()
    assert out["action_tokens"] == int((ar == 1).sum())  # the generated tokens end with EOS; padding not counted
    np.testing.assert_allclose(out["actions"][:, :D], fast.decode(fast.encode(chunk))[0], atol=1e-6)
    bad = FastActionOutputs(ft, H, D, pad_to=32)({"actions": np.zeros(20, np.int32)})
    assert bad["decode_failures"] == 1 and (bad["actions"] == 0).all() and bad["action_tokens"] == 20  # no EOS
    with pytest.raises(FastDecodeError, match="no well-formed FAST action chunk"):
        FastActionOutputs(ft, H, D, on_failure="raise")({"actions": np.zeros(20, np.int32)})
    # One coefficient short: strict fails the chunk (the reference), lenient zero-fills the highest frequency.
    fast_ids = fast.encode(chunk)[0]
    cut = next(k for k in range(len(fast_ids) - 1, 0, -1)
               if "\ufffd" not in fast._bpe.decode(fast_ids[:k], skip_special_tokens=False))
    clipped = np.asarray([*paligemma.encode("Action: "), *ft.fast_to_model_ids(fast_ids[:cut]), paligemma.eos_id])
    strict = FastActionOutputs(ft, H, D, decode="strict")({"actions": clipped})
    lenient = FastActionOutputs(ft, H, D, decode="lenient")({"actions": clipped})
    assert strict["decode_failures"] == 1 and lenient["decode_failures"] == 0
    np.testing.assert_allclose(lenient["actions"], fast.decode_one(fast_ids[:cut], H, D, lenient=True), atol=1e-6)
    assert (strict["fast_decode"], lenient["fast_decode"]) == ("strict", "lenient")  # replies name their rule
    with pytest.raises(TokenizerError, match="one of strict, lenient, constrained; got 'loose'"):
        FastActionOutputs(ft, H, D, decode="loose")  # type: ignore[arg-type]  # the mistake under test


def test_fit_from_dataset_blocks_reports_error_and_compression():
    from pi0cli.models.fast_tokenizer import fit_from_blocks, select_evenly

    raw = smooth_chunks(300, seed=12) * 2.0 + 1.0  # "robot units": normalised back by the callable
    blocks = [raw[:100], raw[100:250], raw[250:]]
    tok, report = fit_from_blocks(blocks, normalize=lambda a: (a - 1.0) / 2.0, vocab_size=400, max_chunks=120)
    assert report.chunks == 120 and report.decode_failures == 0
    assert report.max_abs_error <= quantization_error_bound(H, 10.0) and report.compression > 1.5
    again, _ = fit_from_blocks(blocks, normalize=lambda a: (a - 1.0) / 2.0, vocab_size=400, max_chunks=120)
    assert again._json == tok._json
    assert select_evenly(10, 4).tolist() == [0, 3, 6, 9] and select_evenly(3, None).tolist() == [0, 1, 2]
    with pytest.raises(FastTokenizerError, match="no action chunks"):
        fit_from_blocks([np.zeros((0, H, D))], normalize=lambda a: a)


def test_round_trip_on_recorded_chunks_is_within_the_quantization_bound(monkeypatch):
    """Chunks of scripted ALOHA transfer-cube demonstrations (simulated, no rendering), quantile-normalised."""
    monkeypatch.setenv("MUJOCO_GL", "egl")
    scripted = pytest.importorskip("pi0_embodiment_aloha.sim.scripted")
    episodes = [scripted.run_script("transfer_cube", seed)[0] for seed in range(3)]
    chunks = np.concatenate([np.stack([ep[t : t + H] for t in range(0, len(ep) - H + 1, 2)]) for ep in episodes])
    flat = chunks.reshape(-1, chunks.shape[-1])
    q01, q99 = np.quantile(flat, 0.01, axis=0), np.quantile(flat, 0.99, axis=0)
    normalized = (chunks - q01) / (q99 - q01 + 1e-6) * 2 - 1  # the reference's quantile normalisation
    tok = FastActionTokenizer.fit(list(normalized), vocab_size=1024)
    report = evaluate(tok, list(normalized))
    assert report.decode_failures == 0
    assert report.max_abs_error <= quantization_error_bound(H, tok.scale)
    assert report.compression > 3  # smooth joint trajectories compress far better than random chunks


@pytest.mark.slow
def test_fit_on_a_lerobot_dataset(tmp_path):
    from pi0cli.data.stats import compute_norm_stats, fit_fast_tokenizer
    from pi0cli.data.synthetic import write_synthetic_dataset
    from pi0cli.models.fast_tokenizer import asset_path
    from pi0cli.plugins.manager import get_registry

    emb = get_registry().embodiment("droid")
    root = write_synthetic_dataset(tmp_path / "ds", emb, episodes=2, frames=(30, 20), seed=1)
    stats = compute_norm_stats(emb, root, horizon=10)
    tok, report = fit_fast_tokenizer(emb, root, stats, horizon=10, vocab_size=600)
    assert (tok.time_horizon, tok.action_dim) == (10, emb.action_dim)
    assert report.chunks == 50 and report.decode_failures == 0
    assert report.max_abs_error <= quantization_error_bound(10, tok.scale)
    saved = tok.save(asset_path(tmp_path / "assets", emb.asset_id))
    assert FastActionTokenizer.load(saved).files() == tok.files()
