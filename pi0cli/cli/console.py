"""Shared rich consoles: results go to stdout, diagnostics to stderr."""

from __future__ import annotations

from rich.console import Console

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {message}", markup=True, highlight=False)


def registry():
    """The plugin registry, with one warning line per plugin that failed to load."""
    from pi0cli.plugins.manager import get_registry

    registry = get_registry()
    for failure in registry.failures:
        warn(_escape(failure.failure_message()))
    return registry


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
