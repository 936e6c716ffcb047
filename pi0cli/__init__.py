"""pi0: train, serve, evaluate and record pi0-family robot policies.

The top-level names are resolved lazily so that ``import pi0cli`` (done by every plugin and by shell
completion on each TAB) stays cheap and never imports JAX.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Camera", "Embodiment", "Pi0Error", "StateField", "__version__", "hookimpl"]

if TYPE_CHECKING:
    from pi0cli.embodiment import Camera, Embodiment, StateField
    from pi0cli.errors import Pi0Error
    from pi0cli.plugins.hookspecs import hookimpl

_LAZY = {
    "Camera": "pi0cli.embodiment",
    "Embodiment": "pi0cli.embodiment",
    "StateField": "pi0cli.embodiment",
    "Pi0Error": "pi0cli.errors",
    "hookimpl": "pi0cli.plugins.hookspecs",
}


def lazy_attributes(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``table[name]`` (a module path) on first use."""

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        import importlib

        return getattr(importlib.import_module(module), name)

    return __getattr__


__getattr__ = lazy_attributes(__name__, _LAZY)
