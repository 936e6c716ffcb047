"""Discovering, filtering and loading plugins into the registry.

Plugins are found through the entry-point group ``pi0``. Two environment switches choose which load:

- ``PI0_LOAD_PLUGINS``: comma-separated allow-list of plugin (entry-point) or distribution names; when the
  variable is set, only those load, and an empty value loads none (tests start that way).
- ``PI0_DISABLE_PLUGINS``: comma-separated block-list, applied after the allow-list.

A plugin that fails to import or whose hook raises is recorded as a failure (shown by the CLI as a one-line
warning with its distribution and how to disable it) and the rest keep working. Two plugins registering the
same embodiment name is a hard error naming both distributions: which robot to trust is for the user to say.

The process-wide registry built here is the only global state in pi0.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
from collections.abc import Iterable, Mapping
from typing import Any

import pluggy

from pi0cli.errors import PluginError, UnknownNameError
from pi0cli.plugins import hookspecs

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


class Registry:
    """Embodiments by name, with the plugin that registered each."""

    def __init__(self) -> None:
        self.plugin_manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.plugin_manager.add_hookspecs(hookspecs)
        self.plugins: list[PluginInfo] = []
        self._embodiments: dict[str, Any] = {}
        self._owners: dict[str, PluginInfo] = {}
        self._presets: dict[str, Any] | None = None  # loaded on first use: most commands never need them
        self._preset_owners: dict[str, PluginInfo] = {}

    # ------------------------------------------------------------------------------------ registering

    def add_plugin(self, plugin: object, info: PluginInfo) -> None:
        """Register a plugin object (module) and run its hooks; failures are recorded in ``info.error``."""
        self.plugins.append(info)
        try:
            self.plugin_manager.register(plugin, name=info.name)
        except Exception as exc:  # pluggy rejects malformed hook implementations here
            info.error = _one_line(exc)
            return
        self._call(plugin, info, "pi0_register_embodiments", lambda embodiment: self.register_embodiment(embodiment, info))

    def _call(self, plugin: object, info: PluginInfo, hook: str, register: Any) -> None:
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

    def register_embodiment(self, embodiment: Any, owner: PluginInfo) -> None:
        from pi0cli.embodiment import Embodiment

        if not isinstance(embodiment, Embodiment):
            raise TypeError(f"register() takes a pi0cli.Embodiment, got {type(embodiment).__name__}")
        previous = self._owners.get(embodiment.name)
        if previous is not None:
            raise PluginError(
                f"embodiment {embodiment.name!r} is registered by both {previous.label} (plugin {previous.name!r}) "
                f"and {owner.label} (plugin {owner.name!r}); uninstall one, or disable one with "
                f"{DISABLE_ENV}={owner.name}"
            )
        self._embodiments[embodiment.name] = embodiment
        self._owners[embodiment.name] = owner
        owner.embodiments.append(embodiment.name)

    def register_preset(self, config: Any, owner: PluginInfo) -> None:
        from pi0cli.training.config import TrainConfig

        if not isinstance(config, TrainConfig):
            raise TypeError(f"register() takes a pi0cli.training.config.TrainConfig, got {type(config).__name__}")
        assert self._presets is not None
        previous = self._preset_owners.get(config.name)
        if previous is not None:
            raise PluginError(
                f"train preset {config.name!r} is registered by both {previous.label} and {owner.label}; "
                f"uninstall one, or disable one with {DISABLE_ENV}={owner.name}"
            )
        self._presets[config.name] = config
        self._preset_owners[config.name] = owner

    # ----------------------------------------------------------------------------------------- lookup

    @property
    def presets(self) -> Mapping[str, Any]:
        """Training presets of every loaded plugin, by name (loaded on first access)."""
        if self._presets is None:
            self._presets = {}
            for plugin in self.plugin_manager.get_plugins():
                info = next((p for p in self.plugins if p.name == self.plugin_manager.get_name(plugin)), None)
                if info is not None:
                    self._call(plugin, info, "pi0_register_presets", lambda cfg, info=info: self.register_preset(cfg, info))
        return dict(sorted(self._presets.items()))

    def preset(self, name: str) -> Any:
        presets = self.presets
        if name not in presets:
            raise UnknownNameError("train preset", name, presets)
        return presets[name]

    def preset_owner(self, name: str) -> PluginInfo:
        self.preset(name)
        return self._preset_owners[name]

    @property
    def embodiments(self) -> Mapping[str, Any]:
        return dict(sorted(self._embodiments.items()))

    def embodiment(self, name: str) -> Any:
        """The embodiment called ``name``; an unknown name fails with the closest known one."""
        try:
            return self._embodiments[name]
        except KeyError:
            raise UnknownNameError("embodiment", name, self._embodiments) from None

    def owner(self, name: str) -> PluginInfo:
        self.embodiment(name)
        return self._owners[name]

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
