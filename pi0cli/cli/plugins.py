"""``pi0 plugins``: each installed plugin, its distribution and version, and the hooks it implements."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from pi0cli.cli import console


def plugins(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List every loaded plugin: its distribution, version, the hooks it implements and the robots it adds
    (a plugin that failed to load is listed with its error; PI0_LOAD_PLUGINS / PI0_DISABLE_PLUGINS choose)."""
    from pi0cli.plugins.manager import get_registry

    # The table shows failures itself: the registry's one-line warnings would say it twice.
    registry = get_registry()
    rows: list[dict[str, Any]] = [
        {"name": p.name, "distribution": p.distribution, "version": p.version, "hooks": registry.hooks(p),
         "embodiments": list(p.embodiments), "error": p.error}
        for p in registry.plugins
    ]
    if as_json:
        console.out.print_json(json.dumps(rows))
        return
    if not rows:
        console.out.print("no plugins loaded (PI0_LOAD_PLUGINS / PI0_DISABLE_PLUGINS choose which load)")
        return
    from rich.table import Table

    # Names and versions are never cut; hooks (short names: pi0_register_presets is "presets") stand one a line,
    # so a narrow terminal wraps between names, never inside one.
    table = Table(box=None, pad_edge=False)
    for column in ("plugin", "distribution", "version"):
        table.add_column(column, no_wrap=True)
    table.add_column("hooks", no_wrap=True)
    table.add_column("embodiments")
    for row in rows:
        hooks = "\n".join(hook.removeprefix("pi0_register_").removeprefix("pi0_") for hook in row["hooks"])
        provides = ", ".join(row["embodiments"]) or "-"
        if row["error"] is not None:
            hooks, provides = f"[red]failed to load[/red]: {console.escape(row['error'])}", "-"
        table.add_row(console.escape(row["name"]), console.escape(row["distribution"]), row["version"], hooks,
                      provides)
    console.out.print(table)
