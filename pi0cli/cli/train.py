"""``pi0 train``: fine-tune a pi0 model from a preset or from flags."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pi0cli.cli import console

if TYPE_CHECKING:
    from pi0cli.data.mixture import MixtureSpec
    from pi0cli.training.config import TrainConfig
    from pi0cli.training.trainer import RunResult


def complete_preset(incomplete: str) -> list[str]:
    try:
        from pi0cli.plugins.manager import get_registry

        return [name for name in get_registry().presets if name.startswith(incomplete)]
    except Exception:
        return []


def train(
    preset: Annotated[str | None, typer.Argument(help="Training preset (see --list-presets); flags override it.",
                                                 autocompletion=complete_preset)] = None,
    embodiment: Annotated[str | None, typer.Option(
        "--embodiment", "-e", help="Robot to train for (default: the preset's).")] = None,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", "-d", help="LeRobot dataset: local root or repo id in the local cache.")] = None,
    mixture: Annotated[Path | None, typer.Option(
        "--mixture", help="Mixture file (TOML): [[dataset]] entries with path or repo_id, embodiment, weight "
        "(and an optional prompt); instead of --dataset.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="Model preset: pi0, pi05, pi0_tiny, ... (default: the preset's, else pi0).")] = None,
    lora: Annotated[bool, typer.Option(
        "--lora", help="Train LoRA adapters only (VLM and expert); fits 24 GB GPUs.")] = False,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="Number of training steps.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Global batch size.")] = None,
    lr: Annotated[float | None, typer.Option("--lr", min=0.0, help="Peak learning rate.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of initialisation, data order and noise.")] = None,
    init_from: Annotated[str | None, typer.Option(
        "--from", help="Initial weights: a pi0 or openpi checkpoint dir, or a PaliGemma .npz.")] = None,
    norm_stats: Annotated[Path | None, typer.Option(
        "--norm-stats", help="norm_stats.json (or its directory); default: ./assets/<asset_id>/.")] = None,
    tokenizer: Annotated[Path | None, typer.Option(
        "--tokenizer", help="SentencePiece model for prompts (default: the PaliGemma tokenizer).")] = None,
    exp: Annotated[str, typer.Option(
        "--exp", help="Experiment name: checkpoints go to CHECKPOINT_DIR/PRESET/EXP.")] = "default",
    checkpoint_dir: Annotated[Path, typer.Option(
        "--checkpoint-dir", help="Where experiments are stored.")] = Path("checkpoints"),
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the experiment from its latest checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Delete the experiment's checkpoints and start again.")] = False,
    save_interval: Annotated[int | None, typer.Option(
        "--save-interval", min=1, help="Steps between checkpoints.")] = None,
    log_interval: Annotated[int | None, typer.Option(
        "--log-interval", min=1, help="Steps between metric lines.")] = None,
    fsdp_devices: Annotated[int | None, typer.Option(
        "--fsdp-devices", min=1, help="Devices each parameter is sharded over.")] = None,
    coordinator: Annotated[str | None, typer.Option(
        "--coordinator", help="host:port of process 0 for multi-host training.")] = None,
    num_processes: Annotated[int | None, typer.Option(
        "--num-processes", min=1, help="Processes in a multi-host run.")] = None,
    process_id: Annotated[int | None, typer.Option(
        "--process-id", min=0, help="This process's index in a multi-host run.")] = None,
    wandb: Annotated[bool, typer.Option(
        "--wandb", help="Also log metrics to Weights & Biases (if installed).")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print parameter counts and the compiled memory of one step; train nothing.")] = False,
    memory_budget: Annotated[str | None, typer.Option(
        "--memory-budget", help="Memory per device (e.g. 24GiB): pick the fastest remat / accumulation / "
        "precision plan that fits, from compiled memory analyses.")] = None,
    allow_freeze_vision: Annotated[bool, typer.Option(
        "--allow-freeze-vision", help="Let --memory-budget freeze the vision tower (changes the recipe).")] = False,
    allow_no_ema: Annotated[bool, typer.Option(
        "--allow-no-ema", help="Let --memory-budget turn the EMA off (changes the recipe).")] = False,
    print_config: Annotated[bool, typer.Option(
        "--print-config", help="Print the resolved configuration and exit.")] = False,
    list_presets: Annotated[bool, typer.Option("--list-presets", help="List the training presets and exit.")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="With --list-presets: every preset's fields (descriptions included) as JSON.")] = False,
) -> None:
    """Fine-tune a pi0, pi0.5 or pi0-FAST policy on a LeRobot dataset."""
    if list_presets:
        _list_presets(as_json)
        return
    from pi0cli.training import launch

    registry = console.registry()
    if init_from is not None and Path(init_from).is_dir():
        from pi0cli.cli.checkpoints import step_dir

        init_from = str(step_dir(init_from))  # an experiment folder: its latest complete step, said on stderr
    config = launch.resolve_config(
        registry.preset(preset) if preset is not None else None,
        embodiment=registry.embodiment(embodiment) if embodiment is not None else None, dataset=dataset,
        model=model, lora=lora, steps=steps, batch_size=batch_size, lr=lr, seed=seed, init_from=init_from,
        save_interval=save_interval, log_interval=log_interval, fsdp_devices=fsdp_devices,
    )
    spec = _read_mixture(mixture, dataset=dataset, embodiment=embodiment, norm_stats=norm_stats)
    if print_config:
        console.out.print_json(json.dumps(launch.config_as_dict(config)))
        return
    if resume and overwrite:
        from pi0cli.errors import Pi0Error

        raise Pi0Error("--resume and --overwrite contradict each other: pick one")
    if spec is not None and not dry_run:
        from pi0cli.data.mixture import resolve_embodiments
        from pi0cli.training.mixture_launch import check_mixture

        embodiments = resolve_embodiments(spec, registry.embodiment)
        check_mixture(config, spec, embodiments)  # every entry, before anything compiles (train warns once)
    launch.init_distributed(coordinator, num_processes, process_id)
    if dry_run and dataset is not None:
        from pi0cli.data.lerobot import resolve_dataset

        resolve_dataset(dataset)  # a --dataset that is not there fails fast, before a long compile
    if memory_budget is not None:
        config = _plan(config, memory_budget, allow_freeze_vision=allow_freeze_vision, allow_no_ema=allow_no_ema)
    if dry_run:
        _print_dry_run(config)
        return
    with console.Progress(config.name, config.num_train_steps, unit="steps", lines=console.out) as progress:

        first: dict[str, float] = {}  # when the run started, until the first report says what compiling cost
        reached: list[int] = []  # the last step reported, for a Ctrl-C's note

        def on_step(step: int, metrics: dict[str, float]) -> None:
            if first:
                console.err.print(f"the first {step - int(first['step'])} step(s) took "
                                  f"{time.perf_counter() - first['at']:.1f} s, compiling included")
                first.clear()
            reached.append(step)
            # A mixture's loss per dataset (means over the steps since the last report): "loss[aloha] 0.4123".
            progress.fields.update({f"loss[{key.removeprefix('loss/')}]": f"{value:.4f}"
                                    for key, value in metrics.items() if key.startswith("loss/")})
            progress.update(step, line=True, loss=f"{metrics['loss']:.4f}",
                            grad=f"{metrics.get('grad_norm', float('nan')):.3f}",
                            rate=f"{metrics['steps_per_s']:.2f} steps/s")

        def on_start(start: int) -> None:
            first.update(at=time.perf_counter(), step=start)
            progress.completed = start
            console.err.print(f"compiling the train step of {config.name}: the first step takes longest (tens of "
                              "seconds on a CPU), later ones run at the rate shown")

        exp_dir = checkpoint_dir / config.name / exp
        try:
            if spec is not None:
                from pi0cli.training.mixture_launch import train_mixture

                result = train_mixture(config, spec, embodiments, exp_dir=exp_dir, resume=resume,
                                       overwrite=overwrite, tokenizer=tokenizer, wandb=wandb, warn=console.warn,
                                       on_start=on_start, on_step=on_step)
            else:
                result = launch.train(config, registry.embodiment(config.embodiment), exp_dir=exp_dir,
                                      resume=resume, overwrite=overwrite, norm_stats=norm_stats, tokenizer=tokenizer,
                                      wandb=wandb, warn=console.warn, on_start=on_start, on_step=on_step)
        except KeyboardInterrupt:
            _print_interrupted(exp_dir, reached[-1] if reached else None, config)
            raise typer.Exit(130) from None
    _print_summary(result)


def _read_mixture(path: Path | None, *, dataset: str | None, embodiment: str | None,
                  norm_stats: Path | None) -> MixtureSpec | None:
    """The mixture file's entries, or None without --mixture; the one-dataset flags are refused beside it."""
    if path is None:
        return None
    from pi0cli.data.mixture import MixtureError, read_mixture

    for flag, value in (("--dataset", dataset), ("--embodiment", embodiment), ("--norm-stats", norm_stats)):
        if value is not None:
            raise MixtureError(f"--mixture and {flag} exclude each other: the mixture file names each dataset, its "
                               "embodiment and its norm stats (./assets/<asset_id>/); drop " + flag)
    return read_mixture(path)


def resume_command(argv: list[str]) -> str:
    """The command line that continues the run ``argv`` started: the same flags, --resume instead of
    --overwrite (``--resume`` with nothing saved yet starts from step 0, so it is always the next step)."""
    import shlex

    args = [a for a in argv if a != "--overwrite"]
    return shlex.join(["pi0", *args, *([] if "--resume" in args else ["--resume"])])


def _print_interrupted(exp_dir: Path, step: int | None, config: TrainConfig) -> None:
    """What Ctrl-C left behind: the step reached, the last complete checkpoint, and how to go on."""
    import sys

    from pi0cli.checkpoint import latest_step_dir

    saved = latest_step_dir(exp_dir)
    where = "before its first logged step" if step is None else f"after step {step} of {config.num_train_steps}"
    kept = (f"the last complete checkpoint is step {saved.name} ({saved.absolute()})" if saved is not None else
            f"no checkpoint was saved yet (one every {config.save_interval} steps)")
    console.err.print(f"interrupted {where}: {kept}. Continue with: {resume_command(sys.argv[1:])}",
                      markup=False, highlight=False)


def _print_summary(result: RunResult | None) -> None:
    """Evidence the run learned (loss at the start and the end) and where its checkpoint is."""
    if result is None:
        return
    losses = result.losses
    if losses:
        k = max(1, min(10, len(losses) // 10))
        first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
        console.out.print(f"loss {first:.4f} -> {last:.4f} (mean of the first and last {k} steps of this run, "
                          f"{last / first:.0%} of the start)" if first > 0 else f"loss {first:.4f} -> {last:.4f}")
    console.out.print(f"checkpoint saved to {result.exp_dir / str(result.last_step)}")


def _plan(config: TrainConfig, budget: str, *, allow_freeze_vision: bool, allow_no_ema: bool) -> TrainConfig:
    """The memory planner's config for ``budget``, its plan printed."""
    from rich.table import Table

    from pi0cli.training.planner import format_bytes, parse_bytes, plan_memory, plan_rows

    budget_bytes = parse_bytes(budget)
    started = time.perf_counter()
    compiled = 0
    # A spinner on a terminal; in a pipe or a log (which a spinner leaves blank for minutes) one line per plan.
    say = console.err.print if not console.err.is_terminal else (lambda message: None)
    first = f"planning {config.name} for {format_bytes(budget_bytes)} per device (each plan compiles a train step)"
    say(first)

    def on_compile(plan: object, peak: int) -> None:
        nonlocal compiled
        compiled += 1
        message = (f"planning {config.name}: plan {compiled} compiled to {format_bytes(peak)} per device "
                   f"({time.perf_counter() - started:.0f} s)")
        status.update(message)
        say(message)

    with console.err.status(first + " ...") as status:
        result = plan_memory(config, budget_bytes, allow_freeze_vision=allow_freeze_vision,
                             allow_drop_ema=allow_no_ema, on_compile=on_compile)
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for label, value in plan_rows(result):
        table.add_row(label, value)
    console.out.print(f"memory plan for {config.name}:")
    console.out.print(table)
    return result.config


def _print_dry_run(config: TrainConfig) -> None:
    from rich.table import Table

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
        ("backend", report.backend_note),
    ]:
        table.add_row(label, value)
    console.out.print(table)


def preset_rows() -> list[dict[str, object]]:
    """One plain record per registered preset: what ``--list-presets`` shows, and its JSON."""
    from pi0cli.training.peaks import missing_note

    rows: list[dict[str, object]] = []
    for name, cfg in console.registry().presets.items():
        peak = cfg.compiled_peak
        note = missing_note(name) if peak is None else peak.note()
        # The peak has its own column: drop the clause the preset's description carries about it.
        description = cfg.description.replace(f" ({note})", "").replace(f"; {note}", "")
        rows.append({"name": name, "embodiment": cfg.embodiment, "model": cfg.model.model_type,
                     "variant": cfg.model.paligemma_variant, "trains": "LoRA" if cfg.freeze != "full" else "all",
                     "steps": cfg.num_train_steps, "batch_size": cfg.batch_size, "dataset": cfg.dataset,
                     "peak_bytes_per_device": None if peak is None else peak.peak_bytes,
                     "peak_backend": None if peak is None else peak.backend, "description": description})
    return rows


def _list_presets(as_json: bool) -> None:
    """A table whose names, robots and numbers are never cut (its narrow columns fit 80 characters); the
    descriptions join it on a wide terminal and are always in ``--json``."""
    from rich.table import Table

    from pi0cli.training.peaks import format_bytes

    rows = preset_rows()
    if as_json:
        console.out.print_json(json.dumps(rows))
        return
    table = Table(box=None, pad_edge=False, padding=(0, 1, 0, 0), title="Training presets", title_justify="left")
    for header in ("preset", "embodiment", "model", "trains", "steps", "batch", "peak/device"):
        table.add_column(header, no_wrap=True, overflow="fold",
                         justify="right" if header in ("steps", "batch", "peak/device") else "left")
    wide = console.out.width >= 130
    if wide:
        table.add_column("description", overflow="fold")
    for row in rows:
        peak = row["peak_bytes_per_device"]
        cells = [str(row[k]) for k in ("name", "embodiment", "model", "trains", "steps", "batch_size")]
        cells.append("-" if not isinstance(peak, int) else format_bytes(peak))
        table.add_row(*(console.escape(c) for c in cells), *([console.escape(str(row["description"]))] if wide else []))
    console.out.print(table)
    console.out.print("peak/device: compiled memory of one train step at the preset's batch (-: not computed, see "
                      "--dry-run)", markup=False)
    if not wide:
        console.out.print("descriptions, and where each peak was compiled: --list-presets --json", markup=False)
