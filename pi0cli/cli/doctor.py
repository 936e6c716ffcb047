"""``pi0 doctor``: one table saying whether this machine can record, train, serve and evaluate."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated

import typer

from pi0cli.cli import console

_STYLE = {"ok": "[green]ok[/green]", "warn": "[yellow]warn[/yellow]", "fail": "[bold red]FAIL[/bold red]",
          "info": "[dim]info[/dim]"}


def doctor(
    network: Annotated[bool, typer.Option("--network/--no-network",
                                          help="Check whether the Hugging Face Hub answers (3 s at most).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """Check Python, JAX devices, video encoding, headless rendering, LeRobot/torch, plugins, caches and the
    network; exit 1 when something blocking is wrong (each failing row names its fix)."""
    from rich.table import Table

    from pi0cli.doctor import run_checks

    # The plugin table is the report here: the registry's one-line warnings would say it twice.
    from pi0cli.plugins.manager import get_registry

    with console.err.status("checking") as status:
        rows = run_checks(get_registry(), network=network, on_check=lambda name: status.update(f"checking {name}"))
    blocking = [row for row in rows if row.blocking]
    if as_json:
        console.out.print_json(json.dumps([{**dataclasses.asdict(row), "blocking": row.blocking} for row in rows]))
    elif not console.out.is_terminal:
        # A pipe or a log: one unwrapped line per check and per fix, so commands and URLs stay whole.
        width = max(len(row.check) for row in rows)
        for row in rows:
            console.out.print(f"{_STYLE[row.status]}{' ' * (6 - len(row.status))}{console.escape(row.check):{width}}  "
                              f"{console.escape(row.detail)}")
            if row.fix:
                console.out.print(f"{' ' * (6 + width + 2)}fix: {console.escape(row.fix)}")
    else:
        # Names never shrink; long findings and fixes wrap, and a word longer than its column folds.
        table = Table(box=None, pad_edge=False)
        table.add_column("check", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("found", overflow="fold")
        table.add_column("fix", overflow="fold")
        for row in rows:
            escape = console.escape
            table.add_row(escape(row.check), _STYLE[row.status], escape(row.detail), escape(row.fix))
        console.out.print(table)
    if not as_json:
        warnings = sum(row.status == "warn" for row in rows)
        if blocking:
            console.out.print(f"[bold red]{len(blocking)} blocking problem(s)[/bold red]"
                              + (f", {warnings} warning(s)" if warnings else "") + ": each names its fix")
        else:
            console.out.print("[green]ready[/green]"
                              + (f" ({warnings} warning(s): each names its fix)" if warnings else ""))
    if blocking:
        raise typer.Exit(1)
