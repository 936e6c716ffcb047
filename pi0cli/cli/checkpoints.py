"""Checkpoint arguments of the CLI: an experiment folder means its latest complete step, and the user is told."""

from __future__ import annotations

from pathlib import Path

from pi0cli.cli import console


def step_dir(path: str | Path) -> Path:
    """The checkpoint directory ``--checkpoint PATH`` names (see :func:`pi0cli.checkpoint.resolve_step`),
    saying on stderr when an experiment folder was resolved to its latest step."""
    from pi0cli.checkpoint import resolve_step

    directory, note = resolve_step(path)
    if note is not None:
        console.err.print(console.escape(note))
    return directory
