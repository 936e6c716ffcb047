"""UR5e (6 joints + gripper, single arm) for pi0: the smallest complete embodiment, and a good template.

Joint actions are learned relative to the current joints (delta mask 6 joints, gripper absolute); the
norm-stats asset ``ur5e`` is the one the pi0 base checkpoint ships.
"""

from __future__ import annotations

from pathlib import Path

from pi0cli import hookimpl
from pi0cli.embodiment import Camera, Embodiment, RobotInputs, StateField
from pi0cli.transforms import SliceActions, bool_mask

ACTION_DIM = 7
STATE = (StateField("joints", 6), StateField("gripper", 1))
CAMERAS = (
    Camera("base_rgb", "base_0_rgb", height=224, width=224),
    Camera("wrist_rgb", "left_wrist_0_rgb", height=224, width=224),
)

UR5 = Embodiment(
    name="ur5",
    description="Universal Robots UR5e with a parallel gripper: state/actions [6 joints, gripper]",
    state=STATE,
    action_dim=ACTION_DIM,
    control_hz=20.0,
    cameras=CAMERAS,
    inputs=RobotInputs(CAMERAS, STATE),
    outputs=SliceActions(ACTION_DIM),
    asset_id="ur5e",
    dataset_keys={
        "base_rgb": "image",
        "wrist_rgb": "wrist_image",
        "joints": "joints",
        "gripper": "gripper",
        "actions": "actions",
    },
    delta_action_mask=bool_mask(6, -1),
    gripper="position, 0 = open .. 1 = closed (dim 6)",
    default_prompt=None,
    default_checkpoint="gs://openpi-assets/checkpoints/pi0_base",
    default_model="pi0",
    open_loop_steps=10,
)


@hookimpl
def pi0_register_embodiments(register) -> None:
    register(UR5)


@hookimpl
def pi0_register_presets(register) -> None:
    from pi0cli.training.peaks import PEAKS_FILENAME, read_peaks
    from pi0cli.training.presets import standard_presets

    peaks = read_peaks(Path(__file__).with_name(PEAKS_FILENAME))  # compiled peaks shipped with the presets
    for config in standard_presets("ur5", "ur5", models=("pi0",), peaks=peaks):
        register(config)
