"""ALOHA conventions against hand computations from the reference formulas."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pi0_embodiment_aloha import (
    ALOHA,
    ALOHA_SIM,
    JOINT_FLIP,
    decode_actions,
    encode_actions,
    gripper_from_angular,
    gripper_from_angular_inv,
    gripper_to_angular,
    sim_observation,
)


def test_gripper_to_angular_by_hand():
    # g = 0.5: finger position v = 0.5 * (0.058 - 0.01844) + 0.01844 = 0.03822 m
    # law of cosines: (0.022^2 + v^2 - 0.036^2) / (2 * 0.022 * v) = 0.0006487684 / 0.00168168 = 0.38578588...
    # asin(0.38578588) = 0.39605949 rad; normalised: (0.39605949 - 0.5476) / (1.6296 - 0.5476) = -0.14005592
    v = 0.5 * (0.05800 - 0.01844) + 0.01844
    cosine = (0.022**2 + v**2 - 0.036**2) / (2 * 0.022 * v)
    assert math.isclose(cosine, 0.0006487684 / 0.00168168, rel_tol=1e-9)
    assert math.isclose(gripper_to_angular(np.float64(0.5)), -0.1400559217021429, rel_tol=1e-9)
    # g = 1 (fully open): the cosine reaches 1 (clipped), asin = pi/2; (pi/2 - 0.5476) / 1.082 = 0.94565280
    assert math.isclose(gripper_to_angular(np.float64(1.0)), (math.pi / 2 - 0.5476) / 1.082, rel_tol=1e-9)


def test_gripper_output_encoding_by_hand():
    # (a + 0.5476 - (-0.6213)) / (1.4910 - (-0.6213)) at a = 0.3: 1.4689 / 2.1123 = 0.69540312
    assert math.isclose(gripper_from_angular(0.3), 1.4689 / 2.1123, rel_tol=1e-12)
    # training-time inverse: a * (1.4910 + 0.6213) - 0.6213 - 0.5476 at a = 0.69540312 gives back 0.3
    assert math.isclose(gripper_from_angular_inv(1.4689 / 2.1123), 0.3, rel_tol=1e-9)


def test_joint_flips_by_hand():
    assert JOINT_FLIP.tolist() == [1, -1, -1, 1, 1, 1, 1, 1, -1, -1, 1, 1, 1, 1]
    actions = np.arange(1, 15, dtype=np.float32)[None]  # joints 1..14, grippers at dims 6 and 13
    out = encode_actions(actions)[0]
    assert out[[0, 1, 2, 3, 4, 5]].tolist() == [1, -2, -3, 4, 5, 6]
    assert out[[7, 8, 9, 10, 11, 12]].tolist() == [8, -9, -10, 11, 12, 13]
    np.testing.assert_allclose(out[6], (7 + 0.5476 + 0.6213) / 2.1123, rtol=1e-6)
    np.testing.assert_allclose(out[13], (14 + 0.5476 + 0.6213) / 2.1123, rtol=1e-6)


def test_state_decoding_through_the_input_transform():
    obs = ALOHA.example_observation(0)
    state = np.linspace(0.0, 1.0, 14).astype(np.float32)
    out = ALOHA.inputs({**obs, "state": state})["state"]
    np.testing.assert_allclose(out[[1, 2, 8, 9]], -state[[1, 2, 8, 9]])
    np.testing.assert_allclose(out[[0, 3, 4, 5]], state[[0, 3, 4, 5]])
    np.testing.assert_allclose(out[[6, 13]], gripper_to_angular(state[[6, 13]].astype(np.float64)), rtol=1e-6)


@given(hnp.arrays(np.float32, (4, 14), elements=st.floats(-3.0, 3.0, width=32)))
def test_output_encoding_inverts_input_decoding(actions):
    np.testing.assert_allclose(encode_actions(decode_actions(actions)), actions, atol=1e-6)
    state = np.zeros(14, np.float32)
    model = ALOHA.inputs({**ALOHA.example_observation(0), "state": state, "actions": actions})
    robot = ALOHA.outputs({"actions": np.pad(model["actions"], ((0, 0), (0, 18))), "state": model["state"]})
    np.testing.assert_allclose(robot["actions"], actions, atol=1e-6)


def test_missing_wrist_cameras_are_zero_and_masked():
    obs = ALOHA.example_observation(0)
    only_high = {"images": {"cam_high": obs["images/cam_high"]}, "state": obs["state"]}
    model = ALOHA.inputs(only_high)
    assert bool(model["image_mask"]["base_0_rgb"])
    assert not model["image_mask"]["left_wrist_0_rgb"] and not model["image_mask"]["right_wrist_0_rgb"]
    assert model["image"]["left_wrist_0_rgb"].shape == (480, 640, 3) and not model["image"]["left_wrist_0_rgb"].any()
    # CHW float images in [0, 1] (what LeRobot datasets yield) become HWC uint8
    chw = np.full((3, 480, 640), 0.5, np.float32)
    assert ALOHA.inputs({"images": {"cam_high": chw}, "state": obs["state"]})["image"]["base_0_rgb"][0, 0, 0] == 127


def test_sim_observation_from_gym_aloha():
    env_obs = {"pixels": {"top": np.full((480, 640, 3), 255, np.uint8)}, "agent_pos": np.zeros(14)}
    obs = sim_observation(env_obs)
    assert obs["images"]["cam_high"].shape == (3, 224, 224)
    # 480x640 -> 168x224 centred: 28 rows of padding on top
    assert obs["images"]["cam_high"][0, 27, 0] == 0 and obs["images"]["cam_high"][0, 28, 0] == 255
    ALOHA_SIM.validate_observation(obs)
    assert ALOHA_SIM.delta_action_mask is None and ALOHA_SIM.default_prompt == "Transfer cube"
