"""ALOHA (bimanual, 14 dims) for pi0, real and simulated.

State and actions are ``[left 6 joints, left gripper, right 6 joints, right gripper]``. ALOHA's own gripper
values are linear (normalised finger position); the pi0 base model was trained on Trossen data whose
grippers are angular and whose joints have other signs, so with ``adapt_to_pi`` the inputs flip joint
signs and turn gripper positions into angles, and the outputs undo both (reference constants).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pi0cli import hookimpl
from pi0cli.embodiment import Camera, Embodiment, RobotInputs, StateField
from pi0cli.transforms import Data, SliceActions, Transform, bool_mask, compose, resize_with_pad, to_uint8_hwc

if TYPE_CHECKING:
    from pi0cli.convert.datasets import DatasetConverter
    from pi0cli.diagnostics import DoctorCheck
    from pi0cli.simulator import Simulator
    from pi0cli.training.config import TrainConfig

DIM = 14
GRIPPER_DIMS = (6, 13)
#: Joint sign flips between ALOHA and the pi0 base model's convention (grippers untouched).
JOINT_FLIP = np.array([1, -1, -1, 1, 1, 1, 1, 1, -1, -1, 1, 1, 1, 1], dtype=np.float32)

# Reference constants of the ALOHA gripper linkage.
GRIPPER_POSITION_OPEN = 0.05800  # metres, finger position at normalised 1
GRIPPER_POSITION_CLOSED = 0.01844  # metres, finger position at normalised 0
GRIPPER_ARM_LENGTH = 0.036
GRIPPER_HORN_RADIUS = 0.022
PI_GRIPPER_ANGLE_MIN, PI_GRIPPER_ANGLE_MAX = 0.5476, 1.6296  # state range in the pi0 convention
ALOHA_GRIPPER_ANGLE_MIN, ALOHA_GRIPPER_ANGLE_MAX = -0.6213, 1.4910  # command range on the robot


def gripper_to_angular(value: np.ndarray) -> np.ndarray:
    """Normalised linear gripper position (0 closed .. 1 open) -> normalised angle of the pi0 convention."""
    position = value * (GRIPPER_POSITION_OPEN - GRIPPER_POSITION_CLOSED) + GRIPPER_POSITION_CLOSED
    # Law of cosines on the horn/arm linkage gives the horn angle for a finger position.
    cosine = (GRIPPER_HORN_RADIUS**2 + position**2 - GRIPPER_ARM_LENGTH**2) / (2 * GRIPPER_HORN_RADIUS * position)
    angle = np.arcsin(np.clip(cosine, -1.0, 1.0))
    return (angle - PI_GRIPPER_ANGLE_MIN) / (PI_GRIPPER_ANGLE_MAX - PI_GRIPPER_ANGLE_MIN)


def gripper_from_angular(value: np.ndarray) -> np.ndarray:
    """Model gripper action (angular) -> the robot's normalised gripper command."""
    span = ALOHA_GRIPPER_ANGLE_MAX - ALOHA_GRIPPER_ANGLE_MIN
    return (value + PI_GRIPPER_ANGLE_MIN - ALOHA_GRIPPER_ANGLE_MIN) / span


def gripper_from_angular_inv(value: np.ndarray) -> np.ndarray:
    """Inverse of :func:`gripper_from_angular`: recorded gripper commands -> model (angular) actions."""
    return value * (ALOHA_GRIPPER_ANGLE_MAX - ALOHA_GRIPPER_ANGLE_MIN) + ALOHA_GRIPPER_ANGLE_MIN - PI_GRIPPER_ANGLE_MIN


def decode_state(state: np.ndarray) -> np.ndarray:
    """Robot state -> pi0 convention (joint flips, gripper position -> angle)."""
    state = JOINT_FLIP * np.asarray(state, dtype=np.float32)
    state[..., GRIPPER_DIMS] = gripper_to_angular(state[..., GRIPPER_DIMS])
    return state


def decode_actions(actions: np.ndarray) -> np.ndarray:
    """Recorded robot actions ``[..., 14]`` -> pi0 convention (training inputs)."""
    actions = JOINT_FLIP * np.asarray(actions, dtype=np.float32)
    actions[..., GRIPPER_DIMS] = gripper_from_angular_inv(actions[..., GRIPPER_DIMS])
    return actions


def encode_actions(actions: np.ndarray) -> np.ndarray:
    """pi0 actions ``[..., 14]`` -> robot commands; inverts :func:`decode_actions`."""
    actions = JOINT_FLIP * np.asarray(actions, dtype=np.float32)
    actions[..., GRIPPER_DIMS] = gripper_from_angular(actions[..., GRIPPER_DIMS])
    return actions


@dataclasses.dataclass(frozen=True)
class AdaptToPi:
    """Inputs step: robot conventions -> pi0 base-model conventions (state, and actions when training)."""

    def __call__(self, data: Data) -> Data:
        out = {**data, "state": decode_state(data["state"])}
        if "actions" in data:
            out["actions"] = decode_actions(data["actions"])
        return out


@dataclasses.dataclass(frozen=True)
class AdaptFromPi:
    """Outputs step: pi0 actions -> robot commands."""

    def __call__(self, data: Data) -> Data:
        return {**data, "actions": encode_actions(data["actions"])}


def aloha_io(cameras: tuple[Camera, ...], adapt_to_pi: bool = True) -> tuple[Transform, Transform]:
    """Input and output transforms of an ALOHA with these cameras."""
    inputs = compose(RobotInputs(cameras, STATE), AdaptToPi() if adapt_to_pi else None)
    outputs = compose(SliceActions(DIM), AdaptFromPi() if adapt_to_pi else None)
    return inputs, outputs


STATE = (StateField("state", DIM),)
CAMERAS = (
    Camera("images/cam_high", "base_0_rgb", height=480, width=640, channels_first=True),
    Camera("images/cam_low", None, required=False, height=480, width=640, channels_first=True),
    Camera("images/cam_left_wrist", "left_wrist_0_rgb", required=False, height=480, width=640, channels_first=True),
    Camera("images/cam_right_wrist", "right_wrist_0_rgb", required=False, height=480, width=640, channels_first=True),
)
GRIPPER = "linear, normalised 0 = closed .. 1 = open (dims 6 and 13); angular in model space"
DESCRIPTION_SUFFIX = "state/actions [left 6 joints, left gripper, right 6 joints, right gripper]"

_inputs, _outputs = aloha_io(CAMERAS)
ALOHA = Embodiment(
    name="aloha",
    description=f"ALOHA bimanual robot (Trossen ViperX arms); {DESCRIPTION_SUFFIX}",
    state=STATE,
    action_dim=DIM,
    control_hz=50.0,
    cameras=CAMERAS,
    inputs=_inputs,
    outputs=_outputs,
    asset_id="trossen",
    dataset_keys={
        "images/cam_high": "observation.images.cam_high",
        "images/cam_low": "observation.images.cam_low",
        "images/cam_left_wrist": "observation.images.cam_left_wrist",
        "images/cam_right_wrist": "observation.images.cam_right_wrist",
        "state": "observation.state",
        "actions": "action",
    },
    delta_action_mask=bool_mask(6, -1, 6, -1),
    gripper=GRIPPER,
    default_prompt=None,
    default_checkpoint="gs://openpi-assets/checkpoints/pi05_base",
    default_model="pi05",
    open_loop_steps=25,
    metadata={"reset_pose": [0.0, -1.5, 1.5, 0.0, 0.0, 0.0]},
)


SIM_IMAGE_SIZE = 224
#: (top, left, height, width) of the top camera (as fractions) around the transfer-cube spawn area and the
#: hand-over point: about 80 of the 224 pixels each way.
SIM_CUBE_WINDOW = (0.375, 0.375, 0.36, 0.36)
SIM_CAMERAS = (
    Camera("images/cam_high", "base_0_rgb", height=SIM_IMAGE_SIZE, width=SIM_IMAGE_SIZE, channels_first=True),
)


def sim_observation(env_obs: Data) -> Data:
    """gym-aloha's ``{"pixels": {"top": HxWx3}, "agent_pos": (14,)}`` -> the aloha_sim observation, resized
    and laid out CHW as the reference simulation client sends it."""
    top = resize_with_pad(to_uint8_hwc(env_obs["pixels"]["top"]), SIM_IMAGE_SIZE, SIM_IMAGE_SIZE)
    return {
        "images": {"cam_high": np.ascontiguousarray(np.transpose(top, (2, 0, 1)))},
        "state": np.asarray(env_obs["agent_pos"], dtype=np.float32),
    }


_sim_inputs, _sim_outputs = aloha_io(SIM_CAMERAS)
ALOHA_SIM = Embodiment(
    name="aloha_sim",
    description=f"ALOHA in MuJoCo simulation (gym-aloha), one top camera; {DESCRIPTION_SUFFIX}",
    state=STATE,
    action_dim=DIM,
    control_hz=50.0,
    cameras=SIM_CAMERAS,
    inputs=_sim_inputs,
    outputs=_sim_outputs,
    asset_id="lerobot/aloha_sim_transfer_cube_human",
    dataset_keys={"images/cam_high": "observation.images.top", "state": "observation.state", "actions": "action"},
    delta_action_mask=None,
    gripper=GRIPPER,
    default_prompt="Transfer cube",
    default_checkpoint="gs://openpi-assets/checkpoints/pi0_aloha_sim",
    default_model="pi0",
    open_loop_steps=10,
)


@hookimpl
def pi0_register_embodiments(register: Callable[[Embodiment], None]) -> None:
    register(ALOHA)
    register(ALOHA_SIM)


@hookimpl
def pi0_register_simulators(register: Callable[[Simulator], None]) -> None:
    from pi0_embodiment_aloha.sim import SIMULATOR  # light: MuJoCo loads when an episode starts

    register(SIMULATOR)


@hookimpl
def pi0_register_dataset_converters(register: Callable[[DatasetConverter], None]) -> None:
    from pi0_embodiment_aloha.hdf5 import CONVERTER  # light: h5py loads when a conversion starts

    register(CONVERTER)


@hookimpl
def pi0_doctor_checks(register: Callable[[DoctorCheck], None]) -> None:
    from pi0_embodiment_aloha.doctor import CHECK  # light: the probe runs MuJoCo in a subprocess

    register(CHECK)


@hookimpl
def pi0_register_presets(register: Callable[[TrainConfig], None]) -> None:
    from pi0cli.training.peaks import PEAKS_FILENAME, read_peaks
    from pi0cli.training.presets import standard_presets

    peaks = read_peaks(Path(__file__).with_name(PEAKS_FILENAME))  # compiled peaks shipped with the presets
    for config in standard_presets("aloha", "aloha", peaks=peaks):
        register(config)
    # The CPU presets see only the table's middle (where the cube spawns and is handed over) and skip the
    # random crop/rotation: at 64 px the whole spawn area is otherwise one 8-pixel patch.
    sim_view = {"image_crop": SIM_CUBE_WINDOW, "augment_geometric": False}
    # The small models run their 3 layers unrolled: the planner measured 1.3x more steps/s than lax.scan on this
    # CPU (benchmarks/bench_memory.py --speed); same weights layout, so checkpoints do not care.
    small_view = {**sim_view, "action_horizon": 50, "state_dropout": 0.5, "scan": False}
    for config in standard_presets("aloha_sim", "aloha_sim", models=("pi0",), peaks=peaks,
                                   dataset="lerobot/aloha_sim_transfer_cube_human", num_train_steps=20_000,
                                   default_prompt="Transfer cube",
                                   tiny={"image_resolution": (64, 64), **sim_view}, small=small_view):
        register(config)
    from pi0cli.training.presets import fast_cpu_presets

    # pi0-FAST small takes pi0 small's cure for a policy that continues the trajectory its joints imply
    # (docs/benchmarks.md): half of its training examples do not see their state tokens. The ``_h50`` variant
    # also predicts pi0's 50-step chunks: 60 FAST tokens on average at DCT scale 10, 129 at most on the 50
    # scripted demos, so 208 tokens in all.
    fast_small = {**sim_view, "scan": False, "state_dropout": 0.5}
    for config in fast_cpu_presets("aloha_sim", "aloha_sim", action_dim=14,
                                   dataset="lerobot/aloha_sim_transfer_cube_human", default_prompt="Transfer cube",
                                   tiny={"image_resolution": (64, 64), **sim_view}, small=fast_small):
        register(config)
        if config.name == "pi0_fast_aloha_sim_small":
            register(dataclasses.replace(
                config, name="pi0_fast_aloha_sim_small_h50",
                model=dataclasses.replace(config.model, action_horizon=50, max_token_len=208),
                description=config.description.replace("(aloha_sim)", "(aloha_sim; 50-step chunks)")))
