"""``pi0 train PRESET --mixture mix.toml`` as a library: check every entry of a mixture (one error naming the
entry and the fix, before anything compiles), build each dataset's own pipeline (its embodiment's transforms and
norm stats), and train on batches drawn by weight (:mod:`pi0cli.data.mixture`).

The checkpoint carries the norm stats of every embodiment (``assets/<asset_id>/``) and names them all under
``mixture`` in its config, so it serves any of them (:func:`pi0cli.policy.load.load_policy`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pi0cli.data.mixture import DatasetSource, MixtureSpec
from pi0cli.errors import Pi0Error
from pi0cli.training.config import TrainConfig

if TYPE_CHECKING:
    from pi0cli.data.lerobot import LeRobotFrames
    from pi0cli.embodiment import Embodiment
    from pi0cli.normstats import NormStats
    from pi0cli.training.launch import StepCallback
    from pi0cli.training.trainer import RunResult


@dataclasses.dataclass(frozen=True)
class CheckedSource:
    """A mixture entry that passed every check: its embodiment, its opened frames and its norm stats."""

    source: DatasetSource
    embodiment: Embodiment
    frames: LeRobotFrames
    stats: Mapping[str, NormStats]


def source_config(config: TrainConfig, source: DatasetSource) -> TrainConfig:
    """``config`` as if it trained this one dataset: its embodiment, its dataset; the preset's delta-action
    override only where the robot is the preset's own."""
    same = source.embodiment == config.embodiment
    return dataclasses.replace(config, embodiment=source.embodiment, dataset=source.dataset,
                               delta_action_mask=config.delta_action_mask if same else None)


def open_sources(spec: MixtureSpec, embodiments: Mapping[int, Embodiment],
                 action_horizon: int | None = None) -> list[tuple[DatasetSource, LeRobotFrames]]:
    """Every entry's frames (action chunks of ``action_horizon``), each dataset found and fitting its embodiment
    (errors name the entry)."""
    from pi0cli.data.lerobot import LeRobotFrames, check_dataset_fits

    opened = []
    for source in spec.sources:
        embodiment = embodiments[source.index]
        try:
            frames = LeRobotFrames(source.dataset, action_key=embodiment.action_key,
                                   action_horizon=action_horizon).fetch()
            assert frames.info is not None
            check_dataset_fits(embodiment, frames.info, source.dataset)
        except Pi0Error as exc:
            raise spec.error(source, str(exc)) from None
        if len(frames) == 0 and source.weight > 0:
            raise spec.error(source, "the dataset has no frames; record some or give it weight 0")
        opened.append((source, frames))
    return opened


def find_source_stats(config: TrainConfig, spec: MixtureSpec, source: DatasetSource, asset_id: str,
                      warn: Callable[[str], None] | None = None) -> dict[str, NormStats]:
    """The norm stats of an entry's embodiment: ``./assets/<asset_id>/``, else the ``--from`` checkpoint's."""
    from pi0cli.normstats import load_norm_stats, norm_stats_path
    from pi0cli.training.launch import check_norm_stats_fit

    candidates = [Path("assets") / asset_id]
    if config.init_from:
        candidates.append(Path(config.init_from) / "assets" / asset_id)
    for candidate in candidates:
        path = norm_stats_path(candidate)
        if path.is_file():
            try:
                for message in check_norm_stats_fit(source_config(config, source), path):
                    if warn is not None:
                        warn(f"{spec.path} {source.label}: {message}")
                return load_norm_stats(candidate)
            except Pi0Error as exc:
                raise spec.error(source, str(exc)) from None
    looked = ", ".join(str(norm_stats_path(c)) for c in candidates)
    raise spec.error(source, f"no norm stats for embodiment {source.embodiment!r} (looked in {looked}); compute "
                             f"them with `pi0 norm-stats --mixture {spec.path}`")


def check_mixture(config: TrainConfig, spec: MixtureSpec, embodiments: Mapping[int, Embodiment],
                  warn: Callable[[str], None] | None = None) -> list[CheckedSource]:
    """Every check of a mixture run that needs no compilation, in file order."""
    family = config.model.family
    if not family.supports_action_mask:
        # Without the mask a robot's padded action dims would train as zeros: refuse rather than mislearn.
        raise Pi0Error(f"--mixture: the {family.name} model cannot mask padded action dims out of its loss yet; "
                       "train a pi0 or pi05 preset on the mixture, or train this one with --dataset")
    checked = []
    for source, frames in open_sources(spec, embodiments, config.model.action_horizon):
        embodiment = embodiments[source.index]
        stats = find_source_stats(config, spec, source, embodiment.asset_id, warn)
        checked.append(CheckedSource(source, embodiment, frames, stats))
    return checked


@dataclasses.dataclass(frozen=True)
class _Tasks:
    """What the tiny-tokenizer trainer reads of a dataset (its task strings), for all of a mixture's."""

    tasks: list[str]


def train_mixture(config: TrainConfig, spec: MixtureSpec, embodiments: Mapping[int, Embodiment], *,
                  exp_dir: Path, resume: bool = False, overwrite: bool = False, tokenizer: Path | None = None,
                  wandb: bool = False, warn: Callable[[str], None] | None = None,
                  on_start: Callable[[int], None] | None = None, on_step: StepCallback | None = None) -> RunResult:
    """Train ``config``'s model on the mixture ``spec`` (``embodiments`` by entry index); see the module docstring.

    Callbacks as in :func:`pi0cli.training.launch.train`; ``on_step``'s metrics add ``loss/<name>`` per source.
    """
    from pi0cli.checkpoint import TOKENIZER_FILENAME, checkpoint_config
    from pi0cli.data.loader import DataLoader, Shard
    from pi0cli.data.mixture import MixtureFrames, MixtureOrder, MixturePart
    from pi0cli.pipeline import Pipeline
    from pi0cli.training import launch
    from pi0cli.training.checkpoints import Assets, wipe

    checked = check_mixture(config, spec, embodiments, warn)
    exp_dir = Path(exp_dir).absolute()
    resume = launch.check_experiment_dir(exp_dir, resume=resume, overwrite=overwrite, warn=warn)
    tasks = sorted({t for item in checked for t in item.frames.tasks}
                   | {s.prompt for s in spec.sources if s.prompt}
                   | {item.embodiment.default_prompt for item in checked if item.embodiment.default_prompt})
    tok, tokenizer_bytes = launch._tokenizer(config, tokenizer, _Tasks(tasks))  # type: ignore[arg-type]
    first = checked[0]
    sequences = launch._sequence_tokenizer(source_config(config, first.source), first.embodiment, None,
                                           dict(first.stats), tok, warn)
    parts: list[MixturePart] = []
    family_files: dict[str, bytes] = {}
    norm_stats: dict[str, dict[str, NormStats]] = {}
    for item in checked:
        cfg = source_config(config, item.source)
        try:
            pipeline = Pipeline.create(item.embodiment, config.model, item.stats, tokenizer=sequences,
                                       delta_action_mask=cfg.delta_action_mask,
                                       default_prompt=item.source.prompt or item.embodiment.default_prompt)
        except Pi0Error as exc:
            raise spec.error(item.source, str(exc)) from None
        parts.append(MixturePart(item.frames, pipeline.training_inputs(), item.embodiment.action_dim,
                                 config.model.action_dim, item.source.prompt))
        family_files |= config.model.family.tokenizer_files(sequences, item.embodiment.asset_id)
        norm_stats[item.embodiment.asset_id] = dict(item.stats)
    if config.init_from and not resume and not Path(config.init_from).exists():
        raise Pi0Error(f"--from {config.init_from}: no such checkpoint")
    if overwrite:
        wipe(exp_dir)
    frames = MixtureFrames(parts)
    shard = Shard.from_jax()
    order = MixtureOrder(frames.sizes, spec.probabilities.tolist(), config.batch_size, config.seed, shard)
    loader = DataLoader(frames, None, batch_size=config.batch_size, seed=config.seed, shard=shard,
                        num_workers=config.num_workers, order=order)
    saved = checkpoint_config(
        model_config=config.model, embodiment=first.embodiment.name, asset_id=first.embodiment.asset_id,
        default_prompt=first.source.prompt or first.embodiment.default_prompt, delta_action_mask="embodiment",
        metadata=dict(config.policy_metadata) or dict(first.embodiment.metadata))
    mixture = [{"dataset": c.source.dataset, "embodiment": c.embodiment.name, "asset_id": c.embodiment.asset_id,
                "weight": c.source.weight, "prompt": c.source.prompt, "name": name,
                "dataset_root": str(c.frames.root)} for c, name in zip(checked, spec.names, strict=True)]
    assets = Assets(
        norm_stats=norm_stats,
        config=saved | {"train_config": launch.config_as_dict(config), "dataset": str(spec.path),
                         "mixture": mixture},
        files=({TOKENIZER_FILENAME: tokenizer_bytes} if tokenizer_bytes else {}) | family_files,
    )
    return launch.run_trainer(config, exp_dir, loader.batches, assets, resume=resume, wandb=wandb,
                              on_start=on_start, on_step=on_step, source_names=spec.names)
