"""Initial weights from pi0/openpi checkpoints and PaliGemma .npz files."""

from __future__ import annotations

import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from pi0cli.models.config import preset
from pi0cli.models.params import ParamTreeError, export_flat, export_params, unflatten
from pi0cli.models.pi0 import Pi0
from pi0cli.training.weights import WeightsError, load_initial_weights


def _with_value_leaves(tree):
    return {k: _with_value_leaves(v) if isinstance(v, dict) else {"value": v} for k, v in tree.items()}


@pytest.fixture(scope="module")
def source_model():
    return Pi0(preset("pi0_tiny"), nnx.Rngs(1))


def test_openpi_checkpoint_with_value_leaves_loads_exactly(tmp_path, source_model):
    # An openpi training checkpoint: {"params": tree} with a trailing "value" per leaf.
    tree = {"params": _with_value_leaves(export_params(source_model))}
    ocp.PyTreeCheckpointer().save((tmp_path / "ckpt" / "params").absolute(), tree)
    target = Pi0(preset("pi0_tiny"), nnx.Rngs(2))
    load_initial_weights(target, tmp_path / "ckpt")
    want, got = export_flat(source_model), export_flat(target)
    for key in want:
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]), err_msg=key)


def test_full_checkpoint_starts_a_lora_model_with_fresh_adapters(tmp_path, source_model):
    ocp.PyTreeCheckpointer().save((tmp_path / "ckpt" / "params").absolute(), {"params": export_params(source_model)})
    lora = Pi0(preset("pi0_tiny_lora"), nnx.Rngs(3))
    load_initial_weights(lora, tmp_path / "ckpt")
    got = export_flat(lora)
    assert any("lora" in k for k in got)
    for key, value in export_flat(source_model).items():
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(value))


def test_paligemma_npz_fills_only_the_backbone(tmp_path, source_model):
    flat = {k: np.asarray(v) for k, v in export_flat(source_model).items()}
    backbone = {f"params/{k.removeprefix('PaliGemma/')}": v for k, v in flat.items()
                if k.startswith("PaliGemma/") and not any(p.endswith("_1") and not p.startswith(("LayerNorm", "Dense"))
                                                          for p in k.split("/"))}
    np.savez(tmp_path / "pt_224.npz", **backbone)
    target = Pi0(preset("pi0_tiny"), nnx.Rngs(4))
    fresh = {k: np.asarray(v) for k, v in export_flat(target).items()}
    load_initial_weights(target, tmp_path / "pt_224.npz")
    got = export_flat(target)
    for key in flat:
        expected = flat[key] if f"params/{key.removeprefix('PaliGemma/')}" in backbone else fresh[key]
        np.testing.assert_array_equal(np.asarray(got[key]), expected, err_msg=key)
    assert any(k.startswith("action_") for k in flat) and "PaliGemma/llm/final_norm_1/scale" in flat


def test_wrong_shape_is_named(tmp_path, source_model):
    flat = {k: np.asarray(v) for k, v in export_flat(source_model).items()}
    flat["action_in_proj/kernel"] = np.zeros((3, 3), np.float32)
    ocp.PyTreeCheckpointer().save((tmp_path / "bad" / "params").absolute(), {"params": unflatten(flat)})
    with pytest.raises(ParamTreeError, match="action_in_proj/kernel"):
        load_initial_weights(Pi0(preset("pi0_tiny"), nnx.Rngs(0)), tmp_path / "bad")


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        load_initial_weights(None, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="params/ item"):
        load_initial_weights(None, tmp_path / "empty")
