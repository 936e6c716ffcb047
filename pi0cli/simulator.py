"""The ``Simulator`` contract a robot plugin fills in so that ``pi0 record`` and ``pi0 eval`` can drive its robot.

A simulator produces observations in one embodiment's format (what that robot's client would send) and takes
that embodiment's actions. The core never imports a simulator's engine: it calls the functions a plugin
registers through ``pi0_register_simulators``, which import MuJoCo or whatever they need when first called.

A rollout or a scripted demonstration is an iterator of :class:`Frame` dicts, one per control step:

- ``observation``: the embodiment's observation seen *before* the action (what a policy gets);
- ``action``: the action sent at this step, float32, in the robot's units;
- ``reward``: the task reward after the step; ``success``: the task was solved at this or an earlier step;
- ``index``: the step number (0-based);
- ``env_observation`` (optional): the simulator's raw observation it came from.

A simulator's own settings (rendering shadows, say) are its :class:`SimOption` s: the user sets them with
``pi0 record/eval --sim-option NAME=VALUE`` and the rollout and scripted functions receive them as keywords;
the core knows no simulator's settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, NotRequired, Protocol, TypedDict

import numpy as np

from pi0cli.errors import ObservationError, Pi0Error, UnknownNameError
from pi0cli.observation_types import Array, Observation

if TYPE_CHECKING:
    from pi0cli.embodiment import Embodiment


class Frame(TypedDict):
    """One control step of an episode (see the module docstring)."""

    observation: Observation
    action: Array
    reward: float
    success: bool
    index: int
    env_observation: NotRequired[Observation]


@dataclasses.dataclass
class Episode:
    """One scripted demonstration: its seed, task, prompt and frames (an iterator, consumed once)."""

    seed: int
    task: str
    prompt: str
    frames: Iterator[Frame]
    length: int


class ScriptFailed(Pi0Error):
    """Scripted demonstrations did not succeed often enough (the message says how many did)."""


class SimulatorError(Pi0Error):
    """A simulator yielded something that breaks the :class:`Frame` contract or its embodiment's."""


#: A policy as a rollout sees it: an observation in, one action (the robot's units) out.
Act = Callable[[Observation], Array]
#: The value of a simulator option.
OptionValue = bool | int | float | str

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class Rollout(Protocol):
    """Run one closed-loop episode of ``task`` from the scene of ``seed``, calling ``act`` every step;
    ``options``: the simulator's :class:`SimOption` values the user set (none when they set none)."""

    def __call__(self, task: str, seed: int, act: Act, *, max_steps: int | None = None,
                 **options: OptionValue) -> Iterator[Frame]: ...


class ScriptedEpisodes(Protocol):
    """``num_episodes`` successful scripted demonstrations of ``task`` with seeds from ``start_seed`` (failed
    seeds are skipped); raises :class:`ScriptFailed` when too few seeds succeed. ``options`` as for
    :class:`Rollout`."""

    def __call__(self, task: str, num_episodes: int, *, start_seed: int = 0,
                 **options: OptionValue) -> Iterator[Episode]: ...


@dataclasses.dataclass(frozen=True)
class SimOption:
    """A setting of one simulator (``--sim-option NAME=VALUE``): its keyword, default (whose type is the
    option's: ``bool``, ``int``, ``float`` or ``str``) and one line of help."""

    name: str
    default: OptionValue
    help: str

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"simulator option {self.name!r} must be a Python identifier")
        if self.name in ("max_steps", "start_seed"):
            raise ValueError(f"simulator option {self.name!r} clashes with a rollout argument")

    def parse(self, text: str) -> OptionValue:
        """``text`` as this option's type; a bad value raises :class:`SimulatorError` saying what fits."""
        kind = type(self.default)
        if kind is bool:
            if text.strip().lower() in _TRUE + _FALSE:
                return text.strip().lower() in _TRUE
            raise SimulatorError(f"--sim-option {self.name}={text}: expected true or false")
        try:
            return kind(text)
        except ValueError:
            raise SimulatorError(f"--sim-option {self.name}={text}: expected {kind.__name__}") from None


@dataclasses.dataclass(frozen=True)
class SimTask:
    """A task of a simulator: its name, the prompt a policy gets, and other spellings accepted for it."""

    name: str
    prompt: str
    aliases: tuple[str, ...] = ()

    def matches(self, spelling: str) -> bool:
        return spelling.lower() in {self.name.lower(), *(alias.lower() for alias in self.aliases)}


@dataclasses.dataclass(frozen=True)
class Simulator:
    """A simulated robot: the tasks it offers and how to run them.

    ``embodiment`` names the registered embodiment whose observations and actions the simulator speaks (one
    simulator per embodiment). ``rollout`` runs a policy closed-loop; ``scripted`` (optional) yields scripted
    demonstrations for ``pi0 record --scripted``. ``options`` are its own settings (:class:`SimOption`).
    ``rendering`` says in one line what rendering needs on the host (shown when it fails and by diagnostics),
    ``packages`` which distributions' versions go into evaluation reports, and ``video_key`` which observation
    image the evaluation videos show (default: the embodiment's first camera).
    """

    name: str
    embodiment: str
    description: str
    tasks: tuple[SimTask, ...]
    rollout: Rollout
    scripted: ScriptedEpisodes | None = None
    default_task: str | None = None
    rendering: str = ""
    packages: tuple[str, ...] = ()
    video_key: str | None = None
    options: tuple[SimOption, ...] = ()
    metadata: Mapping[str, object] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError(f"simulator {self.name!r} declares no tasks")
        if self.default_task is not None and not any(t.name == self.default_task for t in self.tasks):
            raise ValueError(f"simulator {self.name!r}: default task {self.default_task!r} is not one of its tasks")

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(task.name for task in self.tasks)

    def task(self, spelling: str | None = None) -> SimTask:
        """The task called ``spelling`` (or one of its aliases); ``None`` gives the default (first) task."""
        if spelling is None:
            spelling = self.default_task or self.tasks[0].name
        for task in self.tasks:
            if task.matches(spelling):
                return task
        raise UnknownNameError(f"{self.name} task", spelling, self.task_names)

    @property
    def task_groups(self) -> dict[str, tuple[str, ...]]:
        """Named groups of tasks (``metadata["task_groups"]``: selector -> task names), none when it has none."""
        groups = self.metadata.get("task_groups") or {}
        if not isinstance(groups, Mapping):
            raise SimulatorError(f"simulator {self.name!r}: metadata['task_groups'] must map names to task lists")
        return {str(name): tuple(str(task) for task in tasks) for name, tasks in groups.items()}

    def select_tasks(self, selector: str) -> tuple[SimTask, ...]:
        """The tasks ``selector`` names, in order and without repeats: comma-separated task names (or aliases)
        and names of :attr:`task_groups`. An unknown part raises :class:`~pi0cli.errors.UnknownNameError`
        naming the closest task or group."""
        groups = {name.lower().replace("-", "_"): tasks for name, tasks in self.task_groups.items()}
        chosen: dict[str, SimTask] = {}
        for part in (p.strip() for p in selector.split(",")):
            if not part:
                continue
            names = groups.get(part.lower().replace("-", "_"))
            if names is None and not any(task.matches(part) for task in self.tasks):
                raise UnknownNameError(f"{self.name} task or task group", part,
                                       [*self.task_names, *self.task_groups])
            for task in (self.task(name) for name in names) if names is not None else (self.task(part),):
                chosen.setdefault(task.name, task)
        if not chosen:
            raise SimulatorError(f"--tasks {selector!r} names no task; pass task names or groups, comma-separated")
        return tuple(chosen.values())

    def groups_of(self, task: str) -> tuple[str, ...]:
        """The :attr:`task_groups` that hold ``task`` (a task name), in the metadata's order."""
        return tuple(name for name, tasks in self.task_groups.items() if task in tasks)

    def parse_options(self, pairs: Iterable[str]) -> dict[str, OptionValue]:
        """``NAME=VALUE`` texts (``--sim-option``) as keywords for :attr:`rollout` and :attr:`scripted`; a name
        this simulator lacks fails naming the ones it has."""
        known = {option.name: option for option in self.options}
        values: dict[str, OptionValue] = {}
        for pair in pairs:
            name, sep, text = pair.partition("=")
            option = known.get(name.strip().replace("-", "_"))
            if not sep or option is None:
                have = ", ".join(f"{o.name} (default {o.default}: {o.help})" for o in self.options) or "none"
                raise SimulatorError(f"--sim-option {pair!r}: simulator {self.name!r} takes NAME=VALUE with NAME "
                                     f"one of its options: {have}")
            values[option.name] = option.parse(text)
        return values

    def settings(self, values: Mapping[str, OptionValue]) -> dict[str, OptionValue]:
        """Every option's value, the defaults filled in (what a report records)."""
        return {option.name: values.get(option.name, option.default) for option in self.options}


def check_frame(simulator: Simulator, embodiment: Embodiment, frame: Frame) -> None:
    """Raise :class:`SimulatorError` naming the simulator when ``frame`` is not a :class:`Frame` whose
    observation the embodiment accepts and whose action has the embodiment's dims."""
    where = f"simulator {simulator.name!r}"
    missing = [key for key in ("observation", "action", "reward", "success", "index") if key not in frame]
    if missing:
        raise SimulatorError(f"{where} yielded a frame without {', '.join(missing)}; see pi0cli.simulator.Frame")
    try:
        embodiment.validate_observation(frame["observation"])
    except ObservationError as exc:
        raise SimulatorError(f"{where} yields observations that embodiment {embodiment.name!r} rejects: "
                             f"{exc}") from None
    action = np.asarray(frame["action"])
    if action.shape != (embodiment.action_dim,):
        raise SimulatorError(f"{where} yielded an action of shape {action.shape}; {embodiment.name} takes "
                             f"({embodiment.action_dim},)")


def checked(frames: Iterable[Frame], simulator: Simulator, embodiment: Embodiment) -> Iterator[Frame]:
    """``frames`` unchanged, the first one checked with :func:`check_frame` (a plugin's mistake then surfaces
    as one clear error before anything is written). A simulator that cannot start its episode (a missing GL
    back end, say) fails with one line naming it and what its rendering needs (the cause is chained)."""
    iterator = iter(frames)
    try:
        first = next(iterator)
    except StopIteration:
        return
    except Pi0Error:
        raise
    except Exception as exc:
        needs = f"; it needs {simulator.rendering}" if simulator.rendering else ""
        text = " ".join(str(exc).split())
        raise SimulatorError(f"simulator {simulator.name!r} could not start an episode: {type(exc).__name__}: "
                             f"{text}{needs}") from exc
    check_frame(simulator, embodiment, first)
    yield first
    yield from iterator


__all__ = ["Act", "Episode", "Frame", "OptionValue", "Rollout", "ScriptFailed", "ScriptedEpisodes", "SimOption",
           "SimTask", "Simulator", "SimulatorError", "check_frame", "checked"]
