"""The simulated ALOHA for recording demonstrations and closed-loop evaluation (``pi0 record``, ``pi0 eval``).

Nothing heavy is imported here: MuJoCo, dm_control and gym-aloha load only when a submodule is used.

- :mod:`pi0_embodiment_aloha.sim.env`: the simulated ALOHA (gym-aloha scenes, headless rendering of only the
  cameras used).
- :mod:`pi0_embodiment_aloha.sim.scripted`: scripted demonstrations (end-effector waypoints -> joint targets by
  inverse kinematics, in the same joint-space scene used for evaluation).
- :mod:`pi0_embodiment_aloha.sim.episodes`: episode iterators yielding frames ready for a dataset writer.

:data:`SIMULATOR` is what the plugin registers with pi0 (``pi0_register_simulators``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from pi0cli.simulator import Act, Episode, Frame, OptionValue, SimOption, SimTask, Simulator

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
    name = {"transfercube": "transfer_cube", "transfer_cube": "transfer_cube", "insertion": "insertion"}.get(key)
    if name is None:
        raise ValueError(f"unknown ALOHA sim task {task!r}; known: {', '.join(TASKS)}")
    return name


#: The simulator's own setting (``pi0 record/eval --sim-option shadows=true``): shadow mapping is gym-aloha's
#: look but makes CPU rendering about 3x slower; record and evaluate with the same value.
SHADOWS = SimOption("shadows", False, "render shadows (gym-aloha's look; about 3x slower on a CPU)")


def _rollout(task: str, seed: int, act: Act, *, max_steps: int | None = None,
             **options: OptionValue) -> Iterator[Frame]:
    from pi0_embodiment_aloha.sim.episodes import rollout

    return rollout(task, seed, act, max_steps=max_steps, shadows=bool(options.get("shadows", SHADOWS.default)))


def _scripted(task: str, num_episodes: int, *, start_seed: int = 0, **options: OptionValue) -> Iterator[Episode]:
    from pi0_embodiment_aloha.sim.episodes import scripted_episodes

    return scripted_episodes(task, num_episodes, start_seed=start_seed,
                             shadows=bool(options.get("shadows", SHADOWS.default)))


SIMULATOR = Simulator(
    name="gym_aloha",
    embodiment="aloha_sim",
    description="gym-aloha's MuJoCo scenes (transfer-cube, insertion), headless; scripted demonstrations by IK",
    tasks=(
        SimTask("transfer_cube", PROMPTS["transfer_cube"],
                aliases=("transfer-cube", "AlohaTransferCube-v0", "gym_aloha/AlohaTransferCube-v0")),
        SimTask("insertion", PROMPTS["insertion"], aliases=("AlohaInsertion-v0", "gym_aloha/AlohaInsertion-v0")),
    ),
    rollout=_rollout,
    scripted=_scripted,
    default_task="transfer_cube",
    rendering=f"OpenGL for MuJoCo: MUJOCO_GL={DEFAULT_GL} (Mesa: libegl1 libegl-mesa0 libgl1-mesa-dri) or osmesa",
    packages=("mujoco", "dm-control", "gym-aloha"),
    video_key="images/cam_high",
    options=(SHADOWS,),
)


__all__ = ["DEFAULT_GL", "PROMPTS", "SIMULATOR", "TASKS", "ensure_headless_gl", "task_name"]
