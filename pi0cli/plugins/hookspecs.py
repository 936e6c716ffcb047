"""Hook specifications of the ``pi0`` plugin project.

A plugin is a module (or object) registered under the entry-point group ``pi0`` that implements some of
these hooks, marked with :data:`hookimpl`::

    from pi0cli import hookimpl

    @hookimpl
    def pi0_register_embodiments(register):
        register(MY_ROBOT)

Every hook takes one argument, ``register``, and is called with a function that accepts one object of the
hook's type. The built-in robots use exactly these hooks. Names are unique across plugins: registering a
name another plugin already registered is an error naming both distributions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from pi0cli.convert.datasets import DatasetConverter
    from pi0cli.diagnostics import DoctorCheck
    from pi0cli.embodiment import Embodiment
    from pi0cli.simulator import Simulator
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


@hookspec
def pi0_register_simulators(register: Callable[[Simulator], None]) -> None:
    """Register simulated robots (``pi0 record``, ``pi0 eval``) by calling ``register(simulator)`` once per
    :class:`~pi0cli.simulator.Simulator`.

    Called lazily, the first time simulators are needed. A simulator names the embodiment it drives, which
    some plugin must register; one simulator per embodiment. Import the simulation engine inside the
    simulator's functions, not here.
    """


@hookspec
def pi0_register_dataset_converters(register: Callable[[DatasetConverter], None]) -> None:
    """Register raw-recording converters (``pi0 convert dataset NAME``) by calling ``register(converter)`` once
    per :class:`~pi0cli.convert.datasets.DatasetConverter`.

    Called lazily, the first time converters are needed. Import readers (h5py, ...) inside the converter's
    function, not here.
    """


@hookspec
def pi0_doctor_checks(register: Callable[[DoctorCheck], None]) -> None:
    """Add rows to ``pi0 doctor`` by calling ``register(check)`` once per :class:`~pi0cli.diagnostics.DoctorCheck`:
    what the plugin needs of the host that the core cannot know (a simulator's headless OpenGL, a driver).

    Called lazily, only by ``pi0 doctor``. ``check.run()`` returns :class:`~pi0cli.diagnostics.Row` objects; a
    ``"fail"`` row blocks (exit 1), so use ``"warn"`` for what limits only this plugin's robots. Run probes that
    can crash a process in a subprocess. Names need not be unique across plugins: each plugin checks its own.
    """
