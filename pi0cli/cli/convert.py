"""``pi0 convert``: raw recordings into LeRobot datasets; checkpoints between pi0, openpi and LeRobot."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import typer.main
from typer.core import TyperGroup

from pi0cli.cli import console, helpstyle

if TYPE_CHECKING:
    # typer's own (vendored) click types, which TyperGroup's methods take and return; typing only.
    from typer._click import Command, Context

    from pi0cli.convert.datasets import DatasetConverter, OptionValue

app = typer.Typer(help="Convert raw recordings into LeRobot datasets, and checkpoints between pi0, openpi and LeRobot.",
                  no_args_is_help=True)
Out = Annotated[Path, typer.Option("--out", "-o", help="Destination dataset root (must not exist unless --overwrite).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing dataset at --out.")]


class _ConverterGroup(TyperGroup):
    """``pi0 convert dataset``: one sub-command per dataset converter the installed plugins register, found
    through the registry when asked for (help, completion, a run), exactly as a third party's would be."""

    def list_commands(self, ctx: Context) -> list[str]:
        return [*super().list_commands(ctx), *_converters()]

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        command = super().get_command(ctx, cmd_name)
        converters = _converters()
        if command is None and cmd_name in converters:
            command = _converter_command(converters[cmd_name])
        return command


dataset_app = typer.Typer(cls=_ConverterGroup, no_args_is_help=True,
                          help="Convert raw robot recordings into a LeRobot dataset (validated first, written "
                               "atomically); each installed robot plugin may add converters.")
app.add_typer(dataset_app, name="dataset")


def _converters() -> Mapping[str, DatasetConverter]:
    return console.registry().dataset_converters


def _frames_progress(title: str) -> console.Progress:
    """A frames progress that appears with the first frame, so validation errors print alone."""
    return console.Progress(title, unit="frames")


def _converter_command(converter: DatasetConverter) -> Command:
    """The ``pi0 convert dataset NAME`` command of ``converter``: SRC, --out, --overwrite and its own options,
    built as a typer command from a synthesised signature (so help and errors look like every other command)."""
    params = [
        inspect.Parameter("src", inspect.Parameter.KEYWORD_ONLY,
                          annotation=Annotated[Path, typer.Argument(help=converter.source_help, show_default=False)]),
        inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, annotation=Out),
    ]
    for option in converter.options:
        declaration = f"{option.flag}/--no-{option.flag[2:]}" if option.type is bool else option.flag
        info = typer.Option(declaration, help=option.help, min=option.minimum)
        kind = option.type if option.default is not None else option.type | None
        params.append(inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=option.default,
                                        annotation=Annotated[kind, info]))
    params.append(inspect.Parameter("overwrite", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Overwrite))

    def command(src: Path, out: Path, overwrite: bool = False, **options: OptionValue) -> None:
        with _frames_progress(converter.name) as progress:
            root = converter.convert(src, out, overwrite=overwrite,
                                     progress=lambda done, total: progress.update(done, total=total), **options)
        console.out.print(f"wrote {root}")

    # typer reads both the signature and the (evaluated) annotations.
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = converter.summary
    single = typer.Typer(add_completion=False)
    epilog = helpstyle.epilog(converter.examples) if converter.examples else None
    single.command(converter.name, epilog=epilog)(command)
    return typer.main.get_command(single)


@app.command("checkpoint")
def checkpoint(
    src: Annotated[Path, typer.Argument(help="A pi0 / openpi checkpoint step, a LeRobot pi0 or pi05 policy directory "
                                             "(model.safetensors), or a big_vision PaliGemma .npz.")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Destination directory (must not exist unless --overwrite).")],
    to: Annotated[str, typer.Option("--to", help="Target format: pi0, openpi or lerobot.")] = "pi0",
    model: Annotated[str | None, typer.Option(
        "--model", help="Model preset of the source (pi0, pi05...); needed for checkpoints written by openpi, "
                        "LeRobot policies without config.json, and .npz files.")] = None,
    dtype: Annotated[str | None, typer.Option(
        "--dtype", help="Cast the weights: float32 or bfloat16 (default: keep).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the fresh weights around a PaliGemma backbone.")] = 0,
    verify: Annotated[bool, typer.Option(
        "--verify", help="Run one example through both sides (JAX and, for LeRobot, LeRobot's PyTorch pi0) and "
                         "fail above --tolerance.")] = False,
    tolerance: Annotated[float, typer.Option(
        "--tolerance", min=0.0, help="Max abs action difference --verify accepts.")] = 1e-4,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing checkpoint at --out.")] = False,
) -> None:
    """Convert a checkpoint between pi0, openpi and LeRobot (or a PaliGemma .npz into a fresh pi0 checkpoint)."""
    import shutil

    from rich.table import Table

    from pi0cli.convert import checkpoints as ck
    from pi0cli.errors import Pi0Error

    if to not in ck.TARGETS:
        raise typer.BadParameter(f"{to!r} is not a target format; choose one of {', '.join(ck.TARGETS)}",
                                 param_hint="--to")
    if dtype not in (None, "float32", "bfloat16"):
        raise typer.BadParameter(f"{dtype!r} is not supported; use float32 or bfloat16", param_hint="--dtype")
    if Path(src).is_dir():
        from pi0cli.cli.checkpoints import step_dir

        src = step_dir(src)  # an experiment folder: its latest complete step, said on stderr
    with console.err.status(f"reading {src}"):
        source = ck.read_checkpoint(src, model=model, seed=seed)
    if verify and "lerobot" in (to, source.format) and not source.model_config.family.autoregressive:
        from pi0cli.convert.verify import lerobot_unavailable

        reason = lerobot_unavailable(source.model_config)  # known before anything is written
        if reason is not None:
            console.warn(f"--verify will compare the JAX round trip only, not LeRobot's PyTorch pi0: {reason}")
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

    steps = "greedy decoding" if source.model_config.family.autoregressive else "10 denoising steps"
    with console.err.status(f"verifying (float32, {steps})"):
        try:
            result = run_verify(source, ck.read_checkpoint(written, model=model), tolerance=tolerance)
        except Pi0Error as exc:  # a re-run must not need --overwrite because the check could not run
            shutil.rmtree(written, ignore_errors=True)
            raise Pi0Error(f"{exc}; {written} was removed") from None
    if result.compared == "actions":
        title = (f"max |actions - source (pi0 JAX)|; max |action| {result.max_abs_action:.3f}, "
                 f"max |action - noise| {result.signal:.3f}")
    else:
        title = (f"pi0-FAST against the source (JAX): max |loss difference| and differing tokens of "
                 f"{result.signal:.0f} greedy ones; max |loss| {result.max_abs_action:.3f}")
    table = Table(title=title)
    table.add_column("implementation")
    table.add_column("max abs diff", justify="right")
    table.add_column("gate", justify="center")
    for name, diff in result.differences.items():
        gate = ("ok" if diff <= tolerance else "FAIL") if name in result.gated else "info"
        table.add_row(name, f"{diff:.3e}", gate)
    console.out.print(table)
    for name, why in result.skipped.items():
        console.out.print(f"not compared: {name}, because {why}", markup=False)
    if not result.passed:
        shutil.rmtree(written, ignore_errors=True)
        raise Pi0Error(f"verification failed: a difference is above --tolerance {tolerance:g}; {written} was removed")
    console.out.print(f"verified: every gated difference is <= {tolerance:g}"
                      + (" (the JAX round trip; see 'not compared' above)" if result.skipped else ""))
