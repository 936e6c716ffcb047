"""Reference-named parameter trees: round trip, checkpoint quirks, key-by-key errors, full-size counts."""

from __future__ import annotations

import jax  # a hard dependency: a broken install must fail, not skip
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_helpers import make_obs, tiny_model

from pi0cli.models import config as C
from pi0cli.models.params import (
    ParamTreeError,
    count_params,
    export_flat,
    export_params,
    flatten,
    import_params,
    unflatten,
)
from pi0cli.models.pi0 import Pi0


def _np_tree(model):
    return jax.tree.map(np.asarray, export_params(model))


def test_export_names_follow_reference_layout():
    flat = export_flat(tiny_model("pi0_tiny"))
    L = C.gemma_variant("tiny").depth
    assert flat["PaliGemma/llm/layers/attn/q_einsum/w"].shape == (L, 2, 32, 8)
    assert flat["PaliGemma/llm/layers/attn/kv_einsum_1/w"].shape == (L, 2, 1, 16, 8)
    assert flat["PaliGemma/llm/layers/mlp_1/gating_einsum"].shape == (L, 2, 16, 32)
    assert flat["PaliGemma/llm/layers/pre_attention_norm_1/scale"].shape == (L, 16)
    assert flat["PaliGemma/llm/embedder/input_embedding"].shape == (1024, 32)
    assert "PaliGemma/llm/final_norm_1/scale" in flat
    assert flat["PaliGemma/img/embedding/kernel"].shape == (8, 8, 3, 32)
    assert flat["PaliGemma/img/Transformer/encoderblock/MultiHeadDotProductAttention_0/query/kernel"].shape == (
        2, 32, 2, 16)
    assert flat["PaliGemma/img/head/kernel"].shape == (32, 32)
    assert flat["action_time_mlp_in/kernel"].shape == (32, 16)
    flat05 = export_flat(tiny_model("pi05_tiny"))
    assert flat05["PaliGemma/llm/layers/pre_ffw_norm_1/Dense_0/kernel"].shape == (L, 16, 48)
    assert flat05["PaliGemma/llm/final_norm_1/Dense_0/bias"].shape == (48,)
    assert "time_mlp_in/kernel" in flat05 and "state_proj/kernel" not in flat05


def test_export_import_round_trip_is_identity():
    src = tiny_model("pi0_tiny")
    dst = Pi0(C.preset("pi0_tiny"), nnx.Rngs(1))
    tree = _np_tree(src)
    pairs = zip(jax.tree.leaves(tree), jax.tree.leaves(_np_tree(dst)), strict=True)
    assert any(np.abs(a - b).max() > 0 for a, b in pairs)
    import_params(dst, tree)
    back = _np_tree(dst)
    assert flatten(back).keys() == flatten(tree).keys()
    for k, v in flatten(tree).items():
        np.testing.assert_array_equal(flatten(back)[k], v, err_msg=k)
    obs = make_obs(src.config, batch=1)
    noise = jnp.ones((src.config.action_horizon, src.config.action_dim))
    np.testing.assert_array_equal(np.asarray(src.sample_actions(None, obs, noise=noise)),
                                  np.asarray(dst.sample_actions(None, obs, noise=noise)))


def test_import_tolerates_value_leaves():
    src = tiny_model("pi0_tiny")
    tree = jax.tree.map(lambda a: {"value": np.asarray(a)}, export_params(src))
    dst = Pi0(C.preset("pi0_tiny"), nnx.Rngs(2))
    import_params(dst, tree)
    np.testing.assert_array_equal(np.asarray(export_flat(dst)["action_in_proj/kernel"]),
                                  np.asarray(export_flat(src)["action_in_proj/kernel"]))


def test_wrong_shape_names_the_key():
    model = tiny_model("pi0_tiny")
    flat = {k: np.asarray(v) for k, v in export_flat(model).items()}
    flat["PaliGemma/llm/layers/mlp_1/linear"] = np.zeros((2, 32, 17), np.float32)
    with pytest.raises(ParamTreeError, match=r"'PaliGemma/llm/layers/mlp_1/linear' has shape \(2, 32, 17\)"):
        import_params(model, unflatten(flat))


def test_wrong_name_names_the_key():
    model = tiny_model("pi0_tiny")
    before = np.asarray(export_flat(model)["state_proj/kernel"])
    flat = {k: np.asarray(v) for k, v in export_flat(model).items()}
    flat["state_projection/kernel"] = flat.pop("state_proj/kernel") + 1
    with pytest.raises(ParamTreeError) as err:
        import_params(model, unflatten(flat))
    msg = str(err.value)
    assert "missing key 'state_proj/kernel'" in msg and "unexpected key 'state_projection/kernel'" in msg
    np.testing.assert_array_equal(np.asarray(export_flat(model)["state_proj/kernel"]), before)  # nothing written


def test_missing_lora_can_be_filled_from_init():
    base = tiny_model("pi0_tiny")
    lora = nnx.clone(tiny_model("pi0_tiny_lora"))
    tree = _np_tree(base)
    with pytest.raises(ParamTreeError, match="lora_a"):
        import_params(lora, tree)
    import_params(lora, tree, missing_ok=("lora",))
    np.testing.assert_array_equal(np.asarray(export_flat(lora)["PaliGemma/llm/layers/mlp/linear"]),
                                  flatten(tree)["PaliGemma/llm/layers/mlp/linear"])


# ------------------------------------------------------------------------------------ full-size, abstract
def _counts(model):
    flat = export_flat(model)
    out = {"img": 0, "vlm": 0, "expert": 0, "proj": 0}
    for k, v in flat.items():
        n = int(np.prod(v.shape))
        if k.startswith("PaliGemma/img/"):
            out["img"] += n
        elif k.startswith("PaliGemma/llm/"):
            leaf_module = k.split("/")[-2] if k.split("/")[-1] in ("kernel", "bias") else k.split("/")[-2]
            is_expert = any(part.endswith("_1") for part in k.split("/")[2:])
            out["expert" if is_expert else "vlm"] += n
            del leaf_module
        else:
            out["proj"] += n
    return out


# Hand-derived from the reference shapes (facts §1/§3):
# SigLIP So400m/14 @224: patch conv 14*14*3*1152 + 1152; pos-emb 256*1152; per block: 2 LayerNorms 2*(2*1152),
# q/k/v/out 4*(1152*1152 + 1152), MLP 1152*4304 + 4304 + 4304*1152 + 1152; x27; encoder_norm 2*1152;
# head 1152*2048 + 2048.
IMG = (14 * 14 * 3 * 1152 + 1152) + 256 * 1152 + 27 * (
    2 * 2 * 1152 + 4 * (1152 * 1152 + 1152) + (1152 * 4304 + 4304 + 4304 * 1152 + 1152)
) + 2 * 1152 + (1152 * 2048 + 2048)
# Gemma 2b: embedder 257152*2048; per layer q 8*2048*256, kv 2*1*2048*256, out 8*256*2048, gating 2*2048*16384,
# linear 16384*2048, 2 norms 2*2048; x18; final_norm 2048.
VLM = 257152 * 2048 + 18 * (
    8 * 2048 * 256 + 2 * 2048 * 256 + 8 * 256 * 2048 + 2 * 2048 * 16384 + 16384 * 2048 + 2 * 2048) + 2048
# Gemma 300m expert (no embedder): per layer q 8*1024*256, kv 2*1024*256, out 8*256*1024, gating 2*1024*4096,
# linear 4096*1024, norms 2*1024 (pi0) or 2 adaRMS Dense 1024->3072 with bias (pi0.5); final norm likewise.
EXPERT_LAYER_NO_NORM = 8 * 1024 * 256 + 2 * 1024 * 256 + 8 * 256 * 1024 + 2 * 1024 * 4096 + 4096 * 1024
EXPERT_PI0 = 18 * (EXPERT_LAYER_NO_NORM + 2 * 1024) + 1024
ADA = 1024 * 3072 + 3072
EXPERT_PI05 = 18 * (EXPERT_LAYER_NO_NORM + 2 * ADA) + ADA
# Projections: action_in 32->1024, action_out 1024->32, and pi0: state_proj 32->1024, action_time_mlp_in
# 2048->1024, action_time_mlp_out 1024->1024; pi0.5: time_mlp_in/out 1024->1024 (all with bias).
PROJ_COMMON = (32 * 1024 + 1024) + (1024 * 32 + 32)
PROJ_PI0 = PROJ_COMMON + (32 * 1024 + 1024) + (2048 * 1024 + 1024) + (1024 * 1024 + 1024)
PROJ_PI05 = PROJ_COMMON + 2 * (1024 * 1024 + 1024)


@pytest.mark.parametrize("name,expected", [
    ("pi0", {"img": IMG, "vlm": VLM, "expert": EXPERT_PI0, "proj": PROJ_PI0}),
    ("pi05", {"img": IMG, "vlm": VLM, "expert": EXPERT_PI05, "proj": PROJ_PI05}),
])
def test_full_size_param_counts_abstract(name, expected):
    cfg = C.preset(name)
    model = nnx.eval_shape(lambda: Pi0(cfg, nnx.Rngs(0)))  # nothing allocated
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    assert _counts(model) == expected
    # the literal totals, for the record
    assert expected["img"] == 414_803_696
    assert expected["vlm"] == 2_508_531_712
    assert {"pi0": 311_464_960, "pi05": 427_932_672}[name] == expected["expert"]
    assert count_params(nnx.state(model, nnx.Param)) == sum(expected.values())
    flat = export_flat(model)
    assert flat["PaliGemma/img/Transformer/encoderblock/MultiHeadDotProductAttention_0/query/kernel"].shape == (
        27, 1152, 16, 72)
    assert flat["PaliGemma/llm/layers/attn/kv_einsum/w"].shape == (18, 2, 1, 2048, 256)
    assert flat["PaliGemma/llm/layers/attn/attn_vec_einsum_1/w"].shape == (18, 8, 256, 1024)
    assert flat["PaliGemma/llm/layers/mlp/gating_einsum"].shape == (18, 2, 2048, 16384)
