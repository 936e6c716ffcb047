"""The plugin system: discovery, allow/block lists, failures, duplicates."""

from __future__ import annotations

import json
import types

import pytest
from plugin_helpers import fake_distribution, run_pi0, toy_plugin_source

from pi0cli import hookimpl
from pi0cli.errors import PluginError, UnknownNameError
from pi0cli.plugins.manager import PluginInfo, get_registry, load_registry, registry_from


def _module(name: str, source: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(source, name, "exec"), module.__dict__)
    return module


def test_built_ins_are_found_through_entry_points():
    registry = load_registry({})
    assert {p.name for p in registry.plugins} >= {"aloha", "droid", "libero", "ur5"}
    assert registry.owner("aloha_sim").distribution == "pi0-embodiment-aloha"
    assert not registry.failures


@pytest.mark.parametrize("env, expected", [
    ({"PI0_LOAD_PLUGINS": ""}, set()),
    ({"PI0_LOAD_PLUGINS": "droid, pi0-embodiment-ur5"}, {"droid", "ur5"}),
    ({"PI0_DISABLE_PLUGINS": "aloha,libero"}, {"droid", "ur5"}),
    ({"PI0_LOAD_PLUGINS": "aloha,droid", "PI0_DISABLE_PLUGINS": "pi0-embodiment-droid"}, {"aloha", "aloha_sim"}),
])
def test_allow_and_block_lists(env, expected):
    assert set(load_registry(env).embodiments) == expected


def test_fixture_starts_empty_and_takes_fakes(pi0_registry):
    assert get_registry() is pi0_registry and not pi0_registry.embodiments
    pi0_registry.add_plugin(_module("toy", toy_plugin_source("toy")), PluginInfo("toy", "pi0-embodiment-toy", "1.0"))
    assert get_registry().embodiment("toy").action_dim == 4


def test_duplicate_names_fail_naming_both_distributions():
    registry = registry_from(_module("first", toy_plugin_source("arm")))
    with pytest.raises(PluginError, match=r"'arm' is registered by both <first> .* and pi0-embodiment-second 2.0"):
        registry.add_plugin(_module("second", toy_plugin_source("arm")), PluginInfo("second", "pi0-embodiment-second", "2.0"))


def test_a_raising_hook_is_recorded_and_others_keep_working():
    class Broken:
        @hookimpl
        def pi0_register_embodiments(self, register):
            raise RuntimeError("camera driver missing")

    class NotAnEmbodiment:
        @hookimpl
        def pi0_register_embodiments(self, register):
            register("aloha")

    registry = registry_from(Broken(), NotAnEmbodiment(), _module("toy", toy_plugin_source("toy")))
    errors = [p.error for p in registry.failures]
    assert errors == ["RuntimeError: camera driver missing", "TypeError: register() takes a pi0cli.Embodiment, got str"]
    assert list(registry.embodiments) == ["toy"]
    assert "PI0_DISABLE_PLUGINS=" in registry.failures[0].failure_message()


def test_unknown_embodiment_suggests_the_closest_name():
    registry = load_registry({})
    with pytest.raises(UnknownNameError, match="unknown embodiment 'droi'; did you mean 'droid'"):
        registry.embodiment("droi")
    with pytest.raises(UnknownNameError, match="known: aloha, aloha_sim, droid, libero, ur5"):
        registry.embodiment("zzzzzz")


def test_cli_reports_a_plugin_that_fails_to_import_and_keeps_working(tmp_path):
    root = fake_distribution(tmp_path / "site", "pi0-embodiment-broken", "broken", "pi0_embodiment_broken",
                             "import a_module_that_does_not_exist\n")
    result = run_pi0("embodiments", "list", "--json", pythonpath=[root])
    assert result.returncode == 0, result.stderr
    assert "aloha" in {row["name"] for row in json.loads(result.stdout)}
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1
    assert "plugin 'broken' from pi0-embodiment-broken 0.1.0 failed to load: ModuleNotFoundError" in warnings[0]
    assert "PI0_DISABLE_PLUGINS=broken" in warnings[0]
    quiet = run_pi0("embodiments", "list", pythonpath=[root], env={"PI0_DISABLE_PLUGINS": "broken"})
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_cli_fails_on_duplicate_embodiments_naming_both(tmp_path):
    root = fake_distribution(tmp_path / "site", "pi0-embodiment-clash", "clash", "pi0_embodiment_clash",
                             toy_plugin_source("aloha"), version="9.9")
    result = run_pi0("embodiments", "list", pythonpath=[root])
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pi0-embodiment-aloha 0.1.0" in lines[0] and "pi0-embodiment-clash 9.9" in lines[0]
