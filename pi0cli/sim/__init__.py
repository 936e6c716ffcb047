"""Simulated robots for recording demonstrations and closed-loop evaluation.

Nothing heavy is imported here: MuJoCo, dm_control and gym-aloha load only when a submodule is used.

- :mod:`pi0cli.sim.aloha`: the simulated ALOHA (gym-aloha scenes, headless rendering of only the cameras used).
- :mod:`pi0cli.sim.scripted`: scripted demonstrations (end-effector waypoints -> joint targets by inverse
  kinematics, in the same joint-space scene used for evaluation).
- :mod:`pi0cli.sim.episodes`: episode iterators yielding frames ready for a dataset writer.
"""

from __future__ import annotations

import os

#: Headless OpenGL back end used when ``MUJOCO_GL`` is unset. EGL through Mesa (llvmpipe, software) is what
#: Debian's ``libegl1`` + ``libegl-mesa0`` + ``libgl1-mesa-dri`` provide; it needs no display and no GPU.
#: ``osmesa`` works too where ``libosmesa6`` is installed; ``glfw`` needs a display.
DEFAULT_GL = "egl"


def ensure_headless_gl() -> str:
    """Choose a headless OpenGL back end for MuJoCo unless the user already did; returns the one in use.

    Must run before ``mujoco``/``dm_control`` are first imported (they read the variable at import).
    """
    backend = os.environ.setdefault("MUJOCO_GL", DEFAULT_GL)
    if backend in ("egl", "osmesa"):
        # dm_control sets this too; PyOpenGL must agree with MuJoCo on the platform.
        os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    return backend


TASKS = ("transfer_cube", "insertion")
PROMPTS = {"transfer_cube": "Transfer cube", "insertion": "Insert the peg into the socket"}


def task_name(task: str) -> str:
    """Normalise a task name: ``transfer_cube``, ``transfer-cube``, ``AlohaTransferCube-v0`` and
    ``gym_aloha/AlohaTransferCube-v0`` all mean ``transfer_cube`` (likewise for ``insertion``)."""
    key = task.split("/")[-1].lower().replace("-v0", "").replace("-", "_").replace("aloha", "").strip("_")
    key = {"transfercube": "transfer_cube", "transfer_cube": "transfer_cube", "insertion": "insertion"}.get(key)
    if key is None:
        raise ValueError(f"unknown ALOHA sim task {task!r}; known: {', '.join(TASKS)}")
    return key


__all__ = ["DEFAULT_GL", "PROMPTS", "TASKS", "ensure_headless_gl", "task_name"]
