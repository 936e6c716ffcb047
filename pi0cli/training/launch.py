"""What ``pi0 train`` does, as a library: resolve the config, check the experiment directory, find norm stats,
load initial weights, and run the trainer with a progress bar."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from pi0cli.errors import Pi0Error
from pi0cli.training.config import ConstantSchedule, CosineDecaySchedule, RsqrtDecaySchedule, TrainConfig


class ExperimentError(Pi0Error):
    """An experiment directory in a state the flags do not allow."""


def resolve_config(
    preset: str | None, *, embodiment: str | None = None, dataset: str | None = None, model: str | None = None,
    lora: bool = False, steps: int | None = None, batch_size: int | None = None, lr: float | None = None,
    seed: int | None = None, init_from: str | None = None, save_interval: int | None = None,
    log_interval: int | None = None, fsdp_devices: int | None = None,
) -> TrainConfig:
    """A preset with flag overrides, or a config built from flags alone (``--embodiment`` then required)."""
    from pi0cli.models.config import preset as model_preset
    from pi0cli.plugins.manager import get_registry

    registry = get_registry()
    if preset is not None:
        config = registry.preset(preset)
    elif embodiment is None:
        raise Pi0Error("name a preset (see `pi0 train --list-presets`) or pass --embodiment")
    else:
        emb = registry.embodiment(embodiment)
        config = TrainConfig(name=f"{model or 'pi0'}_{emb.name}{'_lora' if lora else ''}", embodiment=emb.name,
                             model=model_preset(model or "pi0"), default_prompt=emb.default_prompt)
    changes: dict[str, Any] = {}
    if embodiment is not None:
        registry.embodiment(embodiment)
        changes["embodiment"] = embodiment
    if model is not None or lora:
        name = model or config.model.model_type
        if lora and not name.endswith("_lora"):
            name += "_lora"
        changes["model"] = model_preset(name)
        if lora:
            changes["freeze"] = "lora_both"
            changes["ema_decay"] = None
    for key, value in [("dataset", dataset), ("num_train_steps", steps), ("batch_size", batch_size), ("seed", seed),
                       ("init_from", init_from), ("save_interval", save_interval), ("log_interval", log_interval),
                       ("fsdp_devices", fsdp_devices)]:
        if value is not None:
            changes[key] = value
    if lr is not None:
        changes["lr_schedule"] = _with_peak_lr(config.lr_schedule, lr)
    if steps is not None and isinstance(config.lr_schedule, CosineDecaySchedule):
        schedule = changes.get("lr_schedule", config.lr_schedule)
        changes["lr_schedule"] = dataclasses.replace(schedule, decay_steps=steps,
                                                     warmup_steps=min(schedule.warmup_steps, max(steps // 10, 1)))
    return dataclasses.replace(config, **changes) if changes else config


def _with_peak_lr(schedule: Any, lr: float) -> Any:
    if isinstance(schedule, (CosineDecaySchedule, RsqrtDecaySchedule)):
        ratio = schedule.decay_lr / schedule.peak_lr if isinstance(schedule, CosineDecaySchedule) else None
        changed = dataclasses.replace(schedule, peak_lr=lr)
        return dataclasses.replace(changed, decay_lr=lr * ratio) if ratio is not None else changed
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


def check_experiment_dir(exp_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs: an existing experiment needs --resume or --overwrite, --resume needs one."""
    exists = exp_dir.exists() and any(exp_dir.iterdir())
    if resume and not exists:
        raise ExperimentError(f"--resume: {exp_dir} does not exist, so there is nothing to resume; drop --resume")
    if exists and not resume and not overwrite:
        raise ExperimentError(
            f"experiment {exp_dir} already exists: pass --resume to continue it, --overwrite to start again, "
            "or choose another --exp"
        )


def print_dry_run(config: TrainConfig) -> None:
    from rich.table import Table

    from pi0cli.cli import console
    from pi0cli.training.dryrun import dry_run

    with console.err.status(f"compiling one train step of {config.name} abstractly ..."):
        report = dry_run(config)
    gib = 2**30
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(justify="right")
    for label, value in [
        ("preset", config.name),
        ("parameters", f"{report.total_params:,}"),
        ("trainable", f"{report.trainable_params:,}"),
        ("optimizer state", f"{report.optimizer_state_bytes / gib:.2f} GiB"),
        ("devices x batch", f"{report.devices} x {report.batch_size // report.devices}"),
        ("arguments / device", f"{report.argument_bytes / gib:.2f} GiB"),
        ("temporaries / device", f"{report.temp_bytes / gib:.2f} GiB"),
        ("peak memory / device", f"{report.peak_bytes / gib:.2f} GiB"),
    ]:
        table.add_row(label, value)
    console.out.print(table)


def find_norm_stats(config: TrainConfig, asset_id: str, explicit: Path | None) -> dict[str, Any]:
    """Norm stats for training: ``--norm-stats``, else ``./assets/<asset_id>/``, else the ``--from``
    checkpoint's assets; one clear error when none exists."""
    from pi0cli.normstats import load_norm_stats, norm_stats_path

    candidates = [explicit] if explicit is not None else [Path("assets") / asset_id]
    if explicit is None and config.init_from:
        candidates.append(Path(config.init_from) / "assets" / asset_id)
    for candidate in candidates:
        if norm_stats_path(candidate).is_file():
            return load_norm_stats(candidate)
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


class _Progress:
    """A rich progress bar with loss, grad norm, steps/s and ETA (stderr; quiet when not a terminal)."""

    def __init__(self, total: int, start: int, title: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from pi0cli.cli import console

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  grad {task.fields[grad]}  {task.fields[rate]} steps/s"),
            TimeRemainingColumn(), console=console.err, transient=False,
        )
        self.task = self.progress.add_task(title, total=total, completed=start, loss="-", grad="-", rate="-")

    def __enter__(self) -> _Progress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def update(self, step: int, metrics: dict[str, float]) -> None:
        self.progress.update(self.task, completed=step, loss=f"{metrics['loss']:.4f}",
                             grad=f"{metrics.get('grad_norm', float('nan')):.3f}", rate=f"{metrics['steps_per_s']:.2f}")


def _wandb_logger(config: TrainConfig, exp_dir: Path, enabled: bool):
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


def _tokenizer(config: TrainConfig, explicit: Path | None, frames: Any) -> tuple[Any, bytes | None]:
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
    from pi0cli.policy.loading import train_tiny_tokenizer

    data = train_tiny_tokenizer(list(frames.tasks) + ([config.default_prompt] if config.default_prompt else []))
    tokenizer = PaligemmaTokenizer(max_len, model=data)
    if tokenizer.vocab_size > config.model.vlm.vocab_size:
        raise Pi0Error(f"the tokenizer's {tokenizer.vocab_size} ids do not fit the model's vocabulary of "
                       f"{config.model.vlm.vocab_size}")
    return tokenizer, data


def _check_pairing(embodiment: Any, frames: Any, dataset: str) -> None:
    """A dataset recorded for another robot fails here, naming the columns, not deep in the loader."""
    features = (frames.info or {}).get("features", {})
    needed = [embodiment.dataset_keys[k] for k in [c.key for c in embodiment.cameras if c.required]
              + [f.key for f in embodiment.state]] + [embodiment.action_key]
    missing = [column for column in needed if column not in features]
    if missing:
        raise Pi0Error(
            f"dataset {dataset} does not fit embodiment {embodiment.name!r}: it has no column(s) "
            f"{', '.join(missing)} (it has {', '.join(sorted(k for k in features if '.' in k or k in needed)) or 'none'}); "
            "pick the embodiment the dataset was recorded with"
        )
    for field in embodiment.state:
        shape = tuple(features.get(embodiment.dataset_keys[field.key], {}).get("shape", ()))
        if shape and shape[-1] != field.dim:
            raise Pi0Error(f"dataset {dataset}: column {embodiment.dataset_keys[field.key]!r} has {shape[-1]} dims "
                           f"but embodiment {embodiment.name!r} expects {field.dim}")
    shape = tuple(features[embodiment.action_key].get("shape", ()))
    if shape and shape[-1] != embodiment.action_dim:
        raise Pi0Error(f"dataset {dataset}: column {embodiment.action_key!r} has {shape[-1]} dims but embodiment "
                       f"{embodiment.name!r} has {embodiment.action_dim} actions")


def train(config: TrainConfig, *, exp_dir: Path, resume: bool = False, overwrite: bool = False,
          norm_stats: Path | None = None, tokenizer: Path | None = None, wandb: bool = False,
          quiet: bool = False) -> Any:
    """Run ``pi0 train``: every check first (one clear error each), then the training loop."""
    from pi0cli.data.lerobot import LeRobotFrames
    from pi0cli.data.loader import DataLoader, Shard
    from pi0cli.pipeline import Pipeline
    from pi0cli.plugins.manager import get_registry
    from pi0cli.policy.loading import FORMAT, config_to_dict
    from pi0cli.training import trainer
    from pi0cli.training.checkpoints import Assets, wipe
    from pi0cli.training.weights import load_initial_weights

    embodiment = get_registry().embodiment(config.embodiment)
    if not config.dataset:
        raise Pi0Error(f"preset {config.name!r} names no dataset: pass --dataset ROOT_OR_REPO_ID")
    exp_dir = Path(exp_dir).absolute()
    check_experiment_dir(exp_dir, resume=resume, overwrite=overwrite)
    stats = find_norm_stats(config, embodiment.asset_id, norm_stats)
    frames = LeRobotFrames(config.dataset, action_key=embodiment.action_key, action_horizon=config.model.action_horizon)
    _check_pairing(embodiment, frames, config.dataset)
    tok, tokenizer_bytes = _tokenizer(config, tokenizer, frames)
    pipeline = Pipeline.create(embodiment, config.model, stats, tokenizer=tok,
                               delta_action_mask=config.delta_action_mask, default_prompt=config.default_prompt)
    if config.init_from and not resume and not Path(config.init_from).exists():
        raise Pi0Error(f"--from {config.init_from}: no such checkpoint")
    if overwrite:
        wipe(exp_dir)
    loader = DataLoader(frames, pipeline.training_inputs(), batch_size=config.batch_size, seed=config.seed,
                        shard=Shard.from_jax(), num_workers=config.num_workers)
    delta = None if config.delta_action_mask is None else list(config.delta_action_mask)
    assets = Assets(
        norm_stats={embodiment.asset_id: stats},
        config={
            "format": FORMAT, "model": config_to_dict(config.model), "embodiment": embodiment.name,
            "asset_id": embodiment.asset_id, "default_prompt": pipeline.default_prompt,
            "delta_action_mask": "embodiment" if delta is None else delta,
            "metadata": dict(config.policy_metadata) or dict(embodiment.metadata),
            "train_config": config_as_dict(config), "dataset": str(config.dataset),
        },
        files={"tokenizer.model": tokenizer_bytes} if tokenizer_bytes else {},
    )
    exp_dir.mkdir(parents=True, exist_ok=True)
    log_wandb = _wandb_logger(config, exp_dir, wandb)
    init = None if resume or not config.init_from else (lambda model: load_initial_weights(model, config.init_from))
    start = max((int(p.name) for p in exp_dir.iterdir() if p.name.isdigit()), default=0) if resume else 0

    def on_step(step: int, metrics: dict[str, float]) -> None:
        if progress is not None:
            progress.update(step, metrics)
        if log_wandb is not None:
            log_wandb(step, metrics)

    progress = None if quiet else _Progress(config.num_train_steps, start, config.name)
    if progress is None:
        return trainer.run(config, exp_dir=exp_dir, batches=loader.batches, assets=assets, init_params=init,
                           resume=resume, on_step=on_step)
    with progress:
        return trainer.run(config, exp_dir=exp_dir, batches=loader.batches, assets=assets, init_params=init,
                           resume=resume, on_step=on_step)
