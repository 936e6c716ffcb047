"""Episode iterators over the simulated ALOHA: scripted demonstrations and policy rollouts, frame by frame.

A frame (:class:`pi0cli.simulator.Frame`) is a dict:

- ``observation``: the ``aloha_sim`` embodiment's observation (``sim_observation`` of the env observation:
  ``{"images": {"cam_high": (3, 224, 224) uint8}, "state": (14,) float32}``), seen *before* the action;
- ``env_observation``: the raw gym-aloha observation it came from (``pixels/top`` 480x640x3, ``agent_pos``);
- ``action``: the 14 joint targets sent at this step (robot convention, grippers 0 closed .. 1 open), float32;
- ``reward``: the task reward after the step; ``success``: reward 4 reached at this or an earlier step;
- ``index``: the step number (0-based).

Scripted episodes are simulated once without rendering; only successful ones are rendered (same seed, same
commands), so ``scripted_episodes`` spends camera time on kept episodes only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from pi0_embodiment_aloha import sim_observation
from pi0_embodiment_aloha.sim import PROMPTS, task_name
from pi0cli.simulator import Act, Episode, Frame, ScriptFailed


def replay(
    task: str,
    seed: int,
    actions: np.ndarray,
    *,
    cameras: tuple[str, ...] = ("top",),
    height: int = 480,
    width: int = 640,
    shadows: bool = True,
) -> Iterator[Frame]:
    """Replay joint commands from the seeded initial scene, rendering ``cameras``, yielding frames."""
    from pi0_embodiment_aloha.sim.env import AlohaSim

    with AlohaSim(task, cameras=cameras, height=height, width=width, shadows=shadows, max_steps=len(actions),
                  terminate_on_success=False) as env:
        obs = env.reset(seed)
        for index, action in enumerate(np.asarray(actions)):
            next_obs, reward, _, info = env.step(action)
            yield {
                "observation": sim_observation(obs),
                "env_observation": obs,
                "action": np.asarray(action, dtype=np.float32),
                "reward": float(reward),
                "success": bool(info["success"]),
                "index": index,
            }
            obs = next_obs


def scripted_episode(task: str = "transfer_cube", seed: int = 0, *, max_steps: int | None = None,
                     **render: Any) -> Iterator[Frame]:
    """Frames of the scripted demonstration for ``seed``; raises :class:`ScriptFailed` (before yielding
    anything) when the script does not succeed on it. ``render``: ``cameras``, ``height``, ``width``,
    ``shadows`` (see :class:`pi0_embodiment_aloha.sim.env.AlohaSim`)."""
    from pi0_embodiment_aloha.sim.env import MAX_STEPS
    from pi0_embodiment_aloha.sim.scripted import run_script

    actions, success, max_reward = run_script(task, seed, max_steps=max_steps or MAX_STEPS)
    if not success:
        raise ScriptFailed(f"scripted {task_name(task)} failed on seed {seed} (max reward {max_reward:g})")
    return replay(task, seed, actions, **render)


def scripted_episodes(
    task: str = "transfer_cube",
    num_episodes: int = 1,
    *,
    start_seed: int = 0,
    max_attempts: int | None = None,
    max_steps: int | None = None,
    **render: Any,
) -> Iterator[Episode]:
    """``num_episodes`` successful scripted demonstrations with seeds ``start_seed, start_seed + 1, ...``
    (failed seeds are skipped; at most ``max_attempts`` seeds are tried, default ``2 * num_episodes + 10``)."""
    from pi0_embodiment_aloha.sim.env import MAX_STEPS
    from pi0_embodiment_aloha.sim.scripted import run_script

    task = task_name(task)
    steps = max_steps or MAX_STEPS
    attempts = max_attempts if max_attempts is not None else 2 * num_episodes + 10
    kept = 0
    for seed in range(start_seed, start_seed + attempts):
        if kept >= num_episodes:
            return
        actions, success, _ = run_script(task, seed, max_steps=steps)
        if not success:
            continue
        kept += 1
        yield Episode(seed, task, PROMPTS[task], replay(task, seed, actions, **render), len(actions))
    if kept < num_episodes:
        raise ScriptFailed(f"only {kept}/{num_episodes} scripted {task} episodes succeeded in {attempts} seeds")


def rollout(
    task: str,
    seed: int,
    act: Act,
    *,
    max_steps: int | None = None,
    terminate_on_success: bool = True,
    **render: Any,
) -> Iterator[Frame]:
    """Closed-loop episode: ``act(observation) -> (14,) joint targets`` is called with the ``aloha_sim``
    observation each step (an action-chunk broker fits behind it). Frames as above; stops at success (unless
    ``terminate_on_success=False``) or after ``max_steps`` (300) steps."""
    from pi0_embodiment_aloha.sim.env import MAX_STEPS, AlohaSim

    with AlohaSim(task, max_steps=max_steps or MAX_STEPS, terminate_on_success=terminate_on_success, **render) as env:
        obs = env.reset(seed)
        index, done = 0, False
        while not done:
            observation = sim_observation(obs)
            action = np.asarray(act(observation), dtype=np.float64).reshape(-1)
            next_obs, reward, done, info = env.step(action)
            yield {
                "observation": observation,
                "env_observation": obs,
                "action": action.astype(np.float32),
                "reward": float(reward),
                "success": bool(info["success"]),
                "index": index,
            }
            obs, index = next_obs, index + 1


__all__ = ["Episode", "ScriptFailed", "replay", "rollout", "scripted_episode", "scripted_episodes"]
