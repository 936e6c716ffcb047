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
    else:
        table = Table("check", "status", "found", "fix", box=None, pad_edge=False)
        for row in rows:
            escape = console.escape
            table.add_row(escape(row.check), _STYLE[row.status], escape(row.detail), escape(row.fix))
        console.out.print(table)
        warnings = sum(row.status == "warn" for row in rows)
        if blocking:
            console.out.print(f"[bold red]{len(blocking)} blocking problem(s)[/bold red]"
                              + (f", {warnings} warning(s)" if warnings else "") + ": see the fix column")
        else:
            console.out.print("[green]ready[/green]"
                              + (f" ({warnings} warning(s): see the fix column)" if warnings else ""))
    if blocking:
        raise typer.Exit(1)
