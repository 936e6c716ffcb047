"""The built-in robots keep the Embodiment contract; the contract rejects self-contradictory robots."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pi0cli.embodiment import Camera, Embodiment, RobotInputs, StateField
from pi0cli.errors import ContractError, ObservationError
from pi0cli.plugins.manager import load_registry
from pi0cli.testing import ConformanceError, check_embodiment
from pi0cli.transforms import SliceActions

BUILT_IN = ["aloha", "aloha_sim", "droid", "libero", "ur5"]


@pytest.fixture(scope="module")
def installed():
    return load_registry({})


@pytest.mark.parametrize("name", BUILT_IN)
def test_built_in_embodiments_conform(installed, name):
    check_embodiment(installed.embodiment(name))


def test_reference_contract_values(installed):
    droid, libero, ur5 = (installed.embodiment(n) for n in ("droid", "libero", "ur5"))
    assert (droid.state_dim, droid.action_dim, droid.control_hz) == (8, 8, 15.0)
    assert (libero.state_dim, libero.action_dim) == (8, 7)
    assert (ur5.state_dim, ur5.action_dim, ur5.asset_id) == (7, 7, "ur5e")
    assert ur5.delta_action_mask == (True,) * 6 + (False,)
    model = droid.inputs(droid.example_observation(0))
    slots = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
    assert [bool(model["image_mask"][s]) for s in slots] == [True, True, False]
    assert droid.outputs({"actions": np.ones((10, 32))})["actions"].shape == (10, 8)


def test_libero_observation_rotates_and_builds_state():
    from pi0_embodiment_libero import LIBERO, libero_observation, quat_to_axis_angle

    image = np.zeros((256, 256, 3), np.uint8)
    image[0, 0] = 255  # top-left pixel ends up bottom-right
    env_obs = {
        "agentview_image": image, "robot0_eye_in_hand_image": image,
        "robot0_eef_pos": [0.1, 0.2, 0.3], "robot0_eef_quat": [0.0, 0.0, np.sin(np.pi / 4), np.cos(np.pi / 4)],
        "robot0_gripper_qpos": [0.04, -0.04],
    }
    obs = libero_observation(env_obs, prompt="open the drawer")
    LIBERO.validate_observation(obs)
    assert obs["observation/image"].shape == (224, 224, 3)
    assert obs["observation/image"][-1, -1].any() and not obs["observation/image"][0, 0].any()
    # a rotation of pi/2 about z: axis-angle (0, 0, pi/2)
    np.testing.assert_allclose(obs["observation/state"], [0.1, 0.2, 0.3, 0, 0, np.pi / 2, 0.04, -0.04], atol=1e-6)
    np.testing.assert_array_equal(quat_to_axis_angle([0, 0, 0, 1]), [0, 0, 0])


def _robot(**changes):
    cameras = (Camera("cam", "base_0_rgb"),)
    state = (StateField("state", 3),)
    fields = dict(
        name="toy", description="", state=state, action_dim=3, control_hz=10.0, cameras=cameras,
        inputs=RobotInputs(cameras, state), outputs=SliceActions(3), asset_id="toy",
        dataset_keys={"cam": "image", "state": "state", "actions": "actions"},
    )
    return Embodiment(**(fields | changes))


@pytest.mark.parametrize("changes, match", [
    ({"name": "Toy Robot"}, "lower-case"),
    ({"action_dim": 0}, "action_dim must be positive"),
    ({"control_hz": float("nan")}, "control_hz"),
    ({"delta_action_mask": (True,) * 4}, "delta_action_mask has 4 entries"),
    ({"cameras": (Camera("cam", "front"),)}, "unknown slot 'front'"),
    ({"cameras": (Camera("a", "base_0_rgb"), Camera("b", "base_0_rgb"))}, "same model slot"),
    ({"dataset_keys": {"cam": "image", "state": "state"}}, "'actions'"),
    ({"dataset_keys": {"state": "state", "actions": "a"}}, "no column for \\['cam'\\]"),
    ({"default_model": "pi1"}, "default_model"),
])
def test_contract_rejects_contradictions(changes, match):
    with pytest.raises(ContractError, match=match):
        _robot(**changes)


@pytest.mark.parametrize("mutate, match", [
    (lambda o: {k: v for k, v in o.items() if k != "cam"}, "no image 'cam'"),
    (lambda o: {**o, "cam": np.zeros((224, 224), np.uint8)}, "HxWx3 or 3xHxW"),
    (lambda o: {**o, "cam": np.full((224, 224, 3), 2.0, np.float32)}, "in \\[0, 1\\]"),
    (lambda o: {**o, "cam": np.zeros((224, 224, 3), np.int64)}, "uint8 or float"),
    (lambda o: {**o, "state": np.zeros(4)}, "'state' must have shape \\(3,\\)"),
    (lambda o: {**o, "state": np.array([0.0, np.nan, 0.0])}, "NaN"),
    (lambda o: {**o, "state": "0 0 0"}, "numeric vector"),
    (lambda o: {**o, "prompt": 3}, "'prompt' must be a string"),
])
def test_observation_validation_names_the_problem(mutate, match):
    robot = _robot()
    obs = robot.example_observation(0)
    robot.validate_observation(obs)
    with pytest.raises(ObservationError, match=match):
        robot.validate_observation(mutate(obs))


def test_conformance_check_catches_an_output_that_does_not_invert_the_input():
    class Doubling:
        def __call__(self, data):
            return {"actions": 2 * np.asarray(data["actions"])[..., :3]}

    with pytest.raises(ConformanceError, match="must invert the input transform"):
        check_embodiment(_robot(outputs=Doubling()))


def test_conformance_check_catches_an_impure_input_transform():
    @dataclasses.dataclass(frozen=True)
    class Mutating:
        def __call__(self, data):
            data["state"] = np.zeros(3, np.float32)
            return RobotInputs(_robot().cameras, _robot().state)(data)

    with pytest.raises(ConformanceError, match="modified its input"):
        check_embodiment(_robot(inputs=Mutating()))
