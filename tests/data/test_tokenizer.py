"""The PaliGemma prompt tokenizer formats (pi0 and pi0.5), padding, truncation and model lookup."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest

from pi0cli.models.tokenizer import (
    PaligemmaTokenizer,
    PromptTruncatedWarning,
    TokenizerError,
    clean_text,
    discretize_state,
    find_tokenizer_model,
)


def test_pi0_format_is_bos_text_newline(sp_model_bytes):
    tok = PaligemmaTokenizer(48, sp_model_bytes)
    tokens, mask = tok.tokenize("  pick_up the\ncube ")
    expected = [2, *tok.encode("pick up the cube"), *tok.encode("\n")]
    assert tokens.dtype == np.int32 and mask.dtype == bool and tokens.shape == mask.shape == (48,)
    assert tokens[: len(expected)].tolist() == expected
    assert mask.sum() == len(expected) and mask[: len(expected)].all()
    assert (tokens[len(expected):] == 0).all()


def test_pi05_format_has_discretised_state(sp_model_bytes):
    tok = PaligemmaTokenizer(200, sp_model_bytes)
    state = np.array([-1.5, -1.0, 0.0, 0.999, 1.0, 2.0])
    tokens, mask = tok.tokenize("Fold_towel", state)
    text = "Task: Fold towel, State: -1 0 128 255 255 255;\nAction: "
    expected = [2, *tok.encode(text)]
    assert tokens[: mask.sum()].tolist() == expected
    assert tok.decode(tokens[1 : mask.sum()]).split() == text.split()  # the tiny model folds "\n" into spaces


def test_discretize_matches_reference_formula():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.2, 1.2, 1000)
    ref = np.digitize(x, np.linspace(-1, 1, 257)[:-1]) - 1
    assert (discretize_state(x) == ref).all()
    assert discretize_state(np.array([-1.0, 1.0])).tolist() == [0, 255]


def test_truncation_warns_and_keeps_mask_full(sp_model_bytes):
    tok = PaligemmaTokenizer(5, sp_model_bytes)
    with pytest.warns(PromptTruncatedWarning, match="truncated to max_token_len 5"):
        tokens, mask = tok.tokenize("put the red block in the bowl and stack the cups")
    assert mask.all() and tokens[0] == 2 and tokens.shape == (5,)


def test_clean_text():
    assert clean_text("  a_b\nc  ") == "a b c"
    assert clean_text("Keep Case") == "Keep Case"


def test_picklable_and_loads_from_path_or_dir(sp_model_bytes, sp_model_path, tmp_path):
    tok = PaligemmaTokenizer(16, sp_model_path)
    again = pickle.loads(pickle.dumps(tok))
    assert again.tokenize("stack the cups")[0].tolist() == tok.tokenize("stack the cups")[0].tolist()
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "paligemma_tokenizer.model").write_bytes(sp_model_bytes)
    assert find_tokenizer_model(folder) == folder / "paligemma_tokenizer.model"
    assert PaligemmaTokenizer(16, folder).vocab_size == tok.vocab_size


def test_cache_lookup_and_offline_error(sp_model_bytes, tmp_path, monkeypatch):
    monkeypatch.setenv("PI0_CACHE_DIR", str(tmp_path / "pi0"))
    monkeypatch.setenv("OPENPI_DATA_HOME", str(tmp_path / "openpi"))
    monkeypatch.delenv("PI0_TOKENIZER", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TokenizerError, match="not found .*pi0/paligemma_tokenizer.model.*offline"):
        find_tokenizer_model()
    (tmp_path / "openpi" / "big_vision").mkdir(parents=True)
    (tmp_path / "openpi" / "big_vision" / "paligemma_tokenizer.model").write_bytes(sp_model_bytes)
    assert find_tokenizer_model().parent.name == "big_vision"
    with pytest.raises(TokenizerError, match="no tokenizer model at"):
        find_tokenizer_model(tmp_path / "missing.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="not a sentencepiece model"):
        PaligemmaTokenizer(8, bad)


def test_tokenizer_module_does_not_import_jax():
    import subprocess

    code = "import sys, pi0cli.models.tokenizer; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
