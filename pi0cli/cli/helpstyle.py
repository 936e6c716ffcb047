"""How ``pi0 ... --help`` looks: no ``<bool>`` beside flags, ``EMBODIMENT`` (not ``{embodiment}``) in usage
lines, and a few examples under every command.

Typer renders a type column for every option, flags included, and wraps required arguments in braces; both
read as noise to a newcomer. :func:`install` adjusts those two renderings once, process-wide (the CLI is the
only user of typer here); :func:`add_examples` gives every registered command an epilog from
:data:`EXAMPLES` unless it already has one. Commands a plugin adds (``pi0 convert dataset NAME``) show the
examples the plugin declares, so this table names only built-in commands.
"""

from __future__ import annotations

from typing import Any

import typer

#: Example invocations, by command path (as typed after ``pi0``).
EXAMPLES: dict[str, tuple[str, ...]] = {
    "train": ("pi0 train --list-presets",
              "pi0 train pi0_aloha_sim_tiny --dataset demos --steps 3000",
              "pi0 train pi0_aloha --dataset ROOT --lora --dry-run",
              "pi0 train --embodiment ur5 --dataset ROOT --lora --dry-run"),
    "serve": ("pi0 serve --checkpoint checkpoints/pi0_aloha_sim_tiny/default/3000 --embodiment aloha_sim",
              "pi0 serve --embodiment aloha_sim    # the embodiment's default checkpoint, downloaded once"),
    "norm-stats": ("pi0 norm-stats aloha_sim --dataset demos --preset pi0_aloha_sim_tiny",
                   "pi0 norm-stats aloha_sim --dataset demos --check assets/lerobot/aloha_sim_transfer_cube_human"),
    "record": ("pi0 record aloha_sim --scripted --episodes 50 --out demos",
               "pi0 record aloha_sim --policy ws://127.0.0.1:8000 --episodes 5 --out rollouts"),
    "eval": ("pi0 eval aloha_sim --checkpoint checkpoints/pi0_aloha_sim_tiny/default/3000 --episodes 10 --out eval",
             "pi0 eval aloha_sim --server ws://127.0.0.1:8000 --connect-timeout 120",
             "pi0 eval --dataset heldout --checkpoint checkpoints/pi0_aloha_sim_tiny/default/3000 --out offline"),
    "doctor": ("pi0 doctor", "pi0 doctor --no-network --json"),
    "plugins": ("pi0 plugins", "pi0 plugins --json"),
    "export": ("pi0 export checkpoints/pi0_aloha_sim_tiny/default/3000 --format onnx --out aloha_onnx --verify",
               "pi0 export checkpoints/pi0_aloha_sim_tiny/default/3000 --format stablehlo --out aloha_hlo"),
    "embodiments list": ("pi0 embodiments list", "pi0 embodiments list --json"),
    "embodiments show": ("pi0 embodiments show aloha", "pi0 embodiments show ur5 --json"),
    "convert checkpoint": (
        "pi0 convert checkpoint checkpoints/pi0_aloha/run/30000 --to lerobot --out pi0_aloha_lerobot --verify",
        "pi0 convert checkpoint openpi_ckpt/ --model pi0 --to pi0 --out pi0_ckpt"),
}


def epilog(lines: tuple[str, ...]) -> str:
    # Rich markup mode keeps single newlines: one example per line.
    return "[bold]Examples[/bold]\n" + "\n".join(f"  {line}" for line in lines)


def add_examples(app: typer.Typer, prefix: str = "") -> None:
    """Set the epilog of every command under ``app`` that has examples and no epilog of its own."""
    for command in app.registered_commands:
        name = command.name or (command.callback.__name__.replace("_", "-") if command.callback else "")
        path = f"{prefix}{name}"
        if path in EXAMPLES and not command.epilog:
            command.epilog = epilog(EXAMPLES[path])
    for group in app.registered_groups:
        if group.typer_instance is not None:
            add_examples(group.typer_instance, f"{prefix}{group.name} ")


def _names_never_shrink() -> None:
    """Option names keep their full width in typer's options panel, however narrow the terminal or pipe.

    Rich narrows every wrappable column of a table that does not fit, and the name column shrinks with the
    help column (``--record-unknown-key-…`` at 80 columns). The name columns are made unwrappable, so the type
    and help columns give up the width instead (help text wraps; a word longer than its column folds)."""
    from rich.table import Table
    from rich.text import Text
    from typer import rich_utils

    class OptionsTable(Table):
        def add_row(self, *renderables: Any, **kwargs: Any) -> None:
            super().add_row(*renderables, **kwargs)
            for column in self.columns[:-2]:  # the required mark and the option names; not type and help
                column.no_wrap = True
            for column in self.columns[-2:]:
                column.overflow = "fold"
            for renderable in renderables:  # the help cell is a Columns of Texts
                for text in getattr(renderable, "renderables", [renderable]):
                    if isinstance(text, Text):
                        text.overflow = "fold"

    rich_utils.Table = OptionsTable  # type: ignore[misc]  # typer builds its panels from this name


def install() -> None:
    """Hide the type column of boolean flags and write arguments as ``NAME`` / ``[NAME]`` in usage lines."""
    from typer import core

    option_cls: Any = core.TyperOption
    argument_cls: Any = core.TyperArgument
    if getattr(option_cls, "_pi0_help_style", False):
        return
    plain_type = option_cls.display_type_rich

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        if getattr(self, "is_bool_flag", False):
            return None  # a flag takes no value: "<bool>" would suggest one
        return plain_type(self, ctx)

    def usage_name(self: Any) -> str:
        name = (self.metavar or self.name or "").upper()
        name = name if self.required else f"[{name}]"
        return name + ("..." if self.nargs != 1 else "")

    def rich_name(self: Any) -> str:
        name = (self.metavar or self.name or "").upper()
        return name + ("..." if self.metavar is None and self.nargs != 1 else "")

    _names_never_shrink()
    option_cls.display_type_rich = display_type_rich
    if hasattr(argument_cls, "_usage_display_name"):
        argument_cls._usage_display_name = usage_name
    if hasattr(argument_cls, "_rich_display_name"):
        argument_cls._rich_display_name = rich_name
    option_cls._pi0_help_style = True
