"""Hook specifications of the ``pi0`` plugin project.

A plugin is a module (or object) registered under the entry-point group ``pi0`` that implements some of
these hooks, marked with :data:`hookimpl`::

    from pi0cli import hookimpl

    @hookimpl
    def pi0_register_embodiments(register):
        register(MY_ROBOT)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from pi0cli.embodiment import Embodiment
    from pi0cli.training.config import TrainConfig

PROJECT = "pi0"
ENTRY_POINT_GROUP = "pi0"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def pi0_register_embodiments(register: Callable[[Embodiment], None]) -> None:
    """Register robots by calling ``register(embodiment)`` once per :class:`~pi0cli.embodiment.Embodiment`.

    Called once per process, the first time the registry is needed. Must be cheap: do not import JAX or
    torch here (shell completion runs it on every TAB). Registering a name another plugin already
    registered is an error naming both distributions.
    """


@hookspec
def pi0_register_presets(register: Callable[[TrainConfig], None]) -> None:
    """Register named training presets (``pi0 train PRESET``) by calling ``register(train_config)``.

    Called lazily, the first time presets are needed (not on every CLI start). A preset must name an
    embodiment some plugin registers. Duplicate preset names are an error naming both distributions.
    """
