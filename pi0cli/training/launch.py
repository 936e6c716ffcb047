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
