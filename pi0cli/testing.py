"""pytest plugin for pi0 and for robot-plugin authors (loaded automatically through the ``pytest11`` entry
point once pi0 is installed).

In a plugin's own tests::

    from pi0cli.testing import check_embodiment
    from my_robot_plugin import MY_ROBOT

    def test_my_robot_conforms():
        check_embodiment(MY_ROBOT)

Fixtures: ``pi0_registry`` (a fresh, empty plugin registry installed as the process-wide one for the test,
with ``PI0_LOAD_PLUGINS`` set empty so nothing installed leaks in).

Test data: :func:`make_tiny_checkpoint` writes a random-weight policy checkpoint for any embodiment (a tiny
model, no JAX compilation), which ``pi0 serve --checkpoint`` and :func:`pi0cli.policy.load_policy` load.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from pi0cli.embodiment import MODEL_IMAGE_SLOTS, Embodiment
from pi0cli.errors import ObservationError
from pi0cli.normstats import NormStats
from pi0cli.transforms import has_path, lookup, pad_to_dim, to_absolute_actions, to_delta_actions

if TYPE_CHECKING:
    from pi0cli.models.config import Pi0Config
    from pi0cli.plugins.manager import Registry

#: Action dim of the pi0 models (robot vectors are zero-padded to it).
MODEL_ACTION_DIM = 32


class ConformanceError(AssertionError):
    """An embodiment that breaks the contract; the message names the embodiment and the rule."""


def check_embodiment(embodiment: Embodiment, *, action_horizon: int = 10, seed: int = 0) -> None:
    """Check that ``embodiment`` keeps its own contract; raises :class:`ConformanceError` on the first break.

    Checks: the example observation validates; the input transform yields the model format (every image
    slot as uint8 HxWx3 with a bool mask, the state vector of ``state_dim``, actions ``[H, action_dim]``)
    and leaves its input untouched; the output transform inverts the input transform's action encoding and
    drops the model's padding; delta and absolute actions invert each other under the declared mask; a
    dataset row built from the key map repacks into the same observation; bad observations are rejected;
    the description is JSON.
    """
    name = embodiment.name

    def fail(rule: str) -> None:
        raise ConformanceError(f"embodiment {name!r}: {rule}")

    if not isinstance(embodiment, Embodiment):
        raise ConformanceError(f"expected a pi0cli.Embodiment, got {type(embodiment).__name__}")
    rng = np.random.default_rng(seed)
    obs = embodiment.example_observation(seed)
    try:
        embodiment.validate_observation(obs)
    except ObservationError as exc:
        fail(f"its example observation is invalid: {exc}")

    before = copy.deepcopy(obs)
    model = embodiment.inputs(obs)
    if not _same(before, obs):
        fail("the input transform modified its input (transforms must be pure)")
    _check_model_format(embodiment, model, fail)

    # Actions: inputs encode robot actions into model space; outputs must decode them back exactly.
    actions = rng.uniform(-1.0, 1.0, size=(action_horizon, embodiment.action_dim)).astype(np.float32)
    model = embodiment.inputs({**obs, "actions": actions})
    model_actions = np.asarray(model.get("actions"))
    if model_actions.shape != (action_horizon, embodiment.action_dim):
        fail(f"input transform must keep actions as [{action_horizon}, {embodiment.action_dim}], got "
             f"{model_actions.shape}")
    if embodiment.delta_action_mask is not None:
        delta = to_delta_actions(model_actions, model["state"], embodiment.delta_action_mask)
        back = to_absolute_actions(delta, model["state"], embodiment.delta_action_mask)
        if not np.allclose(back, model_actions, atol=1e-5):
            fail("absolute(delta(actions)) does not give the actions back")
    padded = {"actions": pad_to_dim(model_actions, MODEL_ACTION_DIM),
              "state": pad_to_dim(model["state"], MODEL_ACTION_DIM)}
    robot_actions = np.asarray(embodiment.outputs(padded).get("actions"))
    if robot_actions.shape != (action_horizon, embodiment.action_dim):
        fail(f"output transform must return actions [{action_horizon}, {embodiment.action_dim}], got "
             f"{robot_actions.shape}")
    error = float(np.max(np.abs(robot_actions - actions)))
    if error > 1e-5:
        fail(f"outputs(inputs(actions)) differs from the actions by {error:.3g}; the output transform must invert the "
             "input transform")

    # Dataset rows: the key map must lead back to the same observation.
    row = {column: lookup(obs, key) for key, column in embodiment.dataset_keys.items()
           if key != "actions" and has_path(obs, key)}
    row[embodiment.action_key] = actions
    repacked = embodiment.repack(row)
    try:
        embodiment.validate_observation(repacked)
    except ObservationError as exc:
        fail(f"a dataset row repacked with dataset_keys is not a valid observation: {exc}")
    if not np.array_equal(embodiment.inputs(repacked)["state"], embodiment.inputs(obs)["state"]):
        fail("a dataset row repacked with dataset_keys gives another state than the observation it came from")

    # Bad observations must be rejected, naming the key.
    first_state = embodiment.state[0].key
    broken = _replace(obs, first_state, np.zeros(embodiment.state[0].dim + 1, np.float32))
    _expect_rejected(embodiment, broken, first_state, fail)
    required = [c for c in embodiment.cameras if c.required]
    if required:
        _expect_rejected(embodiment, _drop(obs, required[0].key), required[0].key, fail)

    try:
        json.dumps(embodiment.describe())
    except TypeError as exc:
        fail(f"describe() is not JSON-serialisable: {exc}")


def _check_model_format(embodiment: Embodiment, model: dict[str, Any], fail) -> None:
    for key in ("image", "image_mask", "state"):
        if key not in model:
            fail(f"input transform output lacks {key!r}")
    if set(model["image"]) != set(MODEL_IMAGE_SLOTS) or set(model["image_mask"]) != set(MODEL_IMAGE_SLOTS):
        fail(f"input transform must fill every model image slot {MODEL_IMAGE_SLOTS}, got {sorted(model['image'])}")
    for slot, image in model["image"].items():
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            fail(f"image slot {slot!r} must be uint8 HxWx3, got {image.dtype} {image.shape}")
    fed = {c.slot for c in embodiment.cameras if c.slot is not None and c.required}
    for slot in fed:
        if not bool(model["image_mask"][slot]):
            fail(f"slot {slot!r} is fed by a required camera but masked out")
    state = np.asarray(model["state"])
    if state.shape != (embodiment.state_dim,) or not np.issubdtype(state.dtype, np.floating):
        fail(f"input transform must give a float state of ({embodiment.state_dim},), got {state.dtype} {state.shape}")
    if not np.isfinite(state).all():
        fail("input transform produced a non-finite state from the example observation")


def _expect_rejected(embodiment: Embodiment, obs: dict[str, Any], key: str, fail) -> None:
    try:
        embodiment.validate_observation(obs)
    except ObservationError as exc:
        if key not in str(exc):
            fail(f"the error for a bad {key!r} does not name the key: {exc}")
        return
    fail(f"an observation with a bad {key!r} was accepted")


def _replace(obs: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of ``obs`` with the leaf at path ``key`` replaced (flat or nested, as :func:`lookup` finds it)."""
    return _edit(obs, key, lambda parent, leaf: parent.__setitem__(leaf, value))


def _drop(obs: dict[str, Any], key: str) -> dict[str, Any]:
    """A copy of ``obs`` without the leaf at path ``key``."""
    return _edit(obs, key, lambda parent, leaf: parent.pop(leaf))


def _edit(obs: dict[str, Any], key: str, change) -> dict[str, Any]:
    obs = dict(obs)
    if key in obs:
        change(obs, key)
        return obs
    parts = key.split("/")
    for cut in range(1, len(parts)):
        head, rest = "/".join(parts[:cut]), "/".join(parts[cut:])
        if isinstance(obs.get(head), dict) and has_path(obs[head], rest):
            obs[head] = _edit(obs[head], rest, change)
            return obs
    raise KeyError(key)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


@pytest.fixture
def pi0_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[Registry]:
    """An empty plugin registry installed as the process-wide one; register fakes with ``add_plugin``."""
    from pi0cli.plugins import manager

    monkeypatch.setenv(manager.LOAD_ENV, "")
    monkeypatch.delenv(manager.DISABLE_ENV, raising=False)
    registry = manager.Registry()
    previous = manager.set_registry(registry)
    try:
        yield registry
    finally:
        manager.set_registry(previous)


# ------------------------------------------------------------------------------------ tiny checkpoints


def example_norm_stats(embodiment: Embodiment, count: int = 32, seed: int = 0) -> dict[str, NormStats]:
    """Norm stats from ``count`` example observations of ``embodiment`` (state) and a random walk around them
    (actions): good enough for a random-weight model."""
    states = np.stack([np.asarray(embodiment.inputs(embodiment.example_observation(seed + i))["state"], np.float64)
                       for i in range(count)])
    rng = np.random.default_rng(seed)
    actions = states[:, : embodiment.action_dim] if states.shape[1] >= embodiment.action_dim else np.concatenate(
        [states, rng.normal(size=(count, embodiment.action_dim - states.shape[1]))], axis=1)
    actions = actions + rng.normal(scale=0.05, size=actions.shape)

    def stats(x: np.ndarray) -> NormStats:
        return NormStats(mean=x.mean(0), std=x.std(0) + 1e-3, q01=np.quantile(x, 0.01, axis=0) - 1e-3,
                         q99=np.quantile(x, 0.99, axis=0) + 1e-3)

    return {"state": stats(states), "actions": stats(actions)}


def tiny_model_config(embodiment: Embodiment, model: str = "pi0_tiny", **overrides: Any) -> Pi0Config:
    """A tiny model preset widened to the robot (action_dim 32 unless the robot is bigger), horizon 10,
    prompts of up to 16 tokens."""
    from pi0cli.models.config import preset

    dim = max(32, embodiment.action_dim, embodiment.state_dim)
    return preset(model, **({"action_dim": dim, "action_horizon": 10, "max_token_len": 16} | overrides))


def random_params(model_config: Pi0Config, seed: int = 0, std: float = 0.02) -> dict[str, Any]:
    """Random weights in the reference naming, drawn with numpy from the model's abstract shapes (no JAX
    compilation: initialising a model eagerly on a CPU takes most of a minute even when tiny).

    Kernels and embeddings ~ N(0, std); biases 0; LayerNorm scales 1 (SigLIP), RMSNorm scales 0 (Gemma's
    ``1 + scale``)."""
    from flax import nnx

    from pi0cli.transforms import flatten, unflatten

    abstract = nnx.eval_shape(lambda: model_config.family.build(model_config, nnx.Rngs(0)))  # any model type
    shapes = flatten(nnx.to_pure_dict(nnx.state(abstract, nnx.Param)))
    rng = np.random.default_rng(seed)
    out = {}
    for key, spec in sorted(shapes.items()):
        dtype = np.float32
        if key.endswith("/bias"):
            value = np.zeros(spec.shape, dtype)
        elif key.endswith("/scale"):
            fill: Callable[..., np.ndarray] = np.ones if key.startswith("PaliGemma/img") else np.zeros
            value = fill(spec.shape, dtype)
        else:
            value = rng.normal(0.0, std, spec.shape).astype(dtype)
        out[key] = value
    return unflatten(out)


def make_tiny_checkpoint(
    directory: str | os.PathLike[str],
    embodiment: Embodiment,
    *,
    model_config: Pi0Config | None = None,
    seed: int = 0,
    norm_stats: Mapping[str, NormStats] | None = None,
    default_prompt: str | None = None,
    overwrite: bool = False,
) -> Path:
    """A random-weight policy checkpoint for ``embodiment`` with a tiny model (and its own tokenizer)."""
    from pi0cli.checkpoint import save_policy_checkpoint
    from pi0cli.training.tiny_tokenizer import train_tiny_tokenizer

    config = model_config if model_config is not None else tiny_model_config(embodiment)
    stats = dict(norm_stats) if norm_stats is not None else example_norm_stats(embodiment)
    prompts = [p for p in (default_prompt, embodiment.default_prompt) if p]
    return save_policy_checkpoint(
        directory, params=random_params(config, seed), model_config=config, embodiment=embodiment.name,
        norm_stats=stats, asset_id=embodiment.asset_id, default_prompt=default_prompt,
        metadata=dict(embodiment.metadata), tokenizer=train_tiny_tokenizer(prompts), overwrite=overwrite,
    )
