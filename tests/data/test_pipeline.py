"""A dataset written by lerobot's writer round-trips through the full pipeline for every built-in robot."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from datahelpers import BUILTIN, HORIZON, LENGTHS, embodiment, model_config

from pi0cli.data.lerobot import LeRobotFrames, read_numeric
from pi0cli.data.stats import compute_norm_stats
from pi0cli.embodiment import MODEL_IMAGE_SLOTS
from pi0cli.errors import NormStatsError
from pi0cli.models.tokenizer import PaligemmaTokenizer
from pi0cli.normstats import NormStats
from pi0cli.pipeline import Pipeline, PipelineError, uses_quantile_norm
from pi0cli.transforms import stack_trees

RESOLUTION = (48, 64)  # not the 32x32 of the data: resize-with-pad runs


def _raw_chunk(root, emb, row: int) -> np.ndarray:
    numeric = read_numeric(root, [emb.action_key])
    episodes = numeric["episode_index"]
    end = int(np.flatnonzero(episodes == episodes[row])[-1])
    return numeric[emb.action_key][np.minimum(np.arange(row, row + HORIZON), end)]


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILTIN)
@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_round_trip_every_embodiment(name, model_type, datasets, sp_model_bytes):
    emb = embodiment(name)
    cfg = model_config(model_type, image_resolution=RESOLUTION, max_token_len=48 if model_type == "pi0" else 200)
    stats = compute_norm_stats(emb, datasets[name], horizon=HORIZON)
    tok = PaligemmaTokenizer(cfg.token_len, sp_model_bytes)
    pipe = Pipeline.create(emb, cfg, stats, tokenizer=tok)
    assert pipe.use_quantiles == (model_type != "pi0")
    frames = LeRobotFrames(datasets[name], action_key=emb.action_key, action_horizon=HORIZON)
    transform = pipe.training_inputs()
    rows = [0, LENGTHS[0] - 1, LENGTHS[0] + 3]
    examples = [transform(frames[i]) for i in rows]
    for row, ex in zip(rows, examples, strict=True):
        assert set(ex) == {"image", "image_mask", "state", "actions", "actions_is_pad", "tokenized_prompt",
                           "tokenized_prompt_mask"}
        assert list(ex["image"]) == list(MODEL_IMAGE_SLOTS)
        for slot in MODEL_IMAGE_SLOTS:
            assert ex["image"][slot].shape == (*RESOLUTION, 3) and ex["image"][slot].dtype == np.uint8
            assert ex["image_mask"][slot].dtype == bool
        used = {c.slot for c in emb.cameras if c.slot and c.key in emb.dataset_keys}
        assert {s for s in MODEL_IMAGE_SLOTS if ex["image_mask"][s]} == used
        # 32x32 frames fill 48x48 in the middle of 48x64; the side bands are zero padding.
        base = ex["image"]["base_0_rgb"]
        assert (base[:, :8] == 0).all() and (base[:, -8:] == 0).all() and base[:, 8:-8].any()
        assert ex["state"].shape == (32,) and ex["state"].dtype == np.float32
        assert (ex["state"][emb.state_dim:] == 0).all()
        assert ex["actions"].shape == (HORIZON, 32) and ex["actions"].dtype == np.float32
        assert (ex["actions"][:, emb.action_dim:] == 0).all()
        # Prompt tokens: the episode's task in the model's format (pi0.5 with the discretised state).
        item = frames[row]
        state_tokens = ex["state"][: emb.state_dim] if model_type == "pi05" else None
        want, want_mask = tok.tokenize(item["prompt"], state_tokens)
        assert ex["tokenized_prompt"].dtype == np.int32 and ex["tokenized_prompt_mask"].dtype == bool
        np.testing.assert_array_equal(ex["tokenized_prompt"], want)
        np.testing.assert_array_equal(ex["tokenized_prompt_mask"], want_mask)
        assert ex["tokenized_prompt"][0] == 2 and ex["tokenized_prompt_mask"].sum() < cfg.token_len
        # Outputs invert inputs: the model-space chunk goes back to the recorded robot actions.
        back = pipe.outputs()({"state": ex["state"], "actions": ex["actions"]})
        np.testing.assert_allclose(back["actions"], _raw_chunk(datasets[name], emb, row), rtol=1e-4, atol=1e-4)
    # Padding masks at the episode ends (chunks of 4; episodes of 9 and 5 frames).
    assert examples[0]["actions_is_pad"].tolist() == [False] * 4
    assert examples[1]["actions_is_pad"].tolist() == [False, True, True, True]
    assert examples[2]["actions_is_pad"].tolist() == [False, False, True, True]
    # Padded steps repeat the episode's last action (lerobot's padding), after every transform too.
    np.testing.assert_array_equal(examples[1]["actions"][1:], np.repeat(examples[1]["actions"][:1], 3, axis=0))
    batch = stack_trees(examples)
    assert batch["state"].shape == (3, 32) and batch["actions_is_pad"].shape == (3, HORIZON)
    assert batch["image_mask"]["base_0_rgb"].shape == (3,) and batch["tokenized_prompt"].shape == (3, cfg.token_len)


@pytest.mark.slow
def test_batch_builds_a_model_observation(datasets, sp_model_bytes):
    import jax

    from pi0cli.models.observation import Observation

    emb = embodiment("aloha")
    cfg = model_config("pi0")
    stats = compute_norm_stats(emb, datasets["aloha"], horizon=HORIZON)
    pipe = Pipeline.create(emb, cfg, stats, tokenizer=PaligemmaTokenizer(cfg.token_len, sp_model_bytes))
    frames = LeRobotFrames(datasets["aloha"], action_key=emb.action_key, action_horizon=HORIZON)
    batch = stack_trees([pipe.training_inputs()(frames[i]) for i in range(2)])
    obs = Observation.from_dict(jax.tree.map(np.asarray, batch))
    assert obs.images["base_0_rgb"].shape == (2, *cfg.image_resolution, 3)
    assert float(obs.images["base_0_rgb"].min()) >= -1.0 and obs.tokenized_prompt.shape == (2, cfg.token_len)


def _stats(dim: int, quantiles: bool = True) -> NormStats:
    rng = np.random.default_rng(dim)
    q01 = rng.uniform(-2, -1, dim)
    return NormStats(mean=rng.normal(size=dim), std=rng.uniform(0.5, 2, dim), q01=q01 if quantiles else None,
                     q99=(q01 + 3) if quantiles else None)


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_inference_round_trip_with_default_prompt(model_type, sp_model_bytes):
    emb = embodiment("aloha_sim")  # default prompt "Transfer cube"
    cfg = model_config(model_type)
    stats = {"state": _stats(14), "actions": _stats(14)}
    tok = PaligemmaTokenizer(cfg.token_len, sp_model_bytes)
    pipe = Pipeline.create(emb, cfg, stats, tokenizer=tok)
    obs = emb.example_observation(seed=1)
    obs.pop("prompt", None)
    ex = pipe.inference_inputs()(obs)
    assert "actions" not in ex and ex["state"].shape == (32,)
    if model_type == "pi0":
        np.testing.assert_array_equal(ex["tokenized_prompt"], tok.tokenize("Transfer cube")[0])
    robot_actions = np.random.default_rng(0).uniform(-1, 1, (HORIZON, 14)).astype(np.float32)
    # What the model would output for these robot actions: run them through the training-side transforms.
    model_side = pipe.robot_inputs()({**obs, "actions": robot_actions})
    from pi0cli.transforms import normalize, pad_to_dim

    model_actions = pad_to_dim(normalize(model_side["actions"], stats["actions"], pipe.use_quantiles), 32)
    out = pipe.outputs()({"state": ex["state"], "actions": model_actions})
    assert set(out) == {"actions"} and out["actions"].shape == (HORIZON, 14)
    np.testing.assert_allclose(out["actions"], robot_actions, rtol=1e-4, atol=1e-4)


def test_image_crop_cuts_non_wrist_cameras_before_the_resize(sp_model_bytes):
    from pi0cli.checkpoint import config_from_dict, config_to_dict
    from pi0cli.models.config import ModelConfigError
    from pi0cli.pipeline import ModelInputs

    image = np.zeros((100, 100, 3), np.uint8)
    image[40:60, 50:70] = 255  # a 20x20 square: the whole (0.4, 0.5, 0.2, 0.2) window
    data = {"image": {"base_0_rgb": image, "left_wrist_0_rgb": image},
            "image_mask": {"base_0_rgb": np.True_, "left_wrist_0_rgb": np.True_}, "state": np.zeros(14, np.float32)}
    out = ModelInputs((20, 20), 32, HORIZON, image_crop=(0.4, 0.5, 0.2, 0.2))(data)
    assert out["image"]["base_0_rgb"].min() == 255  # the window fills the model's image
    assert (out["image"]["left_wrist_0_rgb"] == 0).mean() > 0.9  # wrist cameras stay whole
    # The pipeline takes the crop from the model config (so serving crops as training did) ...
    cfg = model_config("pi0", image_crop=(0.4, 0.5, 0.2, 0.2), image_resolution=(32, 32))
    assert Pipeline.create(embodiment("aloha_sim"), cfg, None)._model_inputs().image_crop == (0.4, 0.5, 0.2, 0.2)
    # ... which survives the checkpoint's JSON form, and rejects windows outside the image.
    assert config_from_dict(config_to_dict(cfg)).image_crop == (0.4, 0.5, 0.2, 0.2)
    with pytest.raises(ModelConfigError, match="not a window inside the image"):
        model_config("pi0", image_crop=(0.5, 0.5, 0.6, 0.2))


def test_create_checks_dims_and_stats(sp_model_bytes):
    from pi0cli.models.config import preset

    emb = embodiment("aloha")
    with pytest.raises(PipelineError, match="14 state dims but the model's action_dim is 8"):
        Pipeline.create(emb, preset("pi0_tiny"), None)
    cfg = model_config("pi05")
    with pytest.raises(NormStatsError, match="'state' have 7 dims but embodiment 'aloha' has 14"):
        Pipeline.create(emb, cfg, {"state": _stats(7), "actions": _stats(14)})
    with pytest.raises(NormStatsError, match="quantile normalisation but the 'state' norm stats have no q01"):
        Pipeline.create(emb, cfg, {"state": _stats(14, False), "actions": _stats(14)})
    with pytest.raises(PipelineError, match="tokenizer max_len 5 differs"):
        Pipeline.create(emb, cfg, None, tokenizer=PaligemmaTokenizer(5, sp_model_bytes))
    with pytest.raises(NormStatsError, match="training needs norm stats"):
        Pipeline.create(emb, cfg, None).training_inputs()
    assert uses_quantile_norm("pi05") and not uses_quantile_norm("pi0")
    # The train config's override turns delta actions off.
    assert Pipeline.create(emb, cfg, None, delta_action_mask=()).delta_action_mask is None
    assert Pipeline.create(emb, dataclasses.replace(cfg), None).delta_action_mask == emb.delta_action_mask


def test_data_modules_import_light():
    import subprocess
    import sys

    code = ("import sys, pi0cli.pipeline, pi0cli.data, pi0cli.data.lerobot, pi0cli.data.loader, pi0cli.data.stats, "
            "pi0cli.data.synthetic, pi0cli.models.tokenizer, pi0cli.cli.norm_stats; "
            "print(sorted(m for m in ('jax', 'torch', 'lerobot', 'pyarrow', 'sentencepiece') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
