"""One Meta-World ``-v3`` task in MuJoCo, headless, in LeRobot's conventions.

- Scene placement: metaworld's own sampler draws the object and goal positions (redrawing until the task's
  constraints hold, e.g. reach's goal at least 15 cm from the puck) from its random generator, seeded with
  a number derived from ``(seed, task index)``. The same seed gives the same scene; different seeds give
  different continuous draws, so evaluation seeds that ``pi0 record`` did not use are scenes it never saw.
- The goal is observable (as in Meta-World's multi-task benchmarks): the scripted experts read it from
  the 39-D environment observation. The policy never sees that vector, only ``state`` and the image.
- Camera ``corner2``, moved to where LeRobot puts it, rendered with MuJoCo's own renderer from a snapshot
  of the simulation state (so an image can be rendered later, or never), flipped on both axes as LeRobot
  flips it. Shadows are off unless asked for: they cost 3.5-4x the render time.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np

from pi0_embodiment_metaworld.sim import ensure_headless_gl
from pi0_embodiment_metaworld.tasks import TASKS, task_name

ensure_headless_gl()

import mujoco  # noqa: E402  (after the GL back end is chosen)

CAMERA = "corner2"
#: LeRobot's position of ``corner2`` (the scene's default one sees the table from too far away).
CAMERA_POSITION = (0.75, 0.075, 0.7)
MAX_STEPS = 500  # Meta-World's max_path_length
IMAGE_SIZE = 224


def flip_image(image: np.ndarray) -> np.ndarray:
    """``corner2`` renders upside down and mirrored; LeRobot flips both axes (a half turn)."""
    return np.ascontiguousarray(image[::-1, ::-1])


def scene_seed(task: str, seed: int) -> int:
    """The generator seed of a task's scene ``seed``: distinct tasks draw independently for the same seed."""
    return int(np.random.SeedSequence([seed, TASKS.index(task)]).generate_state(1)[0])


class Snapshot:
    """The simulation state at one step, renderable later (a copy of MuJoCo's data: ~40 us)."""

    def __init__(self, sim: MetaWorldSim):
        self._sim = sim
        self._data = mujoco.MjData(sim.model)
        mujoco.mj_copyData(self._data, sim.model, sim.env.data)
        self._image: np.ndarray | None = None

    def image(self) -> np.ndarray:
        if self._image is None:
            self._image = self._sim.render(self._data)
        return self._image


class MetaWorldSim:
    """A Meta-World task: ``reset(seed)``, ``step(action)``, ``render()``; a context manager (closes GL)."""

    def __init__(self, task: str, *, image_size: int = IMAGE_SIZE, shadows: bool = False,
                 max_steps: int = MAX_STEPS):
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS
        from metaworld.types import Task

        self.task = task_name(task)
        self.max_steps = min(max_steps, MAX_STEPS)
        self.image_size = image_size
        self._cls = ALL_V3_ENVIRONMENTS[self.task]
        self._task_type = Task
        self.env = self._cls()
        self.model = self.env.model
        camera = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, CAMERA)
        self.model.cam_pos[camera] = CAMERA_POSITION
        if not shadows:
            self.model.light_castshadow[:] = 0
        self._renderer: mujoco.Renderer | None = None
        self.steps = 0
        self.success = False
        self.rand_vec: np.ndarray | None = None
        self._task_set = False

    def reset(self, seed: int) -> np.ndarray:
        """Start the scene of ``seed``; returns the 39-D environment observation."""
        if not self._task_set:
            # A Task makes the goal observable (as Meta-World's multi-task benchmarks do); its positions are
            # only a placeholder: a frozen vector would make the tasks that redraw (reach, ...) loop forever.
            space = self.env._random_reset_space
            assert space is not None, f"metaworld's {self.task} declares no reset range"
            data = {"env_cls": self._cls, "rand_vec": space.low, "partially_observable": False}
            self.env.set_task(self._task_type(env_name=self.task, data=pickle.dumps(data)))
            self._task_set = True
        self.env._freeze_rand_vec = False  # draw a new scene on every reset ...
        self.env.seeded_rand_vec = True  # ... from the env's own generator, which seed() sets
        self.env.seed(scene_seed(self.task, seed))
        obs, _ = self.env.reset()
        self.rand_vec = np.array(self.env._last_rand_vec, dtype=np.float64)
        self.steps, self.success = 0, False
        return np.asarray(obs, dtype=np.float64)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        """``(observation, reward, success so far, done)``; done at success or after ``max_steps``."""
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(4), -1.0, 1.0)
        obs, reward, _, _, info = self.env.step(action)
        self.steps += 1
        self.success = self.success or bool(info.get("success", 0.0))
        done = self.success or self.steps >= self.max_steps
        return np.asarray(obs, dtype=np.float64), float(reward), self.success, done

    def snapshot(self) -> Snapshot:
        return Snapshot(self)

    def render(self, data: Any = None) -> np.ndarray:
        """The ``corner2`` image (uint8 HxWx3, flipped) of ``data`` (default: the current state)."""
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.image_size, self.image_size)
        self._renderer.update_scene(self.env.data if data is None else data, camera=CAMERA)
        return flip_image(self._renderer.render())

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self.env.close()

    def __enter__(self) -> MetaWorldSim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["CAMERA", "CAMERA_POSITION", "IMAGE_SIZE", "MAX_STEPS", "MetaWorldSim", "Snapshot", "flip_image",
           "scene_seed"]
