"""``pi0 convert``: raw recordings into LeRobot datasets; checkpoints between pi0, openpi and LeRobot."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pi0cli.cli import console

app = typer.Typer(help="Convert raw recordings into LeRobot datasets, and checkpoints between pi0, openpi and LeRobot.",
                  no_args_is_help=True)
dataset_app = typer.Typer(help="Convert raw robot recordings into a LeRobot dataset (validated first, written atomically).",
                          no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")

Out = Annotated[Path, typer.Option("--out", "-o", help="Destination dataset root (must not exist unless --overwrite).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing dataset at --out.")]


class _Progress:
    """A frames progress bar that appears with the first frame, so validation errors print alone."""

    def __init__(self, title: str):
        self.title, self.bar, self.task = title, None, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn(f"[bold]{self.title}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("frames"), TimeRemainingColumn(), console=console.err)
            self.bar.start()
            self.task = self.bar.add_task(self.title, total=total)
        self.bar.update(self.task, completed=done)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


@dataset_app.command("aloha-hdf5")
def aloha_hdf5(
    src: Annotated[Path, typer.Argument(help="Folder of episode_*.hdf5 files (ALOHA recorder layout).")],
    out: Out,
    fps: Annotated[float, typer.Option("--fps", min=1.0, help="Recording rate.")] = 50.0,
    task: Annotated[str | None, typer.Option("--task", help="Task prompt of every episode (default: the folder name).")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Raw ALOHA episodes into a LeRobot dataset for the [bold]aloha[/bold] robot."""
    from pi0cli.convert import aloha_hdf5 as converter

    task = task or Path(src).absolute().name.replace("_", " ")
    with _Progress("aloha-hdf5") as progress:
        root = converter.convert(src, out, fps=fps, task=task, overwrite=overwrite, progress=progress)
    console.out.print(f"wrote {root}")


@dataset_app.command("libero-hdf5")
def libero_hdf5(
    src: Annotated[Path, typer.Argument(help="A LIBERO demonstration .hdf5 file or a folder of them.")],
    out: Out,
    fps: Annotated[float, typer.Option("--fps", min=1.0, help="Recording rate.")] = 10.0,
    overwrite: Overwrite = False,
) -> None:
    """LIBERO demonstrations into a LeRobot dataset for the [bold]libero[/bold] robot."""
    from pi0cli.convert import libero_hdf5 as converter

    with _Progress("libero-hdf5") as progress:
        root = converter.convert(src, out, fps=fps, overwrite=overwrite, progress=progress)
    console.out.print(f"wrote {root}")


@app.command("checkpoint")
def checkpoint(
    src: Annotated[Path, typer.Argument(help="A pi0 / openpi checkpoint step, a LeRobot pi0 or pi05 policy directory "
                                             "(model.safetensors), or a big_vision PaliGemma .npz.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Destination directory (must not exist unless --overwrite).")],
    to: Annotated[str, typer.Option("--to", help="Target format: pi0, openpi or lerobot.")] = "pi0",
    model: Annotated[str | None, typer.Option(
        "--model", help="Model preset of the source (pi0, pi05...); needed for checkpoints written by openpi, "
                        "LeRobot policies without config.json, and .npz files.")] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="Cast the weights: float32 or bfloat16 (default: keep).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the fresh weights around a PaliGemma backbone.")] = 0,
    verify: Annotated[bool, typer.Option("--verify", help="Run one example through both sides (JAX and, for LeRobot, "
                                                           "LeRobot's PyTorch pi0) and fail above --tolerance.")] = False,
    tolerance: Annotated[float, typer.Option("--tolerance", min=0.0, help="Max abs action difference --verify accepts.")] = 1e-4,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing checkpoint at --out.")] = False,
) -> None:
    """Convert a checkpoint between pi0, openpi and LeRobot (or a PaliGemma .npz into a fresh pi0 checkpoint)."""
    import shutil

    from rich.table import Table

    from pi0cli.convert import checkpoints as ck
    from pi0cli.errors import Pi0Error

    if to not in ck.TARGETS:
        raise typer.BadParameter(f"{to!r} is not a target format; choose one of {', '.join(ck.TARGETS)}", param_hint="--to")
    if dtype not in (None, "float32", "bfloat16"):
        raise typer.BadParameter(f"{dtype!r} is not supported; use float32 or bfloat16", param_hint="--dtype")
    with console.err.status(f"reading {src}"):
        source = ck.read_checkpoint(src, model=model, seed=seed)
    with console.err.status(f"writing {out} ({to})"):
        written = ck.write_checkpoint(source, out, to, dtype=dtype, overwrite=overwrite)
    note = ""
    if to == "lerobot" and not ck.is_full_size(source.model_config):
        note = " (reduced model: LeRobot's config.json names only full-size variants; sizes are in pi0_config.json)"
    console.out.print(f"wrote {written} ({to}, {len(source.params)} arrays from {source.format}){note}")
    if source.assets_dir is None:
        console.warn("the source has no norm stats; compute them with `pi0 norm-stats` before serving this checkpoint")
    if not verify:
        return
    from pi0cli.convert.verify import verify as run_verify

    with console.err.status("verifying (float32, 10 denoising steps)"):
        result = run_verify(source, ck.read_checkpoint(written, model=model), tolerance=tolerance)
    table = Table(title=f"max |actions - source (pi0 JAX)|; max |action| {result.max_abs_action:.3f}, "
                        f"max |action - noise| {result.signal:.3f}")
    table.add_column("implementation")
    table.add_column("max abs diff", justify="right")
    table.add_column("gate", justify="center")
    for name, diff in result.differences.items():
        gate = ("ok" if diff <= tolerance else "FAIL") if name in result.gated else "info"
        table.add_row(name, f"{diff:.3e}", gate)
    console.out.print(table)
    if not result.passed:
        shutil.rmtree(written, ignore_errors=True)
        raise Pi0Error(f"verification failed: a difference is above --tolerance {tolerance:g}; {written} was removed")
    console.out.print(f"verified: every gated difference is <= {tolerance:g}")
