"""``pi0 convert``: raw recordings into LeRobot datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pi0cli.cli import console

app = typer.Typer(help="Convert raw recordings into LeRobot datasets.", no_args_is_help=True)
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
