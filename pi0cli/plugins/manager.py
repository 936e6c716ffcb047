"""Discovering, filtering and loading plugins into the registry.

Plugins are found through the entry-point group ``pi0``. Two environment switches choose which load:

- ``PI0_LOAD_PLUGINS``: comma-separated allow-list of plugin (entry-point) or distribution names; when the
  variable is set, only those load, and an empty value loads none (tests start that way).
- ``PI0_DISABLE_PLUGINS``: comma-separated block-list, applied after the allow-list.

A plugin that fails to import or whose hook raises is recorded as a failure (shown by the CLI as a one-line
warning with its distribution and how to disable it) and the rest keep working. Two plugins registering the
same name (embodiment, preset, simulator, dataset converter) is a hard error naming both distributions:
which robot to trust is for the user to say.

The process-wide registry built here is the only global state in pi0.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import pluggy

from pi0cli.errors import PluginError, UnknownNameError
from pi0cli.plugins import hookspecs

if TYPE_CHECKING:
    from pi0cli.convert.datasets import DatasetConverter
    from pi0cli.diagnostics import DoctorCheck
    from pi0cli.embodiment import Embodiment
    from pi0cli.simulator import Simulator
    from pi0cli.training.config import TrainConfig

LOAD_ENV = "PI0_LOAD_PLUGINS"
DISABLE_ENV = "PI0_DISABLE_PLUGINS"


@dataclasses.dataclass
class PluginInfo:
    """One plugin: where it came from and what it registered (or why it failed)."""

    name: str
    distribution: str
    version: str
    embodiments: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.distribution} {self.version}".strip()

    def failure_message(self) -> str:
        return (
            f"plugin {self.name!r} from {self.label} failed to load: {self.error}. "
            f"Fix or uninstall it, or disable it with {DISABLE_ENV}={self.name}"
        )


class _Table[T]:
    """Registered objects of one kind by name, each with the plugin that registered it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.items: dict[str, T] = {}
        self.owners: dict[str, PluginInfo] = {}

    def add(self, name: str, item: T, owner: PluginInfo) -> None:
        previous = self.owners.get(name)
        if previous is not None:
            raise PluginError(_clash(f"{self.kind} {name!r}", previous, owner))
        self.items[name] = item
        self.owners[name] = owner

    def get(self, name: str) -> T:
        try:
            return self.items[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.items) from None

    def sorted(self) -> dict[str, T]:
        return dict(sorted(self.items.items()))


#: A table of any kind (the kinds differ only in what they hold).
type _AnyTable = (_Table[Embodiment] | _Table[TrainConfig] | _Table[Simulator] | _Table[DatasetConverter]
                  | _Table[DoctorCheck])


def _clash(what: str, previous: PluginInfo, owner: PluginInfo) -> str:
    return (f"{what} is registered by both {previous.label} (plugin {previous.name!r}) and {owner.label} "
            f"(plugin {owner.name!r}); uninstall one, or disable one with {DISABLE_ENV}={owner.name}")


class Registry:
    """Embodiments, training presets, simulators and dataset converters by name, with the plugin that
    registered each.

    Embodiments are registered when a plugin is added (every command needs them); the other kinds the first
    time they are asked for, so that a command needing none of them never runs those hooks.
    """

    #: Lazily loaded kinds: hook name -> attribute holding the table.
    _LAZY_HOOKS = {
        "pi0_register_presets": "_presets",
        "pi0_register_simulators": "_simulators",
        "pi0_register_dataset_converters": "_converters",
        "pi0_doctor_checks": "_doctor_checks",
    }

    def __init__(self) -> None:
        self.plugin_manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.plugin_manager.add_hookspecs(hookspecs)
        self.plugins: list[PluginInfo] = []
        self._embodiments: _Table[Embodiment] = _Table("embodiment")
        # None until first asked for (see the class docstring).
        self._presets: _Table[TrainConfig] | None = None
        self._simulators: _Table[Simulator] | None = None
        self._converters: _Table[DatasetConverter] | None = None
        self._doctor_checks: _Table[DoctorCheck] | None = None

    # ------------------------------------------------------------------------------------ registering

    def add_plugin(self, plugin: object, info: PluginInfo) -> None:
        """Register a plugin object (module) and run its hooks; failures are recorded in ``info.error``."""
        self.plugins.append(info)
        try:
            self.plugin_manager.register(plugin, name=info.name)
        except Exception as exc:  # pluggy rejects malformed hook implementations here
            info.error = _one_line(exc)
            return
        self._call(plugin, info, "pi0_register_embodiments", lambda item: self.register_embodiment(item, info))
        # A plugin added after a lazy kind was loaded (tests do this) contributes to it at once.
        for hook, attribute in self._LAZY_HOOKS.items():
            if getattr(self, attribute) is not None:
                self._call_lazy(hook, plugin, info)

    def _call(self, plugin: object, info: PluginInfo, hook: str, register: Callable[[object], None]) -> None:
        """Run one plugin's implementation of ``hook``; its failure is recorded, not raised (duplicates are)."""
        if info.error is not None:
            return
        for impl in getattr(self.plugin_manager.hook, hook).get_hookimpls():
            if impl.plugin is not plugin:
                continue
            try:
                impl.function(register=register)
            except PluginError:
                raise
            except Exception as exc:
                info.error = _one_line(exc)

    def _call_lazy(self, hook: str, plugin: object, info: PluginInfo) -> None:
        register: Callable[[object], None] = {
            "pi0_register_presets": lambda item: self.register_preset(item, info),
            "pi0_register_simulators": lambda item: self.register_simulator(item, info),
            "pi0_register_dataset_converters": lambda item: self.register_dataset_converter(item, info),
            "pi0_doctor_checks": lambda item: self.register_doctor_check(item, info),
        }[hook]
        self._call(plugin, info, hook, register)

    def _load(self, hook: str) -> None:
        """Run ``hook`` of every loaded plugin in load order (the first time a lazily loaded kind is needed), so
        that a clash names the plugins in the same order as an embodiment clash would."""
        for info in list(self.plugins):
            plugin = self.plugin_manager.get_plugin(info.name)
            if plugin is not None:
                self._call_lazy(hook, plugin, info)

    def register_embodiment(self, embodiment: object, owner: PluginInfo) -> None:
        from pi0cli.embodiment import Embodiment

        if not isinstance(embodiment, Embodiment):
            raise TypeError(f"register() takes a pi0cli.Embodiment, got {type(embodiment).__name__}")
        self._embodiments.add(embodiment.name, embodiment, owner)
        owner.embodiments.append(embodiment.name)

    def register_preset(self, config: object, owner: PluginInfo) -> None:
        from pi0cli.training.config import TrainConfig

        if not isinstance(config, TrainConfig):
            raise TypeError(f"register() takes a pi0cli.training.config.TrainConfig, got {type(config).__name__}")
        self._preset_table().add(config.name, config, owner)

    def register_simulator(self, simulator: object, owner: PluginInfo) -> None:
        from pi0cli.simulator import Simulator

        if not isinstance(simulator, Simulator):
            raise TypeError(f"register() takes a pi0cli.simulator.Simulator, got {type(simulator).__name__}")
        table = self._simulator_table()
        for name, other in table.items.items():
            if other.embodiment == simulator.embodiment:
                raise PluginError(_clash(f"a simulator for embodiment {simulator.embodiment!r} ({name!r} and "
                                         f"{simulator.name!r})", table.owners[name], owner))
        table.add(simulator.name, simulator, owner)

    def register_dataset_converter(self, converter: object, owner: PluginInfo) -> None:
        from pi0cli.convert.datasets import DatasetConverter

        if not isinstance(converter, DatasetConverter):
            raise TypeError(f"register() takes a pi0cli.convert.datasets.DatasetConverter, "
                            f"got {type(converter).__name__}")
        self._converter_table().add(converter.name, converter, owner)

    def register_doctor_check(self, check: object, owner: PluginInfo) -> None:
        from pi0cli.diagnostics import DoctorCheck

        if not isinstance(check, DoctorCheck):
            raise TypeError(f"register() takes a pi0cli.diagnostics.DoctorCheck, got {type(check).__name__}")
        # Keyed by plugin: two plugins may both check, say, "rendering" for their own simulators.
        self._doctor_table().add(f"{owner.name}/{check.name}", check, owner)

    def _preset_table(self) -> _Table[TrainConfig]:
        if self._presets is None:
            self._presets = _Table("train preset")
            self._load("pi0_register_presets")
        return self._presets

    def _simulator_table(self) -> _Table[Simulator]:
        if self._simulators is None:
            self._simulators = _Table("simulator")
            self._load("pi0_register_simulators")
        return self._simulators

    def _converter_table(self) -> _Table[DatasetConverter]:
        if self._converters is None:
            self._converters = _Table("dataset converter")
            self._load("pi0_register_dataset_converters")
        return self._converters

    def _doctor_table(self) -> _Table[DoctorCheck]:
        if self._doctor_checks is None:
            self._doctor_checks = _Table("doctor check")
            self._load("pi0_doctor_checks")
        return self._doctor_checks

    # ----------------------------------------------------------------------------------------- lookup

    @property
    def embodiments(self) -> Mapping[str, Embodiment]:
        return self._embodiments.sorted()

    def embodiment(self, name: str) -> Embodiment:
        """The embodiment called ``name``; an unknown name fails with the closest known one."""
        return self._embodiments.get(name)

    def owner(self, name: str) -> PluginInfo:
        """The plugin that registered the embodiment ``name``."""
        self.embodiment(name)
        return self._embodiments.owners[name]

    @property
    def presets(self) -> Mapping[str, TrainConfig]:
        """Training presets of every loaded plugin, by name (loaded on first access)."""
        return self._preset_table().sorted()

    def preset(self, name: str) -> TrainConfig:
        return self._preset_table().get(name)

    @property
    def simulators(self) -> Mapping[str, Simulator]:
        """Simulators of every loaded plugin, by name (loaded on first access)."""
        return self._simulator_table().sorted()

    def simulator(self, name: str) -> Simulator:
        return self._simulator_table().get(name)

    def simulator_for(self, embodiment: str) -> Simulator | None:
        """The simulator driving the embodiment ``embodiment``, if a plugin registered one."""
        return next((s for s in self.simulators.values() if s.embodiment == embodiment), None)

    @property
    def dataset_converters(self) -> Mapping[str, DatasetConverter]:
        """Dataset converters of every loaded plugin, by name (loaded on first access)."""
        return self._converter_table().sorted()

    def dataset_converter(self, name: str) -> DatasetConverter:
        return self._converter_table().get(name)

    def provider(self, kind: str, name: str) -> PluginInfo:
        """The plugin that registered ``name`` of ``kind`` (``embodiment``, ``preset``, ``simulator`` or
        ``dataset_converter``)."""
        tables: dict[str, Callable[[], _AnyTable]] = {
            "embodiment": lambda: self._embodiments, "preset": self._preset_table,
            "simulator": self._simulator_table, "dataset_converter": self._converter_table,
        }
        table = tables[kind]()
        table.get(name)
        return table.owners[name]

    @property
    def doctor_checks(self) -> Mapping[str, DoctorCheck]:
        """The plugins' ``pi0 doctor`` checks, by ``plugin/check`` (loaded on first access)."""
        return self._doctor_table().sorted()

    def hooks(self, info: PluginInfo) -> list[str]:
        """The names of the hooks plugin ``info`` implements (none when it failed to load)."""
        plugin = self.plugin_manager.get_plugin(info.name)
        if plugin is None:
            return []
        return sorted(caller.name for caller in self.plugin_manager.get_hookcallers(plugin) or [])

    @property
    def failures(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.error is not None]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _names(value: str | None) -> set[str] | None:
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def selected(entry_point: importlib.metadata.EntryPoint, env: Mapping[str, str]) -> bool:
    """Whether the allow/block lists in ``env`` let this entry point load."""
    names = {entry_point.name}
    if entry_point.dist is not None:
        names.add(entry_point.dist.name)
        names.add(entry_point.dist.name.replace("_", "-").lower())
    allow = _names(env.get(LOAD_ENV))
    block = _names(env.get(DISABLE_ENV)) or set()
    if allow is not None and not names & allow:
        return False
    return not names & block


def discover(env: Mapping[str, str] | None = None) -> Iterable[importlib.metadata.EntryPoint]:
    """Entry points of group ``pi0`` that the environment's allow/block lists select, in a stable order."""
    env = os.environ if env is None else env
    seen: set[tuple[str, str]] = set()
    points = sorted(importlib.metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP), key=lambda ep: ep.name)
    for entry_point in points:
        # The same distribution can be visible twice on sys.path (editable + site); load it once.
        key = (entry_point.name, entry_point.value)
        if key in seen or not selected(entry_point, env):
            continue
        seen.add(key)
        yield entry_point


def load_registry(env: Mapping[str, str] | None = None) -> Registry:
    """A registry with every selected installed plugin loaded."""
    registry = Registry()
    for entry_point in discover(env):
        dist = entry_point.dist
        info = PluginInfo(
            name=entry_point.name,
            distribution=dist.name if dist is not None else "(unknown distribution)",
            version=dist.version if dist is not None else "",
        )
        try:
            plugin = entry_point.load()
        except Exception as exc:
            registry.plugins.append(info)
            info.error = _one_line(exc)
            continue
        registry.add_plugin(plugin, info)
    return registry


def registry_from(*plugins: object, name_prefix: str = "test") -> Registry:
    """A registry holding exactly ``plugins`` (objects or modules with hook implementations); for tests."""
    registry = Registry()
    for index, plugin in enumerate(plugins):
        name = getattr(plugin, "__name__", f"{name_prefix}{index}")
        registry.add_plugin(plugin, PluginInfo(name=name, distribution=f"<{name}>", version=""))
    return registry


_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _registry
    if _registry is None:
        _registry = load_registry()
    return _registry


def set_registry(registry: Registry | None) -> Registry | None:
    """Replace the process-wide registry (``None``: reload on next use); returns the previous one."""
    global _registry
    previous, _registry = _registry, registry
    return previous
