"""Checkpoint conversion: exact round trips pi0 -> openpi -> pi0 and pi0 -> LeRobot -> pi0 (pi0 and pi0.5),
PaliGemma .npz into a fresh checkpoint, one-line errors, and ``--verify`` against LeRobot's PyTorch pi0."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from plugin_helpers import run_pi0

from pi0cli.convert import checkpoints as ck
from pi0cli.errors import ConversionError
from pi0cli.plugins.manager import load_registry
from pi0cli.testing import make_tiny_checkpoint, tiny_model_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def aloha():
    return load_registry().embodiment("aloha_sim")


def _checkpoint(tmp_path: Path, aloha, model: str = "pi0_tiny", **overrides) -> Path:
    config = dataclasses.replace(tiny_model_config(aloha, model), **overrides)
    return make_tiny_checkpoint(tmp_path / f"src_{model}", aloha, model_config=config, seed=3)


def _assert_same(a: ck.Checkpoint, b: ck.Checkpoint, dtype=None) -> None:
    assert sorted(a.params) == sorted(b.params)
    for key, value in a.params.items():
        want = value if dtype is None else value.astype(dtype)
        assert b.params[key].dtype == want.dtype, key
        assert np.array_equal(b.params[key], want), f"{key} changed"
    assert b.model_config == a.model_config
    assert (b.embodiment, b.asset_id, b.default_prompt, b.tokenizer) == (a.embodiment, a.asset_id, a.default_prompt,
                                                                         a.tokenizer)
    stats = lambda c: (c.assets_dir / c.asset_id / "norm_stats.json").read_text()  # noqa: E731
    assert stats(b) == stats(a)


@pytest.mark.parametrize("model", ["pi0_tiny", "pi05_tiny"])
@pytest.mark.parametrize("via", ["openpi", "lerobot"])
def test_round_trip_is_exact(tmp_path, aloha, model, via):
    source = ck.read_checkpoint(_checkpoint(tmp_path, aloha, model))
    middle = ck.write_checkpoint(source, tmp_path / via, via)
    assert ck.detect_format(middle) == via
    if via == "openpi":  # only the reference layout: params/ and assets/<asset_id>/
        assert sorted(p.name for p in middle.iterdir()) == ["assets", "params"]
    else:
        assert (middle / "model.safetensors").is_file() and not (middle / "config.json").exists()  # reduced sizes
    back = ck.write_checkpoint(ck.read_checkpoint(middle), tmp_path / "back", "pi0")
    _assert_same(source, ck.read_checkpoint(back))


def test_bfloat16_through_lerobot(tmp_path, aloha):
    import ml_dtypes

    source = ck.read_checkpoint(_checkpoint(tmp_path, aloha))
    middle = ck.write_checkpoint(source, tmp_path / "lr", "lerobot", dtype="bfloat16")
    from safetensors import safe_open

    with safe_open(str(middle / "model.safetensors"), "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"BF16"}
    _assert_same(source, ck.read_checkpoint(middle), dtype=ml_dtypes.bfloat16)


def test_lerobot_names_follow_lerobot(tmp_path, aloha):
    """Spot checks of the mapping by hand: torch Linear weights are [out, in]; q heads are flattened head-major."""
    from pi0cli.convert.lerobot_names import to_lerobot

    source = ck.read_checkpoint(_checkpoint(tmp_path, aloha))
    sd = to_lerobot(source.params, source.model_config)
    cfg = source.model_config
    q = source.params["PaliGemma/llm/layers/attn/q_einsum/w"][1]  # [N, D, Hd]
    got = sd["model.paligemma_with_expert.paligemma.model.language_model.layers.1.self_attn.q_proj.weight"]
    for head in range(cfg.vlm.num_heads):
        np.testing.assert_array_equal(got[head * cfg.vlm.head_dim:(head + 1) * cfg.vlm.head_dim], q[head].T)
    np.testing.assert_array_equal(sd["model.action_out_proj.weight"], source.params["action_out_proj/kernel"].T)
    np.testing.assert_array_equal(sd["model.paligemma_with_expert.paligemma.lm_head.weight"],
                                  source.params["PaliGemma/llm/embedder/input_embedding"])


def test_reference_checkpoint_needs_model(tmp_path, aloha):
    """A checkpoint written by openpi itself has no pi0 config: the error names --model; with it, it reads."""
    src = _checkpoint(tmp_path, aloha)
    openpi = ck.write_checkpoint(ck.read_checkpoint(src), tmp_path / "openpi", "openpi")
    (openpi / "assets" / "pi0_config.json").unlink()
    with pytest.raises(ConversionError, match="--model pi0"):
        ck.read_checkpoint(openpi)
    read = ck.read_checkpoint(openpi, model=tiny_model_config(aloha))
    assert read.format == "openpi" and read.embodiment is None


def _paligemma_npz(path: Path, config, seed: int = 7, drop: str | None = None, reshape: str | None = None) -> dict:
    """A big_vision-layout .npz holding exactly the VLM backbone of ``config`` (random values)."""
    from pi0cli.convert.checkpoints import _expert_key
    from pi0cli.models.params import flatten
    from pi0cli.testing import random_params

    rng = np.random.default_rng(seed)
    flat = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in flatten(random_params(config)).items()
            if k.startswith("PaliGemma/") and not _expert_key(k)}
    arrays = {"params/" + k.removeprefix("PaliGemma/"): v for k, v in flat.items() if k != drop}
    if reshape:
        arrays["params/" + reshape.removeprefix("PaliGemma/")] = np.zeros((3, 3), np.float32)
    np.savez(path, **arrays)
    return flat


def test_paligemma_npz_becomes_the_backbone(tmp_path, aloha):
    from pi0cli.models.config import preset

    config = preset("pi0_tiny")
    backbone = _paligemma_npz(tmp_path / "pt_224.npz", config)
    out = run_pi0("convert", "checkpoint", str(tmp_path / "pt_224.npz"), "--model", "pi0_tiny", "--out",
                  str(tmp_path / "fresh"), "--seed", "1")
    assert out.returncode == 0, out.stderr
    assert "no norm stats" in out.stderr
    fresh = ck.read_checkpoint(tmp_path / "fresh")
    for key, value in backbone.items():
        np.testing.assert_array_equal(fresh.params[key], value)
    expert = [k for k in fresh.params if k not in backbone]
    assert any("_1" in k for k in expert) and "action_in_proj/kernel" in expert
    again = ck.paligemma_params(tmp_path / "pt_224.npz", config, seed=1)
    for key in expert:  # the rest comes from the seed, reproducibly
        np.testing.assert_array_equal(fresh.params[key], again[key])


def test_bad_inputs_get_one_line(tmp_path, aloha):
    from pi0cli.models.config import preset

    key = "PaliGemma/llm/layers/mlp/linear"
    _paligemma_npz(tmp_path / "missing.npz", preset("pi0_tiny"), drop=key)
    _paligemma_npz(tmp_path / "shape.npz", preset("pi0_tiny"), reshape="PaliGemma/img/head/bias")
    (tmp_path / "empty").mkdir()
    cases = {
        ("convert", "checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "o1")): "nothing does not exist",
        ("convert", "checkpoint", str(tmp_path / "empty"), "--out", str(tmp_path / "o2")): "has no params/",
        ("convert", "checkpoint", str(tmp_path / "missing.npz"), "--model", "pi0_tiny", "--out", str(tmp_path / "o3")):
            "llm/layers/mlp/linear",
        ("convert", "checkpoint", str(tmp_path / "shape.npz"), "--model", "pi0_tiny", "--out", str(tmp_path / "o4")):
            "img/head/bias' has shape (3, 3)",
        ("convert", "checkpoint", str(tmp_path / "shape.npz"), "--out", str(tmp_path / "o5")): "--model pi0",
        ("convert", "checkpoint", str(tmp_path / "shape.npz"), "--model", "pi1", "--out", str(tmp_path / "o6")):
            "pi1",
    }
    for args, needle in cases.items():
        result = run_pi0(*args)
        assert result.returncode == 1, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr and needle in lines[0], (args, result.stderr)
    usage = run_pi0("convert", "checkpoint", str(tmp_path / "empty"), "--out", str(tmp_path / "o7"), "--to", "onnx")
    assert usage.returncode == 2 and "onnx" in usage.stderr
    assert not any(p.name.startswith(("o", ".o")) for p in tmp_path.iterdir())  # nothing half-written


def test_existing_output_is_kept_without_overwrite(tmp_path, aloha):
    src = _checkpoint(tmp_path, aloha)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    result = run_pi0("convert", "checkpoint", str(src), "--to", "openpi", "--out", str(tmp_path / "taken"))
    assert result.returncode == 1 and "--overwrite" in result.stderr
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def _diffs(stdout: str) -> dict[str, float]:
    return {m.group(1).strip(): float(m.group(2))
            for m in re.finditer(r"│\s*([^│]+?)\s*│\s*([0-9.e+-]+)\s*│\s*(?:ok|info|FAIL)\s*│", stdout)}


@pytest.mark.slow
@pytest.mark.parametrize("model", ["pi0_tiny", "pi05_tiny"])
def test_verify_against_lerobot_pytorch(tmp_path, aloha, model):
    """pi0 (JAX) -> LeRobot directory -> LeRobot's own PyTorch pi0 / pi0.5 agrees to <= 1e-4 in float32 (8-head
    config, as LeRobot's joint attention requires). The way back is bit-exact (test_round_trip_is_exact)."""
    pytest.importorskip("lerobot.policies.pi0.modeling_pi0")
    src = _checkpoint(tmp_path, aloha, model, paligemma_variant="dummy", action_expert_variant="dummy")
    to_lr = run_pi0("convert", "checkpoint", str(src), "--to", "lerobot", "--out", str(tmp_path / "lr"), "--verify",
                    env={"COLUMNS": "200"})
    assert to_lr.returncode == 0, to_lr.stderr
    diffs = _diffs(to_lr.stdout)
    print(to_lr.stdout)
    assert diffs["lerobot (pi0 JAX)"] == 0.0
    assert diffs["lerobot (LeRobot PyTorch, float32 time embedding)"] <= 1e-4
    assert diffs["lerobot (LeRobot PyTorch, as shipped)"] <= 1e-3
    assert "verified" in to_lr.stdout
    signal = float(re.search(r"max \|action - noise\| ([0-9.]+)", to_lr.stdout).group(1))
    assert signal > 0.1  # the model moves the noise far more than the tolerance: the comparison sees the weights


@pytest.mark.slow
def test_verify_fails_on_a_wrong_conversion(tmp_path, aloha):
    """A conversion that swaps two weights is caught by --verify (and its output removed)."""
    from pi0cli.convert.verify import verify

    source = ck.read_checkpoint(_checkpoint(tmp_path, aloha))
    broken = dict(source.params)
    gate = broken["PaliGemma/llm/layers/mlp_1/gating_einsum"]
    broken["PaliGemma/llm/layers/mlp_1/gating_einsum"] = gate[:, ::-1].copy()
    result = verify(source, dataclasses.replace(source, params=broken, format="openpi"))
    assert not result.passed and result.differences["openpi (pi0 JAX)"] > 1e-3


@pytest.mark.slow
def test_full_size_mapping_is_complete():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "check_lerobot_mapping.py")], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pi0: 50 pi0 arrays (3,238,048,528 parameters) <-> 778 LeRobot weights: complete" in result.stdout
    assert "pi05: 51 pi0 arrays" in result.stdout and result.stdout.count("complete, every shape matches") == 2


def test_pi0_config_json_is_kept(tmp_path, aloha):
    src = _checkpoint(tmp_path, aloha)
    out = ck.write_checkpoint(ck.read_checkpoint(src), tmp_path / "lr", "lerobot")
    saved = json.loads((out / "pi0_config.json").read_text())
    assert saved["embodiment"] == "aloha_sim" and saved["metadata"]["converted_from"].startswith("pi0:")


@pytest.mark.parametrize("model", ["pi0", "pi05"])
def test_lerobot_config_json_round_trip(tmp_path, model):
    """A policy directory written by LeRobot itself describes the model in its config.json only."""
    from pi0cli.models.config import preset

    config = preset(model, action_horizon=10, dtype="float32")
    ck.lerobot_config(config)._save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["type"] == model and data["chunk_size"] == 10
    read = ck._config_from_lerobot(tmp_path)
    assert read.token_len == config.token_len and dataclasses.replace(read, max_token_len=None) == config


def test_lerobot_state_dict_variants(tmp_path, aloha):
    """Files saved by LeRobot may drop the ``model.`` prefix and keep the tied embedding as embed_tokens."""
    from pi0cli.convert.lerobot_names import EMBED_TOKENS, LM_HEAD, NameMapError, from_lerobot, to_lerobot

    source = ck.read_checkpoint(_checkpoint(tmp_path, aloha))
    sd = {k.removeprefix("model."): v for k, v in to_lerobot(source.params, source.model_config).items()}
    sd[EMBED_TOKENS] = sd.pop(LM_HEAD)
    back = from_lerobot(sd, source.model_config)
    assert all(np.array_equal(back[k], v) for k, v in source.params.items())
    sd["paligemma_with_expert.gemma_expert.model.layers.0.extra.weight"] = np.zeros(3)
    with pytest.raises(NameMapError, match="no pi0 counterpart"):
        from_lerobot(sd, source.model_config)
