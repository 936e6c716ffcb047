"""LIBERO (simulated Franka, end-effector control) for pi0.

State is 8 dims: end-effector position (3), orientation as axis-angle (3), gripper finger positions (2).
Actions are 7 dims: end-effector delta position (3), delta rotation (3), gripper (-1 open .. 1 close).
LIBERO renders its cameras upside down; :func:`libero_observation` rotates them by 180 degrees and pads them
to 224x224, as the reference client does, so it matches the LeRobot LIBERO datasets.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pi0cli import hookimpl
from pi0cli.embodiment import Camera, Embodiment, RobotInputs, StateField
from pi0cli.transforms import Data, SliceActions, resize_with_pad, to_uint8_hwc

if TYPE_CHECKING:
    from pi0cli.convert.datasets import DatasetConverter
    from pi0cli.training.config import TrainConfig

IMAGE_SIZE = 224
ACTION_DIM = 7
STATE = (StateField("observation/state", 8),)
CAMERAS = (
    Camera("observation/image", "base_0_rgb", height=IMAGE_SIZE, width=IMAGE_SIZE),
    Camera("observation/wrist_image", "left_wrist_0_rgb", height=IMAGE_SIZE, width=IMAGE_SIZE),
)


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """``(x, y, z, w)`` quaternion -> axis-angle vector (robosuite's convention; zero for no rotation)."""
    quat = np.asarray(quat, dtype=np.float64)
    w = np.clip(quat[3], -1.0, 1.0)
    sin_half = np.sqrt(1.0 - w * w)
    if np.isclose(sin_half, 0.0):
        return np.zeros(3)
    return quat[:3] * 2.0 * np.arccos(w) / sin_half


def libero_observation(env_obs: Data, prompt: str | None = None) -> Data:
    """A raw LIBERO (robosuite) observation -> this embodiment's observation."""
    def camera(key: str) -> np.ndarray:
        rotated = np.ascontiguousarray(np.asarray(env_obs[key])[::-1, ::-1])
        return resize_with_pad(to_uint8_hwc(rotated), IMAGE_SIZE, IMAGE_SIZE)

    state = np.concatenate([
        np.asarray(env_obs["robot0_eef_pos"], dtype=np.float64),
        quat_to_axis_angle(env_obs["robot0_eef_quat"]),
        np.asarray(env_obs["robot0_gripper_qpos"], dtype=np.float64),
    ]).astype(np.float32)
    obs: Data = {
        "observation/image": camera("agentview_image"),
        "observation/wrist_image": camera("robot0_eye_in_hand_image"),
        "observation/state": state,
    }
    if prompt is not None:
        obs["prompt"] = prompt
    return obs


LIBERO = Embodiment(
    name="libero",
    description="LIBERO simulated Franka: state [eef pos 3, axis-angle 3, gripper qpos 2]; "
    "actions [eef delta pos 3, delta rot 3, gripper]",
    state=STATE,
    action_dim=ACTION_DIM,
    control_hz=10.0,
    cameras=CAMERAS,
    inputs=RobotInputs(CAMERAS, STATE),
    outputs=SliceActions(ACTION_DIM),
    asset_id="physical-intelligence/libero",
    dataset_keys={
        "observation/image": "image",
        "observation/wrist_image": "wrist_image",
        "observation/state": "state",
        "actions": "actions",
    },
    delta_action_mask=None,
    gripper="command, -1 = open .. 1 = close (dim 6); state has two finger positions (dims 6-7)",
    default_prompt=None,
    default_checkpoint="gs://openpi-assets/checkpoints/pi05_libero",
    default_model="pi05",
    open_loop_steps=5,
)


@hookimpl
def pi0_register_embodiments(register: Callable[[Embodiment], None]) -> None:
    register(LIBERO)


@hookimpl
def pi0_register_dataset_converters(register: Callable[[DatasetConverter], None]) -> None:
    from pi0_embodiment_libero.hdf5 import CONVERTER  # light: h5py loads when a conversion starts

    register(CONVERTER)


@hookimpl
def pi0_register_presets(register: Callable[[TrainConfig], None]) -> None:
    from pi0cli.training.peaks import PEAKS_FILENAME, read_peaks
    from pi0cli.training.presets import standard_presets

    peaks = read_peaks(Path(__file__).with_name(PEAKS_FILENAME))  # compiled peaks shipped with the presets
    for config in standard_presets("libero", "libero", dataset="physical-intelligence/libero", peaks=peaks):
        register(config)
    from pi0cli.training.presets import fast_presets

    for config in fast_presets("libero", "libero", action_dim=7, action_horizon=10, max_token_len=180,
                               dataset="physical-intelligence/libero"):
        register(config)
