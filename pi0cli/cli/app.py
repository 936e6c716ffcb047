"""The root ``pi0`` command and the mapping of errors to exit codes.

Exit codes: 0 success, 1 a :class:`~pi0cli.errors.Pi0Error` (one red line on stderr), 2 a usage error
(click's message). ``PI0_DEBUG=1`` lets the traceback through instead.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from pi0cli import __version__
from pi0cli.cli import (
    console,
    convert,
    doctor,
    embodiments,
    evaluate,
    export,
    helpstyle,
    norm_stats,
    plugins,
    record,
    serve,
    train,
)

app = typer.Typer(
    name="pi0",
    help="Train, serve, evaluate and record pi0-family robot policies on any robot.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(embodiments.app, name="embodiments")
app.command("train")(train.train)
app.add_typer(convert.app, name="convert")
app.command("serve")(serve.serve)
app.command("norm-stats")(norm_stats.norm_stats)
app.command("record")(record.record)
app.command("eval")(evaluate.evaluate)
app.command("doctor")(doctor.doctor)
app.command("plugins")(plugins.plugins)
app.command("export")(export.export)
helpstyle.install()
helpstyle.add_examples(app)


def _print_version(value: bool) -> None:
    if not value:
        return
    from rich.table import Table

    console.out.print(f"pi0 {__version__}")
    registry = console.registry()
    if registry.plugins:
        table = Table("plugin", "distribution", "version", "embodiments", box=None, pad_edge=False)
        for plugin in registry.plugins:
            provides = ", ".join(plugin.embodiments) if plugin.error is None else "[red]failed to load[/red]"
            table.add_row(plugin.name, plugin.distribution, plugin.version, provides)
        console.out.print(table)
    else:
        console.out.print("no plugins loaded")
    raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True,
                     help="Show the version of pi0 and of every plugin distribution, then exit."),
    ] = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Also show what third-party libraries print (video encoder, progress bars).")] = False,
) -> None:
    """Train, serve, evaluate and record pi0-family robot policies on any robot.

    Robots are plugins: see [bold]pi0 embodiments list[/bold].
    """
    from pi0cli.cli.noise import quiet_third_party

    quiet_third_party(ctx.invoked_subcommand, verbose_output=verbose)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turning pi0 errors into one red line and exit code 1."""
    from pi0cli.errors import Pi0Error

    try:
        app(args=argv, prog_name="pi0")
    except Pi0Error as exc:
        if os.environ.get("PI0_DEBUG"):
            raise
        one_line = " ".join(str(exc).split())
        console.err.print(f"[bold red]Error:[/bold red] {console.escape(one_line)}")
        sys.exit(1)
