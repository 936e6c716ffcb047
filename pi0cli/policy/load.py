"""Loading a :class:`~pi0cli.policy.Policy` from a pi0 or reference checkpoint directory (the layout is in
:mod:`pi0cli.checkpoint`)."""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pi0cli.checkpoint import (
    CONFIG_FILENAME,
    FORMAT,
    CheckpointError,
    model_config_of,
    read_checkpoint_config,
    read_params,
    read_tokenizer,
    resolve_step,
)
from pi0cli.models.families import FamilyError
from pi0cli.models.fast_decode import DEFAULT_FAST_DECODE
from pi0cli.normstats import NormStats, load_norm_stats

if TYPE_CHECKING:
    from pi0cli.embodiment import Embodiment
    from pi0cli.models.config import Pi0Config, StateInput
    from pi0cli.models.families import PolicyModel
    from pi0cli.models.tokenizer import FastDecode, PaligemmaTokenizer
    from pi0cli.pipeline import Pipeline
    from pi0cli.policy.policy import Policy


def load_policy(
    directory: str | os.PathLike[str],
    *,
    embodiment: Embodiment,
    model: str | Pi0Config | None = None,
    default_prompt: str | None = None,
    tokenizer: str | os.PathLike[str] | None = None,
    batch_sizes: Sequence[int] = (1,),
    num_steps: int = 10,
    seed: int = 0,
    asset_id: str | None = None,
    initial_weights: bool = False,
    max_decoding_steps: int = 256,
    temperature: float = 0.0,
    fast_decode: FastDecode = DEFAULT_FAST_DECODE,
    rtc_max_guidance: float | None = None,
    state_input: StateInput | None = None,
) -> Policy:
    """Load a policy for ``embodiment`` from a checkpoint directory.

    ``model``: a model preset name or ``Pi0Config``; required for reference checkpoints (no pi0_config.json),
    otherwise it replaces the checkpoint's. The CLI resolves the embodiment's name (``checkpoint_embodiment``
    reads the one the checkpoint was trained for).

    ``initial_weights``: the weights the checkpoint's training run started from instead of its trained ones,
    re-created from the run's seed exactly as the trainer draws them (same transforms and norm stats), so
    that what training changed can be measured on the same data.

    ``max_decoding_steps``, ``temperature`` and ``fast_decode`` apply to pi0-FAST (tokens decoded per chunk at
    most; 0 = greedy; ``"lenient"`` repairs a wrong coefficient count instead of failing the chunk,
    ``"constrained"`` decodes only well-formed chunks: :meth:`~pi0cli.models.tokenizer.FASTTokenizer.chunk_grammar`);
    ``num_steps`` (denoising steps) and ``rtc_max_guidance`` (the clip of real-time chunking's guidance weight;
    default the paper's 5) to pi0 and pi0.5. ``state_input="hidden"`` serves the model without the robot's
    state (a model trained with ``state_dropout`` has learnt that mode; ``None`` keeps the checkpoint's).
    """
    from pi0cli.models.tokenizer import FASTTokenizer
    from pi0cli.policy.policy import Policy, make_transforms

    loaded = _load(directory, embodiment, model, tokenizer, asset_id, initial_weights, state_input)
    grammar = None
    if fast_decode == "constrained" and isinstance(loaded.tokenizer, FASTTokenizer):
        grammar = loaded.tokenizer.chunk_grammar(loaded.model_config.action_horizon, embodiment.action_dim,
                                                 max_decoding_steps)
    prompt = default_prompt if default_prompt is not None else loaded.saved.get("default_prompt")
    inputs, outputs = make_transforms(embodiment, loaded.model_config, loaded.norm_stats, tokenizer=loaded.tokenizer,
                                      default_prompt=prompt, delta_action_mask=loaded.delta_action_mask,
                                      fast_decode=fast_decode)
    saved = loaded.saved
    metadata = dict(embodiment.metadata) | dict(saved.get("metadata") or saved.get("policy_metadata") or {})
    example = embodiment.example_observation
    return Policy.from_model(
        loaded.module, num_steps=num_steps, max_decoding_steps=max_decoding_steps, temperature=temperature,
        rtc_max_guidance=rtc_max_guidance, grammar=grammar,
        input_transform=inputs, output_transform=outputs, batch_sizes=batch_sizes, seed=seed, metadata=metadata,
        example=lambda: {"prompt": "warm up", **example(0)},
        description=f"{loaded.model_config.model_type} ({loaded.model_config.paligemma_variant}) for "
                    f"{embodiment.name} from {loaded.directory}",
    )


def load_training_pipeline(
    directory: str | os.PathLike[str],
    *,
    embodiment: Embodiment,
    model: str | Pi0Config | None = None,
    initial_weights: bool = False,
    state_input: StateInput | None = None,
) -> tuple[PolicyModel, Pipeline]:
    """A checkpoint's model (its trained or, with ``initial_weights``, its initial weights) and the training
    pipeline it learned through (dataset row -> model example), to measure its loss on held-out data
    (``state_input`` as for :func:`load_policy`)."""
    from pi0cli.pipeline import Pipeline

    loaded = _load(directory, embodiment, model, None, None, initial_weights, state_input)
    mask = loaded.delta_action_mask
    pipeline = Pipeline.create(
        embodiment, loaded.model_config, loaded.norm_stats, tokenizer=loaded.tokenizer,
        delta_action_mask=None if mask == "embodiment" else tuple(bool(m) for m in mask or ()),
        default_prompt=loaded.saved.get("default_prompt"))
    return loaded.module, pipeline


@dataclasses.dataclass(frozen=True)
class _Loaded:
    directory: Path
    saved: dict[str, Any]
    model_config: Pi0Config
    module: PolicyModel
    norm_stats: dict[str, NormStats]
    #: what the family's pipeline tokenizes with (the prompt tokenizer, or pi0-FAST's FASTTokenizer around it)
    tokenizer: Any
    delta_action_mask: Sequence[bool] | None | str


def _load(directory: str | os.PathLike[str], embodiment: Embodiment, model: str | Pi0Config | None,
          tokenizer: str | os.PathLike[str] | None, asset_id: str | None, initial_weights: bool,
          state_input: StateInput | None = None) -> _Loaded:
    """What every use of a checkpoint reads: its step folder, config, weights, norm stats, tokenizer, mask."""
    from pi0cli.models.params import build_any_model

    directory, _ = resolve_step(directory)  # an experiment folder means its latest step (the CLI says so)
    params_dir = _params_dir(directory)
    saved = _as_trained_for(directory, read_checkpoint_config(directory) or {}, embodiment)
    model_config = model_config_of(saved, model)
    if model_config is None:
        raise CheckpointError(
            f"{directory} has no {CONFIG_FILENAME} (a reference openpi checkpoint?); name its model with "
            "--model (pi0 or pi05, or another preset)"
        )
    if state_input is not None and state_input != model_config.state_input:
        from pi0cli.models.config import ModelConfigError

        try:
            model_config = dataclasses.replace(model_config, state_input=state_input)
        except ModelConfigError as exc:
            raise CheckpointError(f"{directory}: {exc}") from None
        if state_input == "hidden" and model_config.state_dropout == 0:
            warnings.warn(f"{directory} was trained with its state always visible (state_dropout 0): served "
                          "without it, it sees inputs it never trained on", stacklevel=3)
    norm_stats = _norm_stats(directory, asset_id or saved.get("asset_id") or embodiment.asset_id, asset_id is None)

    params = _initial_params(directory, saved, model_config) if initial_weights else read_params(params_dir)
    if model_config.dtype == "bfloat16" and model_config.param_dtype == "float32":
        model_config = dataclasses.replace(model_config, param_dtype="bfloat16")  # inference: bf16 weights
    module = build_any_model(model_config, params)
    del params

    mask = saved.get("delta_action_mask", "embodiment")
    if saved.get("format") != FORMAT and mask is None:  # a training config: None means the embodiment's mask
        mask = "embodiment"
    prompt = _tokenizer(directory, tokenizer, model_config.token_len)
    # The family's tokenizer assets (pi0-FAST: its FAST tokenizer), from assets/<asset_id>/, else the only ones.
    assets = directory / "assets"
    wanted = asset_id or saved.get("asset_id") or embodiment.asset_id
    try:
        sequences = model_config.family.sequence_tokenizer(model_config, prompt, [assets / wanted], search=assets)
    except FamilyError as exc:
        raise CheckpointError(f"{model_config.model_type} checkpoint {directory}: {exc}") from None
    return _Loaded(directory, saved, model_config, module, norm_stats, sequences, mask)


def _as_trained_for(directory: Path, saved: dict[str, Any], embodiment: Embodiment) -> dict[str, Any]:
    """A mixture checkpoint's config as if trained for ``embodiment`` alone (its asset, prompt and metadata);
    a robot the mixture never had is one error naming the ones it had. Other checkpoints pass unchanged."""
    mixture = saved.get("mixture")
    if not mixture:
        return saved
    for entry in mixture:
        if entry.get("embodiment") == embodiment.name:
            return saved | {"embodiment": embodiment.name, "asset_id": entry["asset_id"], "metadata": {},
                            "default_prompt": entry.get("prompt") or embodiment.default_prompt}
    had = sorted({str(entry.get("embodiment")) for entry in mixture})
    raise CheckpointError(f"{directory} was trained on a mixture of {', '.join(had)}, not {embodiment.name!r}; "
                          f"pass --embodiment {' or '.join(had)}")


def checkpoint_embodiment(directory: str | os.PathLike[str]) -> str:
    """The name of the robot a checkpoint was trained for (what ``--embodiment`` defaults to)."""
    directory, _ = resolve_step(directory)
    _params_dir(directory)
    name = (read_checkpoint_config(directory) or {}).get("embodiment")
    if not name:
        raise CheckpointError(f"{directory} does not say which robot it drives; pass --embodiment")
    return str(name)


def _initial_params(directory: Path, saved: dict[str, Any], model_config: Pi0Config) -> dict[str, Any]:
    """The parameters a training run from scratch started from (its seed's draw; see ``trainer.build_model``)."""
    from pi0cli.models.params import export_params
    from pi0cli.training.trainer import build_model as initial_model

    train = saved.get("train_config") or {}
    if train.get("init_from"):
        raise CheckpointError(f"{directory} was trained from {train['init_from']}: its initial weights are that "
                              "checkpoint's; evaluate that checkpoint instead")
    if "seed" not in train:
        raise CheckpointError(f"{directory} does not record the seed its training run started from (not a "
                              "checkpoint `pi0 train` wrote?); its initial weights cannot be re-created")
    return export_params(initial_model(model_config, int(train["seed"])))


def _params_dir(directory: Path) -> Path:
    params_dir = directory / "params"
    if not params_dir.is_dir():
        raise CheckpointError(f"{directory} has no params/ directory and no step folders; point --checkpoint at a "
                              "checkpoint step (the directory holding params/ and assets/) or its experiment folder")
    return params_dir


def _norm_stats(directory: Path, wanted: str, fall_back: bool) -> dict[str, NormStats]:
    """The norm stats of asset ``wanted``; with ``fall_back``, the only asset the checkpoint has instead."""
    assets = directory / "assets"
    stats_file = assets / wanted / "norm_stats.json"
    if not stats_file.is_file():
        found = (sorted(str(p.parent.relative_to(assets)) for p in assets.rglob("norm_stats.json"))
                 if assets.is_dir() else [])
        if len(found) == 1 and fall_back:
            stats_file = assets / found[0] / "norm_stats.json"
        else:
            raise CheckpointError(f"no norm stats for asset {wanted!r} at {stats_file}"
                                  + (f"; the checkpoint has {found}" if found else "")
                                  + "; compute them with `pi0 norm-stats` and copy them there")
    return load_norm_stats(stats_file)


def _tokenizer(directory: Path, explicit: str | os.PathLike[str] | None, max_len: int) -> PaligemmaTokenizer:
    from pi0cli.models.tokenizer import PaligemmaTokenizer

    if explicit is not None:
        return PaligemmaTokenizer(max_len, model=explicit)
    own = read_tokenizer(directory)
    return PaligemmaTokenizer(max_len, model=own) if own is not None else PaligemmaTokenizer(max_len)
