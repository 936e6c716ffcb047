"""DROID (Franka Panda, 7 joints + gripper) for pi0.

Observations use DROID's flat keys (``observation/joint_position`` ...). Actions are 7 joint velocities and a
gripper position (0 open .. 1 closed), 15 Hz; the client binarises the gripper and executes 8 of each chunk.
"""

from __future__ import annotations

from pathlib import Path

from pi0cli import hookimpl
from pi0cli.embodiment import Camera, Embodiment, RobotInputs, StateField
from pi0cli.transforms import SliceActions

ACTION_DIM = 8
STATE = (StateField("observation/joint_position", 7), StateField("observation/gripper_position", 1))
CAMERAS = (
    Camera("observation/exterior_image_1_left", "base_0_rgb", height=180, width=320),
    Camera("observation/wrist_image_left", "left_wrist_0_rgb", height=180, width=320),
)

DROID = Embodiment(
    name="droid",
    description="DROID Franka Panda: state [7 joint positions, gripper position]; "
    "actions [7 joint velocities, gripper position]",
    state=STATE,
    action_dim=ACTION_DIM,
    control_hz=15.0,
    cameras=CAMERAS,
    inputs=RobotInputs(CAMERAS, STATE),
    outputs=SliceActions(ACTION_DIM),
    asset_id="droid",
    dataset_keys={
        "observation/exterior_image_1_left": "exterior_image_1_left",
        "observation/wrist_image_left": "wrist_image_left",
        "observation/joint_position": "joint_position",
        "observation/gripper_position": "gripper_position",
        "actions": "actions",
    },
    delta_action_mask=None,
    gripper="position, 0 = open .. 1 = closed (dim 7); the client binarises at 0.5",
    default_prompt=None,
    default_checkpoint="gs://openpi-assets/checkpoints/pi05_droid",
    default_model="pi05",
    open_loop_steps=8,
)


@hookimpl
def pi0_register_embodiments(register) -> None:
    register(DROID)


@hookimpl
def pi0_register_presets(register) -> None:
    from pi0cli.training.peaks import PEAKS_FILENAME, read_peaks
    from pi0cli.training.presets import standard_presets

    peaks = read_peaks(Path(__file__).with_name(PEAKS_FILENAME))  # compiled peaks shipped with the presets
    for config in standard_presets("droid", "droid", num_train_steps=20_000, peaks=peaks):
        register(config)
    from pi0cli.models.config import preset as model_preset
    from pi0cli.training.config import TrainConfig
    from pi0cli.training.presets import FAST_FULL_DROID_SCHEDULE, fast_presets

    for config in fast_presets("droid", "droid", action_dim=8, action_horizon=10, num_train_steps=20_000):
        register(config)
    register(TrainConfig(
        name="pi0_fast_full_droid_finetune", embodiment="droid",
        model=model_preset("pi0_fast", action_dim=8, action_horizon=16, max_token_len=180), batch_size=256,
        num_train_steps=100_000, lr_schedule=FAST_FULL_DROID_SCHEDULE, num_workers=0,
        description="pi0-FAST full DROID fine-tune (reference settings: batch 256, 100k steps, constant 5e-5)",
    ))
