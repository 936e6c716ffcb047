"""Meta-World's Sawyer arm for pi0, in LeRobot's Meta-World conventions (``lerobot/metaworld_mt50`` trains as is).

- state (4): hand xyz (metres) and gripper opening (0 closed .. 1 open) = ``observation.state``;
- action (4): hand xyz displacement and gripper effort, each in [-1, 1] (one unit moves the mocap target
  1 cm; effort +1 closes the fingers, -1 opens them) = ``action``; already relative, so no delta mask;
- one camera, ``corner2`` (flipped on both axes as LeRobot flips it) = ``observation.image``, into the base
  image slot; both wrist slots are masked out;
- 80 Hz control (frame skip 5 at 2.5 ms), episodes of at most 500 steps; the task's instruction is the prompt.

The simulator (all 50 ``-v3`` tasks, scripted experts) is registered lazily; see :mod:`.sim`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from pi0cli import hookimpl
from pi0cli.embodiment import Camera, Embodiment, RobotInputs, StateField
from pi0cli.transforms import Data, SliceActions

if TYPE_CHECKING:
    from pi0cli.doctor import DoctorCheck
    from pi0cli.simulator import Simulator
    from pi0cli.training.config import TrainConfig

DIM = 4
IMAGE_SIZE = 224  # what the simulator renders; LeRobot's datasets hold 480x480, which the model resizes alike
STATE = (StateField("state", DIM),)
CAMERAS = (Camera("image", "base_0_rgb", height=IMAGE_SIZE, width=IMAGE_SIZE),)


def from_lerobot_env(env_obs: Data) -> Data:
    """LeRobot's Meta-World env observation (``pixels``: already flipped HxWx3, ``agent_pos``: (4,)) -> the
    ``metaworld`` observation, for a client that drives LeRobot's environment."""
    return {"image": np.asarray(env_obs["pixels"], dtype=np.uint8),
            "state": np.asarray(env_obs["agent_pos"], dtype=np.float32)}


METAWORLD = Embodiment(
    name="metaworld",
    description="Meta-World Sawyer arm (MuJoCo), one corner2 camera; state [hand xyz, gripper opening], action "
                "[xyz displacement, gripper effort] in [-1, 1]",
    state=STATE,
    action_dim=DIM,
    control_hz=80.0,
    cameras=CAMERAS,
    inputs=RobotInputs(CAMERAS, STATE),
    outputs=SliceActions(DIM),
    asset_id="metaworld",
    dataset_keys={"image": "observation.image", "state": "observation.state", "actions": "action"},
    delta_action_mask=None,
    gripper="action: effort in [-1, 1], +1 closes; state: finger opening, 0 closed .. 1 open",
    default_prompt=None,  # every task has its own instruction (the simulator sends it with each observation)
    default_model="pi0",
    open_loop_steps=10,
)


@hookimpl
def pi0_register_embodiments(register: Callable[[Embodiment], None]) -> None:
    register(METAWORLD)


@hookimpl
def pi0_register_simulators(register: Callable[[Simulator], None]) -> None:
    from pi0_embodiment_metaworld.sim import SIMULATOR  # light: metaworld and MuJoCo load when an episode starts

    register(SIMULATOR)


@hookimpl
def pi0_doctor_checks(register: Callable[[DoctorCheck], None]) -> None:
    from pi0_embodiment_metaworld.doctor import CHECK  # light: the probe renders in a subprocess

    register(CHECK)


@hookimpl
def pi0_register_presets(register: Callable[[TrainConfig], None]) -> None:
    from pathlib import Path

    from pi0cli.training.peaks import PEAKS_FILENAME, read_peaks
    from pi0cli.training.presets import standard_presets

    peaks = read_peaks(Path(__file__).with_name(PEAKS_FILENAME))  # python benchmarks/bench_memory.py --write-peaks

    # CPU presets only: the full-size ones are the standard set for any robot and carry no Meta-World choice.
    # Chunks of 20 (the robot executes 10 of each): a scripted episode is 50-95 steps at 80 Hz, so 50-step chunks
    # would span most of one while costing 2.5x the action-expert tokens per training step.
    # 32 prompt tokens: the CPU presets' tokenizer is fitted on the fly and nearly character-level, so the longest
    # MT10 instruction ("Open a door with a revolving joint") is 31 tokens and 16 cut 8 of the 10.
    cpu = {"action_horizon": 20, "scan": False, "max_token_len": 32}
    for config in standard_presets("metaworld", "metaworld", models=("pi0",), dataset="lerobot/metaworld_mt50",
                                   num_train_steps=20_000, peaks=peaks, tiny={"image_resolution": (64, 64), **cpu},
                                   small=cpu):
        if config.name.endswith(("_tiny", "_small")):
            register(config)
