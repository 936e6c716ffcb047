"""Simulated ALOHA (transfer-cube and insertion) on top of gym-aloha's MuJoCo scenes, headless.

The scenes, task rewards and action/observation conventions are gym-aloha's (``gym_aloha.tasks.sim``): the
action is 14 joint targets ``[left 6 joints, left gripper, right 6 joints, right gripper]`` with grippers
normalised 0 = closed .. 1 = open, control runs at 50 Hz (10 physics steps of 2 ms), episodes last 300 steps,
and success is reward 4. Observations are gym-aloha's ``obs_type="pixels_agent_pos"`` format,
``{"pixels": {"top": (480, 640, 3) uint8}, "agent_pos": (14,)}``, so the ``aloha_sim`` embodiment's
``sim_observation`` applies unchanged.

Two differences from ``gym.make("gym_aloha/AlohaTransferCube-v0")``, neither of which changes the physics:

- only the cameras asked for are rendered (gym-aloha renders three 640x480 cameras every step and returns one,
  which costs most of a step on a CPU); ``cameras=()`` renders nothing (``pixels`` is then empty);
- the object pose comes from the reset seed with gym-aloha's own sampler (``sample_box_pose`` /
  ``sample_insertion_pose``), without its module-level global, so a seed gives the same initial scene here as in
  gym-aloha.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from pi0_embodiment_aloha import GRIPPER_POSITION_CLOSED, GRIPPER_POSITION_OPEN
from pi0_embodiment_aloha.sim import PROMPTS, ensure_headless_gl, task_name

ensure_headless_gl()

import gym_aloha.tasks.sim as _aloha_tasks  # noqa: E402  (MUJOCO_GL must be set before MuJoCo loads)
from dm_control import mujoco as dm_mujoco  # noqa: E402
from dm_control.rl import control  # noqa: E402
from dm_control.rl.control import PhysicsError  # noqa: E402
from dm_control.suite import base as dm_base  # noqa: E402
from gym_aloha.constants import ASSETS_DIR, DT, START_ARM_POSE  # noqa: E402
from gym_aloha.utils import sample_box_pose, sample_insertion_pose  # noqa: E402

log = logging.getLogger(__name__)

FPS = 50
MAX_STEPS = 300
MAX_REWARD = 4
ACTION_DIM = 14
IMAGE_HEIGHT, IMAGE_WIDTH = 480, 640
#: Cameras of the scenes (gym-aloha returns ``top`` only).
SCENE_CAMERAS = ("top", "angle", "front_close", "left_pillar", "right_pillar", "left_wrist", "right_wrist")
#: Gripper finger positions (metres) at normalised 0 (closed) and 1 (open): the real robot's linkage.
GRIPPER_CLOSED, GRIPPER_OPEN = GRIPPER_POSITION_CLOSED, GRIPPER_POSITION_OPEN

_SCENES = {"transfer_cube": "bimanual_viperx_transfer_cube.xml", "insertion": "bimanual_viperx_insertion.xml"}
_BASE_TASKS = {"transfer_cube": _aloha_tasks.TransferCubeTask, "insertion": _aloha_tasks.InsertionTask}


def gripper_normalise(position: np.ndarray | float) -> np.ndarray | float:
    """Finger position (metres) -> normalised gripper value (0 closed .. 1 open)."""
    return (position - GRIPPER_CLOSED) / (GRIPPER_OPEN - GRIPPER_CLOSED)


def gripper_unnormalise(value: np.ndarray | float) -> np.ndarray | float:
    """Normalised gripper value -> finger position (metres)."""
    return value * (GRIPPER_OPEN - GRIPPER_CLOSED) + GRIPPER_CLOSED


def sample_object_poses(task: str, seed: int | None) -> np.ndarray:
    """Initial object pose(s) ``[x, y, z, qw, qx, qy, qz]`` (7 for transfer-cube, 14 for insertion: peg then
    socket), exactly as gym-aloha samples them for this seed."""
    task = task_name(task)
    if task == "transfer_cube":
        return np.asarray(sample_box_pose(seed), dtype=np.float64)
    return np.concatenate(sample_insertion_pose(seed)).astype(np.float64)


def _make_task_class(base_cls: type) -> type:
    class _Task(base_cls):
        """gym-aloha's task with a per-instance object pose and rendering of only the chosen cameras."""

        def __init__(self, cameras: Sequence[str], height: int, width: int, shadows: bool) -> None:
            super().__init__(random=None)
            self.cameras = tuple(cameras)
            self.render_flags = None if shadows else {"shadow": False}
            self.height, self.width = height, width
            self.object_pose: np.ndarray | None = None

        def initialize_episode(self, physics: Any) -> None:
            assert self.object_pose is not None, "set object_pose before reset"
            with physics.reset_context():
                physics.named.data.qpos[:16] = START_ARM_POSE
                np.copyto(physics.data.ctrl, START_ARM_POSE)
                physics.named.data.qpos[-len(self.object_pose) :] = self.object_pose
            dm_base.Task.initialize_episode(self, physics)

        def get_observation(self, physics: Any) -> dict[str, Any]:
            return {
                "qpos": self.get_qpos(physics),
                "qvel": self.get_qvel(physics),
                "env_state": self.get_env_state(physics),
                "images": {
                    name: physics.render(
                        height=self.height, width=self.width, camera_id=name, render_flag_overrides=self.render_flags
                    )
                    for name in self.cameras
                },
            }

    _Task.__name__ = _Task.__qualname__ = f"Pi0{base_cls.__name__}"
    return _Task


_TASK_CLASSES = {name: _make_task_class(cls) for name, cls in _BASE_TASKS.items()}


class AlohaSim:
    """One simulated ALOHA task. Not thread-safe; one MuJoCo model and GL context per instance.

    ``reset(seed) -> obs``; ``step(action) -> (obs, reward, done, info)`` with ``info`` holding ``is_success``
    (reward 4 reached at this step), ``success`` (reached at any step so far), ``max_reward``, ``step`` and
    ``truncated`` (the step limit ended the episode). ``done`` is true on success when
    ``terminate_on_success`` (gym-aloha's behaviour) or when ``max_steps`` steps have run.

    ``shadows=False`` renders without shadow mapping: on a CPU (Mesa llvmpipe) the scene's 4096x4096 shadow map
    costs most of a frame (about 0.19 s of 0.24 s at 640x480), so this is about 4-5x faster per step, but the
    images then differ from gym-aloha's (and from datasets rendered with it, e.g. ``lerobot/aloha_sim_*``). Use
    the same setting for recording and for evaluating a policy trained on those recordings.
    """

    def __init__(
        self,
        task: str = "transfer_cube",
        *,
        cameras: Sequence[str] = ("top",),
        height: int = IMAGE_HEIGHT,
        width: int = IMAGE_WIDTH,
        max_steps: int = MAX_STEPS,
        terminate_on_success: bool = True,
        shadows: bool = True,
        seed: int | None = None,
    ) -> None:
        self.task = task_name(task)
        unknown = [c for c in cameras if c not in SCENE_CAMERAS]
        if unknown:
            raise ValueError(f"unknown camera(s) {unknown}; the scene has {', '.join(SCENE_CAMERAS)}")
        self.cameras = tuple(cameras)
        self.max_steps = int(max_steps)
        self.terminate_on_success = terminate_on_success
        self.prompt = PROMPTS[self.task]
        physics = dm_mujoco.Physics.from_xml_path(str(ASSETS_DIR / _SCENES[self.task]))
        self.shadows = shadows
        self._task = _TASK_CLASSES[self.task](self.cameras, height, width, shadows)
        self._env = control.Environment(
            physics, self._task, time_limit=float("inf"), control_timestep=DT, n_sub_steps=None, flat_observation=False
        )
        self._seeds = np.random.SeedSequence(seed)
        self.seed: int | None = None
        self.steps = 0
        self.max_reward = 0.0
        self.success = False
        self.unstable = False  # the physics diverged this episode (see step)
        self._last_observation: dict[str, Any] = {}

    # ---- gym-like interface -------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> dict[str, Any]:
        """Start an episode. The same seed gives the same scene (and the same one as gym-aloha's env). Without a
        seed, one is drawn from the constructor's seed sequence (recorded in ``self.seed``)."""
        if seed is None:
            seed = int(self._seeds.spawn(1)[0].generate_state(1)[0] % (2**31))
        self.seed = int(seed)
        self._task.object_pose = sample_object_poses(self.task, self.seed)
        self.steps, self.max_reward, self.success = 0, 0.0, False
        self.unstable = False
        timestep = self._env.reset()
        self._last_observation = self._format(timestep.observation)
        return self._last_observation

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, dict[str, Any]]:
        """Apply 14 joint targets for one control step (20 ms)."""
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"expected {ACTION_DIM} joint targets, got shape {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError("action contains NaN or inf")
        try:
            timestep = self._env.step(action)
        except PhysicsError as exc:
            # Joint targets far outside what the arms can reach (an untrained or diverging policy) can make the
            # contact solver blow up. That ends this episode as a failure, not the whole evaluation.
            log.warning("seed %s: the simulation diverged at step %d (%s); the episode ends as a failure",
                        self.seed, self.steps + 1, " ".join(str(exc).split()))
            self.steps += 1
            self.unstable = True
            info = {"is_success": False, "success": self.success, "max_reward": self.max_reward,
                    "step": self.steps, "truncated": True, "unstable": True}
            return self._last_observation, 0.0, True, info
        reward = float(timestep.reward or 0.0)
        self.steps += 1
        self.max_reward = max(self.max_reward, reward)
        is_success = reward >= MAX_REWARD
        self.success = self.success or is_success
        truncated = self.steps >= self.max_steps
        done = truncated or (is_success and self.terminate_on_success)
        info = {
            "is_success": is_success,
            "success": self.success,
            "max_reward": self.max_reward,
            "step": self.steps,
            "truncated": truncated and not (is_success and self.terminate_on_success),
        }
        self._last_observation = self._format(timestep.observation)
        return self._last_observation, reward, done, info

    def close(self) -> None:
        physics = getattr(self._env, "physics", None)
        if physics is not None:
            physics.free()

    def __enter__(self) -> AlohaSim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- extras -------------------------------------------------------------------------------------------
    @property
    def physics(self) -> Any:
        """The dm_control ``Physics`` (``physics.model.ptr`` / ``physics.data.ptr`` are raw MuJoCo structs)."""
        return self._env.physics

    @property
    def object_pose(self) -> np.ndarray:
        """Current pose(s) of the task's free object(s), ``[x, y, z, qw, qx, qy, qz]`` each."""
        return self.physics.data.qpos[16:].copy()

    def agent_pos(self) -> np.ndarray:
        """The 14-dim robot state (joint positions, normalised gripper positions)."""
        return np.asarray(self._task.get_qpos(self.physics), dtype=np.float64)

    def render(self, camera: str = "top", height: int = IMAGE_HEIGHT, width: int = IMAGE_WIDTH) -> np.ndarray:
        """Render any scene camera now (e.g. for videos), independently of the observation cameras."""
        return self.physics.render(
            height=height, width=width, camera_id=camera, render_flag_overrides=self._task.render_flags
        )

    def _format(self, raw: dict[str, Any]) -> dict[str, Any]:
        return {
            "pixels": {name: np.array(image, copy=True) for name, image in raw["images"].items()},
            "agent_pos": np.asarray(raw["qpos"], dtype=np.float64),
        }


def make_env(task: str = "transfer_cube", seed: int | None = None, **kwargs: Any) -> AlohaSim:
    """A simulated ALOHA task (see :class:`AlohaSim` for keyword arguments: ``cameras``, ``height``, ``width``,
    ``max_steps``, ``terminate_on_success``)."""
    return AlohaSim(task, seed=seed, **kwargs)


__all__ = [
    "ACTION_DIM",
    "FPS",
    "MAX_REWARD",
    "MAX_STEPS",
    "PROMPTS",
    "SCENE_CAMERAS",
    "AlohaSim",
    "gripper_normalise",
    "gripper_unnormalise",
    "make_env",
    "sample_object_poses",
]
