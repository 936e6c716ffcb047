"""``pi0 embodiments``: the robots installed plugins provide."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from pi0cli.cli import console

app = typer.Typer(help="List and inspect the robots (embodiments) that installed plugins provide.",
                  no_args_is_help=True)


def complete_embodiment(incomplete: str) -> list[str]:
    """Shell completion of embodiment names."""
    try:
        from pi0cli.plugins.manager import get_registry

        return [name for name in get_registry().embodiments if name.startswith(incomplete)]
    except Exception:  # completion must never print a traceback into the user's shell
        return []


JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@app.command("list")
def list_embodiments(as_json: JsonFlag = False) -> None:
    """List every registered embodiment with its dims, rate, cameras and the plugin providing it."""
    registry = console.registry()
    rows: list[dict[str, Any]] = []
    for name, emb in registry.embodiments.items():
        owner = registry.owner(name)
        rows.append({
            "name": name,
            "distribution": owner.distribution,
            "version": owner.version,
            "plugin": owner.name,
            "state_dim": emb.state_dim,
            "action_dim": emb.action_dim,
            "control_hz": emb.control_hz,
            "cameras": [c.key for c in emb.cameras],
            "default_model": emb.default_model,
            "default_checkpoint": emb.default_checkpoint,
            "asset_id": emb.asset_id,
            "description": emb.description,
        })
    if as_json:
        console.out.print_json(json.dumps(rows))
        return
    if not rows:
        console.out.print("No embodiments registered. Install a plugin (e.g. pip install pi0-embodiment-aloha).")
        return
    from rich.table import Table

    table = Table(title="Embodiments", title_justify="left")
    for column in ("name", "state", "action", "Hz", "cameras", "model", "distribution"):
        table.add_column(column, no_wrap=column != "cameras")
    for row in rows:
        table.add_row(
            row["name"], str(row["state_dim"]), str(row["action_dim"]), f"{row['control_hz']:g}",
            ", ".join(key.rsplit("/", 1)[-1] for key in row["cameras"]), row["default_model"], row["distribution"],
        )
    console.out.print(table)


@app.command("show")
def show_embodiment(
    name: Annotated[str, typer.Argument(help="Embodiment name (see `pi0 embodiments list`).",
                                        autocompletion=complete_embodiment)],
    as_json: JsonFlag = False,
) -> None:
    """Show the full contract of one embodiment: cameras, state, actions, dataset keys, transforms."""
    registry = console.registry()
    emb = registry.embodiment(name)
    owner = registry.owner(name)
    # The simulator is the one a plugin registers for this robot (pi0 record / pi0 eval drive it), if any.
    simulator = registry.simulator_for(emb.name)
    info = emb.describe() | {"distribution": owner.distribution, "version": owner.version,
                             "simulator": simulator.name if simulator is not None else None}
    if as_json:
        console.out.print_json(json.dumps(info))
        return
    from rich.table import Table

    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    mask = info["delta_action_mask"]
    for label, value in [
        ("name", info["name"]),
        ("description", info["description"]),
        ("provided by", f"{owner.distribution} {owner.version} (plugin {owner.name!r})"),
        ("state", f"{info['state_dim']} = " + " + ".join(f"{f['key']}[{f['dim']}]" for f in info["state"])),
        ("actions", f"{info['action_dim']} at {info['control_hz']:g} Hz, {info['open_loop_steps']} executed per chunk"),
        ("delta dims", "none (absolute)" if mask is None else "".join("D" if m else "a" for m in mask)
         + "  (D = relative to state, a = absolute)"),
        ("gripper", info["gripper"] or "-"),
        ("default model", info["default_model"]),
        ("default checkpoint", info["default_checkpoint"] or "-"),
        ("norm-stats asset", info["asset_id"]),
        ("default prompt", info["default_prompt"] or "- (clients send one)"),
        ("simulator", info["simulator"] or "-"),
        ("metadata", json.dumps(info["metadata"]) if info["metadata"] else "-"),
        ("inputs", info["inputs"]),
        ("outputs", info["outputs"]),
    ]:
        summary.add_row(label, console.escape(str(value)))
    console.out.print(summary)

    cameras = Table("camera key", "model slot", "required", "native size", "layout", title="Cameras",
                    title_justify="left")
    for cam in info["cameras"]:
        cameras.add_row(cam["key"], cam["slot"] or "(unused)", "yes" if cam["required"] else "no",
                        f"{cam['height']}x{cam['width']}", "CHW" if cam["channels_first"] else "HWC")
    console.out.print(cameras)
    keys = Table("observation key", "dataset column", title="Dataset key map", title_justify="left")
    for key, column in info["dataset_keys"].items():
        keys.add_row(key, column)
    console.out.print(keys)
