"""The metaworld embodiment's contract, task table and selectors, and the lazily rendered observation (no
simulator needed)."""

from __future__ import annotations

import copy
import subprocess
import sys
from typing import Any

import numpy as np
import pi0_embodiment_metaworld as plugin
import pytest
from pi0_embodiment_metaworld import METAWORLD
from pi0_embodiment_metaworld.sim.episodes import LazyObservation
from pi0_embodiment_metaworld.tasks import GROUPS, INSTRUCTIONS, TASKS, group_of, policy_class_name, select_tasks

from pi0cli.errors import UnknownNameError
from pi0cli.plugins.manager import PluginInfo
from pi0cli.testing import check_embodiment


def test_metaworld_conforms():
    check_embodiment(METAWORLD)


def test_lerobot_metaworld_conventions():
    # The columns, dims and rate of lerobot/metaworld_mt50 (info.json): it trains without a key map of its own.
    assert dict(METAWORLD.dataset_keys) == {"image": "observation.image", "state": "observation.state",
                                            "actions": "action"}
    assert (METAWORLD.state_dim, METAWORLD.action_dim, METAWORLD.control_hz) == (4, 4, 80.0)
    assert METAWORLD.delta_action_mask is None  # actions are displacements already, not targets


def test_one_camera_into_the_base_slot_wrists_masked():
    obs = METAWORLD.example_observation(0)
    model = METAWORLD.inputs(obs)
    assert model["image_mask"] == {"base_0_rgb": True, "left_wrist_0_rgb": False, "right_wrist_0_rgb": False}
    np.testing.assert_array_equal(model["image"]["base_0_rgb"], obs["image"])
    assert not model["image"]["left_wrist_0_rgb"].any() and not model["image"]["right_wrist_0_rgb"].any()
    np.testing.assert_array_equal(model["state"], obs["state"])


def test_lerobot_env_observation_adapter():
    pixels = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    obs = plugin.from_lerobot_env({"pixels": pixels, "agent_pos": np.arange(4.0)})
    METAWORLD.validate_observation(obs)
    np.testing.assert_array_equal(obs["image"], pixels)  # LeRobot's env already flipped it
    assert obs["state"].dtype == np.float32


def test_group_sizes_and_partition():
    sizes = {group: len(tasks) for group, tasks in GROUPS.items()}
    assert sizes == {"mt10": 10, "mt50": 50, "easy": 28, "medium": 11, "hard": 6, "very_hard": 5}
    difficulty = [t for g in ("easy", "medium", "hard", "very_hard") for t in GROUPS[g]]
    assert sorted(difficulty) == sorted(TASKS)  # every task in exactly one difficulty group
    assert set(GROUPS["mt10"]) <= set(TASKS)
    assert all(len(tasks) == len(set(tasks)) for tasks in GROUPS.values())
    assert group_of("push-v3") == "hard" and group_of("reach-v3") == "easy"


def test_every_task_has_one_sentence_instruction():
    assert len(INSTRUCTIONS) == 50
    for task, text in INSTRUCTIONS.items():
        assert task.endswith("-v3") and text and "." not in text.rstrip(".") and text[0].isupper(), task


def test_selectors():
    assert select_tasks("mt10") == GROUPS["mt10"]
    assert select_tasks("VERY-HARD") == GROUPS["very_hard"]
    assert select_tasks("reach") == ("reach-v3",)
    assert select_tasks("push-v3, reach_v3,push") == ("push-v3", "reach-v3")  # order kept, repeats dropped
    assert select_tasks("hard,mt10")[:6] == GROUPS["hard"] and len(select_tasks("hard,mt10")) == 14
    assert select_tasks(["metaworld/drawer-open-v3"]) == ("drawer-open-v3",)


@pytest.mark.parametrize("bad", ["puhs-v3", "", "mt11"])
def test_unknown_selector_is_one_clear_error(bad):
    with pytest.raises(UnknownNameError, match="Meta-World task"):
        select_tasks(bad)


def test_policy_names_match_whole_names():
    assert policy_class_name("push-v3") == "SawyerPushV3Policy"
    assert policy_class_name("push-back-v3") == "SawyerPushBackV3Policy"
    assert policy_class_name("peg-insert-side-v3") == "SawyerPegInsertionSideV3Policy"


def test_every_task_has_a_scripted_expert():
    import metaworld.policies

    missing = [task for task in TASKS if not hasattr(metaworld.policies, policy_class_name(task))]
    assert missing == []


def test_registered_through_the_hooks(pi0_registry):
    pi0_registry.add_plugin(plugin, PluginInfo("metaworld", "pi0-embodiment-metaworld", "0.1.0"))
    assert pi0_registry.embodiment("metaworld") is METAWORLD
    simulator = pi0_registry.simulator_for("metaworld")
    assert simulator is not None and len(simulator.tasks) == 50
    assert simulator.task("window-open").prompt == INSTRUCTIONS["window-open-v3"]
    assert simulator.metadata["task_groups"]["mt10"] == list(GROUPS["mt10"])
    assert list(pi0_registry.doctor_checks) == ["metaworld/metaworld rendering"]
    assert simulator.settings({}) == {"shadows": False}  # LeRobot's look, and 3.5-4x cheaper
    assert simulator.parse_options(["shadows=true"]) == {"shadows": True}


def test_cpu_presets_train_the_robot_with_short_chunks(pi0_registry):
    pi0_registry.add_plugin(plugin, PluginInfo("metaworld", "pi0-embodiment-metaworld", "0.1.0"))
    presets = {n: c for n, c in pi0_registry.presets.items() if c.embodiment == "metaworld"}
    assert sorted(presets) == ["pi0_metaworld_small", "pi0_metaworld_tiny"]
    for config in presets.values():
        assert config.model.action_horizon == 20 and config.model.action_dim >= METAWORLD.action_dim
        assert config.model.action_horizon >= METAWORLD.open_loop_steps


def test_plugin_imports_cheaply():
    # Shell completion imports the plugin on every TAB: no simulator, no JAX.
    code = ("import sys, pi0_embodiment_metaworld, pi0_embodiment_metaworld.sim; "
            "print(sorted(m for m in ('mujoco', 'metaworld', 'jax', 'torch', 'gymnasium') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------------- the lazy observation


def _lazy() -> tuple[LazyObservation, list[int]]:
    calls: list[int] = []
    image = np.full((224, 224, 3), 7, np.uint8)

    def render() -> np.ndarray:
        calls.append(1)
        return image

    return LazyObservation(render, state=np.zeros(4, np.float32), prompt="Open a drawer"), calls


def test_lazy_observation_renders_once_and_only_when_read():
    obs, calls = _lazy()
    assert "image" in obs and not obs.rendered and calls == []
    np.asarray(obs["state"])
    assert calls == []
    assert obs["image"][0, 0, 0] == 7 and obs.get("image") is obs["image"]
    assert calls == [1] and obs.rendered


@pytest.mark.parametrize("read", [
    lambda o: {**o}, dict, lambda o: o.copy(), copy.deepcopy, copy.copy, lambda o: dict(o.items()),
    lambda o: {"x": 1} | o,
])
def test_lazy_observation_reads_as_a_plain_dict(read):
    obs, calls = _lazy()
    plain = read(obs)
    assert isinstance(plain["image"], np.ndarray) and plain["image"][0, 0, 0] == 7 and calls == [1]


def test_lazy_observation_passes_the_contract_transforms_and_the_wire():
    from pi0cli.serving.protocol import Packer, unpackb

    obs, _ = _lazy()
    METAWORLD.validate_observation(obs)
    assert METAWORLD.inputs(obs)["image"]["base_0_rgb"][0, 0, 0] == 7
    obs, _ = _lazy()
    decoded: Any = unpackb(Packer().pack(obs))
    assert decoded["image"].shape == (224, 224, 3) and decoded["prompt"] == "Open a drawer"
