"""The plugin system: discovery, allow/block lists, failures, duplicates."""

from __future__ import annotations

import json
import types

import numpy as np
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
    ({"PI0_LOAD_PLUGINS": "aloha,droid", "PI0_DISABLE_PLUGINS": "pi0-embodiment-droid"}, {"aloha", "aloha_sim"}),
])
def test_allow_and_block_lists(env, expected):
    assert set(load_registry(env).embodiments) == expected


def test_a_block_list_leaves_every_other_plugin():
    # Other installed robots (a user's own, as the plugin guide adds) load too: only the shipped ones are known.
    loaded = set(load_registry({"PI0_DISABLE_PLUGINS": "aloha,libero"}).embodiments)
    assert loaded >= {"droid", "ur5"} and not loaded & {"aloha", "aloha_sim", "libero"}


def test_fixture_starts_empty_and_takes_fakes(pi0_registry):
    assert get_registry() is pi0_registry and not pi0_registry.embodiments
    pi0_registry.add_plugin(_module("toy", toy_plugin_source("toy")), PluginInfo("toy", "pi0-embodiment-toy", "1.0"))
    assert get_registry().embodiment("toy").action_dim == 4


def test_duplicate_names_fail_naming_both_distributions():
    registry = registry_from(_module("first", toy_plugin_source("arm")))
    with pytest.raises(PluginError, match=r"'arm' is registered by both <first> .* and pi0-embodiment-second 2.0"):
        registry.add_plugin(_module("second", toy_plugin_source("arm")),
                            PluginInfo("second", "pi0-embodiment-second", "2.0"))


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
    with pytest.raises(UnknownNameError, match="known: ") as unknown:
        registry.embodiment("zzzzzz")
    known = str(unknown.value).split("known: ")[1].split(", ")
    assert {"aloha", "aloha_sim", "droid", "libero", "ur5"} <= set(known) and known == sorted(known)


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


# ---------------------------------------------------------------------------------- simulators and converters
# A third party's plugin: a robot, a simulator for it and a raw-recording converter, through the same hooks
# the built-in robots use.
_SIM_PLUGIN = '''
import json
from pathlib import Path

import numpy as np

from pi0cli.convert.datasets import ConverterOption, DatasetConverter
from pi0cli.simulator import Episode, SimTask, Simulator


def _frames(seed, act=None, steps=3):
    for index in range(steps):
        obs = {"front": np.full((64, 64, 3), 40 * index + seed, np.uint8), "joints": np.full(4, index, np.float32)}
        action = np.asarray(act(obs) if act else np.full(4, 0.5), np.float32)
        yield {"observation": obs, "action": action, "reward": float(index), "success": index == steps - 1,
               "index": index}


def rollout(task, seed, act, *, max_steps=None, **options):
    return _frames(seed, act)


def scripted(task, num_episodes, *, start_seed=0, **options):
    for seed in range(start_seed, start_seed + num_episodes):
        yield Episode(seed, task, "push the block", _frames(seed), 3)


SIMULATOR = Simulator(name="@SIM@", embodiment="@ROBOT@", description="a toy simulator",
                      tasks=(SimTask("push", "push the block", aliases=("Push-v0",)),), rollout=rollout,
                      scripted=scripted)


def convert(src, out, *, overwrite=False, progress=None, scale=1.0, label=None):
    Path(out).mkdir()
    (Path(out) / "args.json").write_text(json.dumps({"src": str(src), "scale": scale, "label": label,
                                                     "overwrite": overwrite}))
    return Path(out)


CONVERTER = DatasetConverter(name="@CONVERTER@", embodiment="@ROBOT@", summary="Toy recordings into a LeRobot dataset.",
                             source_help="A folder of toy recordings.", convert=convert,
                             options=(ConverterOption("scale", float, 1.0, "Scale.", minimum=0.0),
                                      ConverterOption("label", str, None, "A label.")))


@hookimpl
def pi0_register_simulators(register):
    register(SIMULATOR)


@hookimpl
def pi0_register_dataset_converters(register):
    register(CONVERTER)
'''


def sim_plugin(robot: str = "toy", simulator: str = "toysim", converter: str = "toy-npz") -> str:
    """Source of a plugin registering the robot ``robot``, a simulator for it and a dataset converter."""
    return toy_plugin_source(robot) + (_SIM_PLUGIN.replace("@ROBOT@", robot).replace("@SIM@", simulator)
                                       .replace("@CONVERTER@", converter))


SIM_PLUGIN = sim_plugin()


def test_simulators_and_converters_are_registered_lazily_and_typed():
    registry = registry_from(_module("toy", SIM_PLUGIN))
    assert registry._simulators is None and registry._converters is None  # nothing ran yet
    assert list(registry.simulators) == ["toysim"]
    assert registry.simulator_for("toy") is registry.simulator("toysim")
    assert registry.simulator_for("nothing") is None
    assert registry.simulator("toysim").task("push-v0").prompt == "push the block"
    assert registry.dataset_converter("toy-npz").options[0].flag == "--scale"
    assert registry.provider("dataset_converter", "toy-npz").name == "toy"
    with pytest.raises(UnknownNameError, match="unknown dataset converter 'toy-np'; did you mean 'toy-npz'"):
        registry.dataset_converter("toy-np")
    # A plugin added after the lazy kinds were loaded still contributes (the pi0_registry fixture does this).
    registry.add_plugin(_module("other", sim_plugin("other", "othersim", "other-npz")),
                        PluginInfo("other", "pi0-embodiment-other", "1.0"))
    assert set(registry.dataset_converters) == {"toy-npz", "other-npz"} and registry.simulator_for("other")


def test_built_in_simulator_and_converters_come_from_the_robot_plugins():
    registry = load_registry({})
    # What pi0 ships is there; a user's own plugins may add more.
    simulated = {name: sim.embodiment for name, sim in registry.simulators.items()}
    assert simulated.items() >= {"gym_aloha": "aloha_sim"}.items()
    assert registry.provider("simulator", "gym_aloha").distribution == "pi0-embodiment-aloha"
    owners = {name: registry.provider("dataset_converter", name).distribution for name in registry.dataset_converters}
    assert owners.items() >= {"aloha-hdf5": "pi0-embodiment-aloha", "libero-hdf5": "pi0-embodiment-libero"}.items()


@pytest.mark.parametrize("second, kind, match", [
    # a second simulator for the same robot (the second plugin's robot has another name)
    (sim_plugin("toy2", "toysim2", "toy2-npz").replace('embodiment="toy2"', 'embodiment="toy"'), "simulators",
     r"a simulator for embodiment 'toy' \('toysim' and 'toysim2'\) is registered by both <first> .* and "
     r"pi0-embodiment-second 2.0"),
    (sim_plugin("toy2", "toysim2", "toy-npz"), "dataset_converters",
     r"dataset converter 'toy-npz' is registered by both <first> .* and pi0-embodiment-second 2.0"),
])
def test_duplicate_simulators_and_converters_fail_naming_both_distributions(second, kind, match):
    registry = registry_from(_module("first", SIM_PLUGIN))
    registry.add_plugin(_module("second", second), PluginInfo("second", "pi0-embodiment-second", "2.0"))
    with pytest.raises(PluginError, match=match):
        getattr(registry, kind)


def test_a_wrong_object_registered_as_simulator_is_a_recorded_failure():
    class Wrong:
        @hookimpl
        def pi0_register_simulators(self, register):
            register("gym_aloha")

    registry = registry_from(Wrong())
    assert registry.simulators == {}
    assert registry.failures[0].error == "TypeError: register() takes a pi0cli.simulator.Simulator, got str"


def test_cli_finds_a_third_party_simulator_and_converter(tmp_path):
    root = fake_distribution(tmp_path / "site", "pi0-embodiment-toy", "toy", "pi0_embodiment_toy", SIM_PLUGIN)
    listing = run_pi0("convert", "dataset", "--help", pythonpath=[root])
    assert listing.returncode == 0, listing.stderr
    for name in ("aloha-hdf5", "libero-hdf5", "toy-npz"):
        assert name in listing.stdout
    assert "Toy recordings into a LeRobot dataset." in listing.stdout
    completed = run_pi0(pythonpath=[root], env={"_PI0_COMPLETE": "complete_bash", "COMP_WORDS": "pi0 convert dataset t",
                                               "COMP_CWORD": "3"})
    assert completed.stdout.split() == ["toy-npz"], completed.stderr
    help_ = run_pi0("convert", "dataset", "toy-npz", "--help", pythonpath=[root])
    assert "--scale" in help_.stdout and "--label" in help_.stdout and "A folder of toy recordings" in help_.stdout
    converted = run_pi0("convert", "dataset", "toy-npz", str(tmp_path / "raw"), "--out", str(tmp_path / "ds"),
                        "--scale", "2.5", pythonpath=[root])
    assert converted.returncode == 0, converted.stderr
    args = json.loads((tmp_path / "ds" / "args.json").read_text())
    assert args == {"src": str(tmp_path / "raw"), "scale": 2.5, "label": None, "overwrite": False}
    # pi0 record / pi0 eval: the toy robot is a simulated robot; a robot without a simulator is refused with the
    # list of those that have one, and a task is looked up among the chosen simulator's own.
    refused = run_pi0("record", "ur5", "--scripted", "--out", str(tmp_path / "d"), pythonpath=[root])
    assert refused.returncode == 1
    assert "embodiment 'ur5' has no simulator; simulated robots: " in refused.stderr
    assert {"aloha_sim", "toy"} <= set(refused.stderr.strip().split("simulated robots: ")[1].split(", "))
    unknown = run_pi0("eval", "toy", "--checkpoint", str(tmp_path), "--task", "stack", pythonpath=[root])
    assert unknown.returncode == 1 and "unknown toysim task 'stack'; known: push" in unknown.stderr


@pytest.mark.slow
def test_pi0_record_writes_a_third_party_simulators_scripted_episodes(tmp_path):
    root = fake_distribution(tmp_path / "site", "pi0-embodiment-toy", "toy", "pi0_embodiment_toy", SIM_PLUGIN)
    result = run_pi0("record", "toy", "--scripted", "--episodes", "2", "--out", str(tmp_path / "demos"),
                     pythonpath=[root])
    assert result.returncode == 0, result.stderr
    info = json.loads((tmp_path / "demos" / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 2 and info["total_frames"] == 6 and info["robot_type"] == "toy"


def test_a_simulators_first_frame_is_checked_against_its_embodiment():
    from pi0cli.simulator import Frame, SimulatorError, checked

    registry = registry_from(_module("toy", SIM_PLUGIN))
    simulator, toy = registry.simulator("toysim"), registry.embodiment("toy")
    good = list(checked(simulator.rollout("push", 0, lambda obs: np.zeros(4)), simulator, toy))
    assert len(good) == 3
    bad_action = checked(simulator.rollout("push", 0, lambda obs: np.zeros(5)), simulator, toy)
    with pytest.raises(SimulatorError, match=r"simulator 'toysim' yielded an action of shape \(5,\); toy takes \(4,\)"):
        next(bad_action)
    no_joints = [Frame(observation={"front": frame["observation"]["front"]}, action=frame["action"], reward=0.0,
                       success=False, index=frame["index"]) for frame in good]
    with pytest.raises(SimulatorError, match="observations that embodiment 'toy' rejects: .*'joints'"):
        next(checked(no_joints, simulator, toy))


def test_a_simulator_that_cannot_start_is_one_error_with_what_it_needs():
    import dataclasses

    from pi0cli.simulator import SimulatorError, checked

    registry = registry_from(_module("toy", SIM_PLUGIN))
    toy = registry.embodiment("toy")

    def broken(task, seed, act, *, max_steps=None, **options):
        raise RuntimeError("Cannot initialize a EGL device display")
        yield

    simulator = dataclasses.replace(registry.simulator("toysim"), rollout=broken, rendering="EGL (libegl1)")
    with pytest.raises(SimulatorError, match=r"simulator 'toysim' could not start an episode: RuntimeError: Cannot "
                                             r"initialize a EGL device display; it needs EGL \(libegl1\)"):
        list(checked(simulator.rollout("push", 0, lambda obs: np.zeros(4)), simulator, toy))
