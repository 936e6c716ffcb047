"""What ``pi0 train`` does, as a library: apply flag overrides to a config, check the experiment directory, find
norm stats, load initial weights, and run the trainer, reporting progress through callbacks (the CLI draws it).

Names are the CLI's business: these functions take the ``TrainConfig`` and ``Embodiment`` objects."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pi0cli.errors import Pi0Error
from pi0cli.training.config import (
    ConstantSchedule,
    CosineDecaySchedule,
    RsqrtDecaySchedule,
    Schedule,
    TrainConfig,
    lora_recipe,
)

if TYPE_CHECKING:
    import numpy as np

    from pi0cli.data.lerobot import LeRobotFrames
    from pi0cli.embodiment import Embodiment
    from pi0cli.models.tokenizer import PaligemmaTokenizer
    from pi0cli.normstats import NormStats
    from pi0cli.training.checkpoints import Assets
    from pi0cli.training.trainer import RunResult

#: ``on_step(step, metrics)``: called every ``log_interval`` steps with loss, grad_norm, steps_per_s, ...
StepCallback = Callable[[int, dict[str, float]], None]


class ExperimentError(Pi0Error):
    """An experiment directory in a state the flags do not allow."""


def resolve_config(
    base: TrainConfig | None, *, embodiment: Embodiment | None = None, dataset: str | None = None,
    model: str | None = None, lora: bool = False, steps: int | None = None, batch_size: int | None = None,
    lr: float | None = None, seed: int | None = None, init_from: str | None = None, save_interval: int | None = None,
    log_interval: int | None = None, fsdp_devices: int | None = None,
) -> TrainConfig:
    """A preset (``base``) with flag overrides, or a config built from flags alone (``embodiment`` then
    required). ``model`` names a model preset (:func:`pi0cli.models.config.preset`)."""
    from pi0cli.models.config import preset as model_preset

    if base is not None:
        config = base
    elif embodiment is None:
        raise Pi0Error("name a preset (see `pi0 train --list-presets`) or pass --embodiment")
    else:
        config = TrainConfig(name=f"{model or 'pi0'}_{embodiment.name}{'_lora' if lora else ''}",
                             embodiment=embodiment.name, model=model_preset(model or "pi0"),
                             default_prompt=embodiment.default_prompt)
    changes: dict[str, Any] = {}
    if embodiment is not None:
        changes["embodiment"] = embodiment.name
    if model is not None or lora:
        name = model or config.model.model_type
        if lora and not name.endswith("_lora"):
            name += "_lora"
        changes["model"] = model_preset(name)
        if lora:  # the one LoRA recipe the presets use too: the family's freeze mode and micro-batches, no EMA
            changes.update(lora_recipe(changes["model"], batch_size or config.batch_size))
    for key, value in [("dataset", dataset), ("num_train_steps", steps), ("batch_size", batch_size), ("seed", seed),
                       ("init_from", init_from), ("save_interval", save_interval), ("log_interval", log_interval),
                       ("fsdp_devices", fsdp_devices)]:
        if value is not None:
            changes[key] = value
    if lr is not None:
        changes["lr_schedule"] = _with_peak_lr(config.lr_schedule, lr)
    if steps is not None and isinstance(config.lr_schedule, CosineDecaySchedule):
        schedule = changes.get("lr_schedule", config.lr_schedule)
        # optax needs at least one step after the warmup: `--steps 1` (a smoke test, an initial-weights baseline)
        # warms up for 0 steps and decays over its one.
        warmup = min(schedule.warmup_steps, max(steps // 10, 1), steps - 1)
        changes["lr_schedule"] = dataclasses.replace(schedule, decay_steps=steps, warmup_steps=warmup)
    return dataclasses.replace(config, **changes) if changes else config


def _with_peak_lr(schedule: Schedule, lr: float) -> Schedule:
    if isinstance(schedule, CosineDecaySchedule):  # the floor keeps its ratio to the peak
        return dataclasses.replace(schedule, peak_lr=lr, decay_lr=lr * schedule.decay_lr / schedule.peak_lr)
    if isinstance(schedule, RsqrtDecaySchedule):
        return dataclasses.replace(schedule, peak_lr=lr)
    if isinstance(schedule, ConstantSchedule):
        return dataclasses.replace(schedule, lr=lr)
    raise TypeError(schedule)


def config_as_dict(config: TrainConfig) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    data["lr_schedule"] = {"kind": type(config.lr_schedule).__name__, **data["lr_schedule"]}
    data["policy_metadata"] = dict(config.policy_metadata)
    return json.loads(json.dumps(data, default=list))


def init_distributed(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    from pi0cli.training.sharding import init_distributed as init

    init(coordinator, num_processes, process_id)


def check_experiment_dir(exp_dir: Path, *, resume: bool, overwrite: bool,
                         warn: Callable[[str], None] | None = None) -> bool:
    """Refuse to mix runs: an existing experiment needs --resume or --overwrite. Returns whether to resume:
    --resume on an experiment with no complete step (never started, or stopped before its first save) starts
    from step 0, ``warn``-ed about, so "run it again with --resume" always works."""
    from pi0cli.checkpoint import latest_step_dir

    exists = exp_dir.exists() and any(exp_dir.iterdir())
    if resume and latest_step_dir(exp_dir) is None:
        if warn is not None:
            warn(f"--resume: {exp_dir} has no complete checkpoint yet; starting from step 0")
        return False
    if exists and not resume and not overwrite:
        raise ExperimentError(
            f"experiment {exp_dir} already exists: pass --resume to continue it, --overwrite to start again, "
            "or choose another --exp"
        )
    return resume


def find_norm_stats(config: TrainConfig, asset_id: str, explicit: Path | None,
                    warn: Callable[[str], None] | None = None) -> dict[str, NormStats]:
    """Norm stats for training: ``--norm-stats``, else ``./assets/<asset_id>/``, else the ``--from``
    checkpoint's assets; one clear error when none exists. Stats computed for another embodiment are refused,
    for another action horizon ``warn``-ed about (see :func:`check_norm_stats_fit`)."""
    from pi0cli.normstats import load_norm_stats, norm_stats_path

    candidates = [explicit] if explicit is not None else [Path("assets") / asset_id]
    if explicit is None and config.init_from:
        candidates.append(Path(config.init_from) / "assets" / asset_id)
    for candidate in candidates:
        if norm_stats_path(candidate).is_file():
            stats = load_norm_stats(candidate)
            for message in check_norm_stats_fit(config, norm_stats_path(candidate)):
                if warn is not None:
                    warn(message)
            return stats
    if explicit is not None:
        return load_norm_stats(explicit)  # raises, naming the path
    if config.dataset:
        from pi0cli.data.lerobot import resolve_dataset

        resolve_dataset(config.dataset)  # a missing dataset is the problem to report, not its missing stats
    looked = ", ".join(str(norm_stats_path(c)) for c in candidates)
    raise Pi0Error(
        f"no norm stats for asset {asset_id!r} (looked in {looked}); compute them with "
        f"`pi0 norm-stats {config.embodiment} --dataset {config.dataset or 'DATASET'}` or pass --norm-stats"
    )


def check_norm_stats_fit(config: TrainConfig, path: Path) -> list[str]:
    """Warnings about stats computed for another action horizon than ``config``'s (they drift: the std of a
    longer chunk is wider); stats of another embodiment raise. Reference files (no record) pass silently."""
    from pi0cli.normstats import read_computed_for

    computed_for = read_computed_for(path) or {}
    if not computed_for:
        return []
    dataset = config.dataset or "DATASET"
    horizon = config.model.action_horizon
    fix = f"`pi0 norm-stats {config.embodiment} --dataset {dataset} --preset {config.name}`"
    made_for = computed_for.get("embodiment")
    if made_for is not None and made_for != config.embodiment:
        raise Pi0Error(f"{path} was computed for embodiment {made_for!r}, but {config.name!r} trains "
                       f"{config.embodiment!r}; recompute them with {fix}")
    made_horizon = computed_for.get("horizon")
    if made_horizon is not None and made_horizon != horizon:
        return [f"{path} was computed over {made_horizon}-step action chunks, but {config.name!r} predicts {horizon}; "
                f"the action statistics differ (recompute with {fix} or --horizon {horizon})"]
    return []


def _wandb_logger(config: TrainConfig, exp_dir: Path, enabled: bool) -> StepCallback | None:
    """A metrics callback for Weights & Biases, or None (asked for but not installed is an error)."""
    if not enabled:
        return None
    try:
        import wandb
    except ImportError:
        raise Pi0Error("--wandb needs the wandb package: pip install wandb") from None
    run_id_file = exp_dir / "wandb_id.txt"
    run_id = run_id_file.read_text().strip() if run_id_file.exists() else None
    run = wandb.init(project="pi0", name=exp_dir.name, id=run_id, resume="allow", config=config_as_dict(config))
    run_id_file.write_text(run.id)
    return lambda step, metrics: wandb.log(metrics, step=step)


def _tokenizer(config: TrainConfig, explicit: Path | None,
               frames: LeRobotFrames) -> tuple[PaligemmaTokenizer, bytes | None]:
    """The prompt tokenizer and, when it must travel with the checkpoint, its model bytes.

    Full-size models use the PaliGemma tokenizer (``--tokenizer`` or the local cache). A model with a smaller
    vocabulary (the tiny presets) cannot: it gets a small sentencepiece model trained on the dataset's tasks,
    stored in the checkpoint's assets so serving tokenises exactly as training did.
    """
    from pi0cli.models.config import PALIGEMMA_VOCAB_SIZE
    from pi0cli.models.tokenizer import PaligemmaTokenizer

    max_len = config.model.token_len
    if explicit is not None:
        data = Path(explicit).read_bytes() if Path(explicit).is_file() else None
        tokenizer = PaligemmaTokenizer(max_len, model=explicit)
        return tokenizer, (data if config.model.vlm.vocab_size < PALIGEMMA_VOCAB_SIZE else None)
    if config.model.vlm.vocab_size >= PALIGEMMA_VOCAB_SIZE:
        return PaligemmaTokenizer(max_len), None
    from pi0cli.training.tiny_tokenizer import train_tiny_tokenizer

    data = train_tiny_tokenizer(list(frames.tasks) + ([config.default_prompt] if config.default_prompt else []))
    tokenizer = PaligemmaTokenizer(max_len, model=data)
    if tokenizer.vocab_size > config.model.vlm.vocab_size:
        raise Pi0Error(f"the tokenizer's {tokenizer.vocab_size} ids do not fit the model's vocabulary of "
                       f"{config.model.vlm.vocab_size}")
    return tokenizer, data


def _sequence_tokenizer(config: TrainConfig, embodiment: Embodiment, explicit: Path | None,
                        stats: dict[str, NormStats], prompt: PaligemmaTokenizer,
                        warn: Callable[[str], None] | None) -> Any:
    """What the pipeline tokenizes with: the model family's (``ModelFamily.sequence_tokenizer``). Its assets are
    looked for beside the norm stats used (pi0-FAST: ``fast_tokenizer/``, written by ``pi0 norm-stats
    --fast-tokenizer``), else fitted on the dataset now (``warn``-ed about)."""
    from pi0cli.data.stats import RobotBlocks, load_columns
    from pi0cli.models.families import TrainingData
    from pi0cli.normstats import norm_stats_path

    candidates = [explicit] if explicit is not None else [Path("assets") / embodiment.asset_id]
    if explicit is None and config.init_from:
        candidates.append(Path(config.init_from) / "assets" / embodiment.asset_id)
    def action_blocks() -> Iterator[np.ndarray]:
        columns = load_columns(embodiment, Path(str(config.dataset)))
        return (actions for _, actions in RobotBlocks(columns, config.model.action_horizon, config.delta_action_mask))

    data = TrainingData(str(config.dataset), stats, action_blocks)
    return config.model.family.sequence_tokenizer(
        config.model, prompt, [norm_stats_path(c).parent for c in candidates], data=data, warn=warn)


def train(config: TrainConfig, embodiment: Embodiment, *, exp_dir: Path, resume: bool = False,
          overwrite: bool = False, norm_stats: Path | None = None, tokenizer: Path | None = None, wandb: bool = False,
          warn: Callable[[str], None] | None = None, on_start: Callable[[int], None] | None = None,
          on_step: StepCallback | None = None) -> RunResult:
    """Run ``pi0 train``: every check first (one clear error each), then the training loop.

    ``warn(message)`` receives doubts that do not stop the run (norm stats for another horizon);
    ``on_start(first_step)`` is called once the run is about to start (after a resume, past step 0);
    ``on_step`` as in :func:`pi0cli.training.trainer.run`.
    """
    from pi0cli.checkpoint import TOKENIZER_FILENAME, checkpoint_config
    from pi0cli.data.lerobot import LeRobotFrames, check_dataset_fits, read_info, resolve_dataset
    from pi0cli.data.loader import DataLoader, Shard
    from pi0cli.pipeline import Pipeline
    from pi0cli.training.checkpoints import Assets, wipe

    if embodiment.name != config.embodiment:
        raise Pi0Error(f"config {config.name!r} trains embodiment {config.embodiment!r}, not {embodiment.name!r}")
    if not config.dataset:
        raise Pi0Error(f"preset {config.name!r} names no dataset: pass --dataset ROOT_OR_REPO_ID")
    exp_dir = Path(exp_dir).absolute()
    resume = check_experiment_dir(exp_dir, resume=resume, overwrite=overwrite, warn=warn)
    _, local_root = resolve_dataset(config.dataset)
    if local_root.is_dir():  # a dataset of another robot is the problem to name, before its missing norm stats
        check_dataset_fits(embodiment, read_info(local_root), config.dataset)
    stats = find_norm_stats(config, embodiment.asset_id, norm_stats, warn=warn)
    frames = LeRobotFrames(config.dataset, action_key=embodiment.action_key, action_horizon=config.model.action_horizon)
    frames.fetch()  # a repo id not in the cache is downloaded before anything reads its files (tasks, info)
    assert frames.info is not None
    check_dataset_fits(embodiment, frames.info, config.dataset)
    tok, tokenizer_bytes = _tokenizer(config, tokenizer, frames)
    # The family's tokenizer (pi0-FAST: the FAST tokenizer around the prompt one) and the assets it travels with.
    sequences = _sequence_tokenizer(config, embodiment, norm_stats, stats, tok, warn)
    family_files = config.model.family.tokenizer_files(sequences, embodiment.asset_id)
    pipeline = Pipeline.create(embodiment, config.model, stats, tokenizer=sequences,
                               delta_action_mask=config.delta_action_mask, default_prompt=config.default_prompt)
    if config.init_from and not resume and not Path(config.init_from).exists():
        raise Pi0Error(f"--from {config.init_from}: no such checkpoint")
    if overwrite:
        wipe(exp_dir)
    loader = DataLoader(frames, pipeline.training_inputs(), batch_size=config.batch_size, seed=config.seed,
                        shard=Shard.from_jax(), num_workers=config.num_workers)
    delta = None if config.delta_action_mask is None else list(config.delta_action_mask)
    saved = checkpoint_config(
        model_config=config.model, embodiment=embodiment.name, asset_id=embodiment.asset_id,
        default_prompt=pipeline.default_prompt, delta_action_mask="embodiment" if delta is None else delta,
        metadata=dict(config.policy_metadata) or dict(embodiment.metadata))
    assets = Assets(
        norm_stats={embodiment.asset_id: stats},
        config=saved | {"train_config": config_as_dict(config), "dataset": str(config.dataset),
                         "dataset_root": str(frames.root)},
        files=({TOKENIZER_FILENAME: tokenizer_bytes} if tokenizer_bytes else {}) | family_files,
    )
    return run_trainer(config, exp_dir, loader.batches, assets, resume=resume, wandb=wandb, on_start=on_start,
                       on_step=on_step)


def run_trainer(config: TrainConfig, exp_dir: Path, batches: Callable[[int], Iterator[dict[str, Any]]],
                assets: Assets, *, resume: bool, wandb: bool, on_start: Callable[[int], None] | None,
                on_step: StepCallback | None, source_names: tuple[str, ...] = ()) -> RunResult:
    """The training loop of a checked run (one dataset or a mixture): initial weights, the first step, callbacks."""
    from pi0cli.training import trainer
    from pi0cli.training.weights import load_initial_weights

    exp_dir.mkdir(parents=True, exist_ok=True)
    callbacks = [c for c in (on_step, _wandb_logger(config, exp_dir, wandb)) if c is not None]
    init_from = config.init_from
    init = None if resume or not init_from else (lambda model: load_initial_weights(model, init_from))
    start = max((int(p.name) for p in exp_dir.iterdir() if p.name.isdigit()), default=0) if resume else 0

    def report(step: int, metrics: dict[str, float]) -> None:
        for callback in callbacks:
            callback(step, metrics)

    if on_start is not None:
        on_start(start)
    return trainer.run(config, exp_dir=exp_dir, batches=batches, assets=assets, init_params=init,
                       resume=resume, on_step=report if callbacks else None, source_names=source_names)
