"""Simulated Meta-World for ``pi0 record`` and ``pi0 eval``: all 50 ``-v3`` tasks, scripted experts for each.

Nothing heavy is imported here: metaworld and MuJoCo load when an episode starts.

- :mod:`pi0_embodiment_metaworld.sim.env`: one task in MuJoCo (seeded placements, the ``corner2`` camera as
  LeRobot sets it up, shadows off, rendering on demand).
- :mod:`pi0_embodiment_metaworld.sim.episodes`: closed-loop rollouts and scripted demonstrations, as frames.

:data:`SIMULATOR` is what the plugin registers (``pi0_register_simulators``). Its ``metadata["task_groups"]``
maps each task selector (``mt10``, ``mt50``, ``easy``, ``medium``, ``hard``, ``very_hard``) to its tasks, so
a front end can expand ``--tasks mt10`` without importing this plugin.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from pi0_embodiment_metaworld.tasks import GROUPS, INSTRUCTIONS, TASKS
from pi0cli.simulator import Act, Episode, Frame, OptionValue, SimOption, SimTask, Simulator

#: Headless OpenGL for MuJoCo when ``MUJOCO_GL`` is unset: Mesa's EGL (software llvmpipe; no display, no GPU).
DEFAULT_GL = "egl"


def ensure_headless_gl() -> str:
    """Choose a headless OpenGL back end unless the user did; must run before ``mujoco`` is first imported."""
    backend = os.environ.setdefault("MUJOCO_GL", DEFAULT_GL)
    if backend in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    return backend


def _rollout(task: str, seed: int, act: Act, *, max_steps: int | None = None,
             **options: OptionValue) -> Iterator[Frame]:
    from pi0_embodiment_metaworld.sim.episodes import rollout

    return rollout(task, seed, act, max_steps=max_steps, shadows=bool(options.get("shadows", False)))


def _scripted(task: str, num_episodes: int, *, start_seed: int = 0, **options: OptionValue) -> Iterator[Episode]:
    from pi0_embodiment_metaworld.sim.episodes import scripted_episodes

    return scripted_episodes(task, num_episodes, start_seed=start_seed, shadows=bool(options.get("shadows", False)))


# One option only: the image size is the embodiment's declared camera (what datasets are written with).
OPTIONS = (SimOption("shadows", False, "render shadows (the scene's default look; 3.5-4x slower on a CPU)"),)


def _aliases(task: str) -> tuple[str, ...]:
    short = task.removesuffix("-v3")
    return (short, short.replace("-", "_"), task.replace("-", "_"), f"metaworld/{task}", f"metaworld-{task}")


SIMULATOR = Simulator(
    name="metaworld",
    embodiment="metaworld",
    description="Meta-World's 50 Sawyer tasks (-v3) in MuJoCo, headless; metaworld's scripted expert per task",
    tasks=tuple(SimTask(task, INSTRUCTIONS[task], aliases=_aliases(task)) for task in TASKS),
    rollout=_rollout,
    scripted=_scripted,
    options=OPTIONS,
    default_task="reach-v3",
    rendering=f"OpenGL for MuJoCo: MUJOCO_GL={DEFAULT_GL} (Mesa: libegl1 libegl-mesa0 libgl1-mesa-dri) or osmesa",
    packages=("metaworld", "mujoco", "gymnasium"),
    video_key="image",
    metadata={"task_groups": {group: list(tasks) for group, tasks in GROUPS.items()}, "max_steps": 500,
              "camera": "corner2"},
)


__all__ = ["DEFAULT_GL", "SIMULATOR", "ensure_headless_gl"]
