"""Meta-World episodes as frames (:class:`pi0cli.simulator.Frame`): closed-loop rollouts and scripted experts.

The ``metaworld`` observation is ``{"image": uint8 (224, 224, 3), "state": float32 (4,), "prompt": str}``:
the flipped ``corner2`` image, hand xyz and gripper opening (the first 4 values of the environment's 39),
and the task's instruction. ``env_observation`` holds the 39-D vector and the scene's placement vector.

Rendering is the cost (40-100 ms a frame on 2 busy cores, against 0.6-1.2 ms a physics step), so a frame is rendered
only when something reads its image: a rollout's observation renders the state it was taken in on first
access (a chunk-executing policy reads one observation per chunk), and scripted demonstrations are
simulated without a camera first and rendered only when they succeeded.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from pi0_embodiment_metaworld.tasks import INSTRUCTIONS, policy_class_name, task_name
from pi0cli.simulator import Act, Episode, Frame, ScriptFailed, SimulatorError

_UNRENDERED = object()


class LazyObservation(dict):
    """A plain ``dict`` observation whose ``image`` is rendered on first read (then kept).

    Every read path (``[]``, ``get``, ``items``, ``values``, copying, ``{**obs}``) yields the rendered image,
    so code that treats it as a ``dict`` cannot tell the difference."""

    def __init__(self, render: Callable[[], np.ndarray], **items: Any):
        super().__init__(image=_UNRENDERED, **items)
        self._render = render

    @property
    def rendered(self) -> bool:
        return dict.__getitem__(self, "image") is not _UNRENDERED

    def __getitem__(self, key: str) -> Any:
        value = dict.__getitem__(self, key)
        if value is _UNRENDERED:
            value = self._render()
            dict.__setitem__(self, key, value)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def __iter__(self) -> Iterator[str]:
        # Defining __iter__ makes CPython's dict merge ({**obs}, dict(obs), update) go through __getitem__.
        return dict.__iter__(self)

    def items(self) -> Any:
        return [(key, self[key]) for key in dict.keys(self)]

    def values(self) -> Any:
        return [self[key] for key in dict.keys(self)]

    def copy(self) -> dict[str, Any]:
        return dict(self.items())

    def __reduce__(self) -> Any:  # copy/deepcopy/pickle: a plain dict with the image rendered
        return (dict, (self.items(),))

    def __eq__(self, other: object) -> bool:
        return dict(self.items()) == other


    def __repr__(self) -> str:
        return repr(dict(self.items()))


def state_of(env_observation: np.ndarray) -> np.ndarray:
    """The ``metaworld`` state: hand xyz and gripper opening (0 closed .. 1 open)."""
    return np.asarray(env_observation[:4], dtype=np.float32)


def rollout(task: str, seed: int, act: Act, *, max_steps: int | None = None, shadows: bool = False,
            image_size: int | None = None) -> Iterator[Frame]:
    """A closed-loop episode of ``task`` in the scene of ``seed``: ``act(observation) -> (4,)`` every step;
    ends at success or after ``max_steps`` (500) steps."""
    from pi0_embodiment_metaworld.sim.env import IMAGE_SIZE, MAX_STEPS, MetaWorldSim

    task = task_name(task)
    with MetaWorldSim(task, shadows=shadows, max_steps=max_steps or MAX_STEPS,
                      image_size=image_size or IMAGE_SIZE) as sim:
        env_obs = sim.reset(seed)
        index, done = 0, False
        while not done:
            observation = LazyObservation(sim.snapshot().image, state=state_of(env_obs), prompt=INSTRUCTIONS[task])
            action = np.asarray(act(observation), dtype=np.float32).reshape(-1)
            if action.shape != (4,):
                raise SimulatorError(f"metaworld takes 4 action values (xyz delta, gripper), got {action.shape[0]}")
            next_obs, reward, success, done = sim.step(action)
            yield {"observation": observation, "env_observation": {"state": env_obs, "placement": sim.rand_vec},
                   "action": np.clip(action, -1.0, 1.0), "reward": reward, "success": success, "index": index}
            env_obs, index = next_obs, index + 1


def expert(task: str) -> Any:
    """metaworld's scripted policy for ``task`` (``get_action(obs39) -> (4,)``)."""
    import metaworld.policies

    name = policy_class_name(task)
    cls = getattr(metaworld.policies, name, None)
    if cls is None:
        raise SimulatorError(f"metaworld {_version()} has no scripted policy {name} for {task}; install "
                             "metaworld==3.0.0")
    return cls()


def _version() -> str:
    from importlib.metadata import version

    return version("metaworld")


def run_script(task: str, seed: int, *, max_steps: int | None = None) -> tuple[np.ndarray, bool]:
    """The scripted expert on the scene of ``seed``, without rendering: ``(actions (T, 4), success)``;
    stops at success."""
    from pi0_embodiment_metaworld.sim.env import MAX_STEPS, MetaWorldSim

    policy = expert(task)
    actions = []
    with MetaWorldSim(task, max_steps=max_steps or MAX_STEPS) as sim, warnings.catch_warnings():
        # Some experts' gains exceed 1 and metaworld says so at every step; the clip below is the answer.
        warnings.filterwarnings("ignore", "Constant", UserWarning)
        obs, done = sim.reset(seed), False
        while not done:
            action = np.clip(np.asarray(policy.get_action(obs), dtype=np.float32), -1.0, 1.0)
            actions.append(action)
            obs, _, _, done = sim.step(action)
        return np.asarray(actions, dtype=np.float32).reshape(-1, 4), sim.success


def replay(task: str, seed: int, actions: np.ndarray, *, shadows: bool = False,
           image_size: int | None = None) -> Iterator[Frame]:
    """Frames of ``actions`` replayed from the scene of ``seed``, every frame rendered; raises
    :class:`SimulatorError` if the replay does not end where the recording did (the physics is deterministic,
    so it would mean a changed MuJoCo or metaworld)."""
    from pi0_embodiment_metaworld.sim.env import IMAGE_SIZE, MetaWorldSim

    task = task_name(task)
    with MetaWorldSim(task, shadows=shadows, image_size=image_size or IMAGE_SIZE) as sim:
        env_obs = sim.reset(seed)
        success = False
        for index, action in enumerate(actions):
            observation = {"image": sim.render(), "state": state_of(env_obs), "prompt": INSTRUCTIONS[task]}
            next_obs, reward, success, _ = sim.step(action)
            yield {"observation": observation, "env_observation": {"state": env_obs, "placement": sim.rand_vec},
                   "action": np.asarray(action, dtype=np.float32), "reward": reward, "success": success,
                   "index": index}
            env_obs = next_obs
        if not success:
            raise SimulatorError(f"replaying the scripted {task} episode of seed {seed} did not succeed again; "
                                 "the simulation is not deterministic here (check the mujoco version)")


def scripted_episodes(task: str, num_episodes: int, *, start_seed: int = 0, shadows: bool = False,
                      max_attempts: int | None = None, image_size: int | None = None) -> Iterator[Episode]:
    """``num_episodes`` successful expert demonstrations of ``task`` on seeds ``start_seed, start_seed + 1, ...``:
    a seed whose episode fails is skipped (never recorded). At most ``max_attempts`` seeds are tried (default
    ``2 * num_episodes + 10``); :class:`ScriptFailed` says how many succeeded when that is not enough."""
    task = task_name(task)
    attempts = max_attempts if max_attempts is not None else 2 * num_episodes + 10
    kept = 0
    for seed in range(start_seed, start_seed + attempts):
        if kept >= num_episodes:
            return
        actions, success = run_script(task, seed)
        if not success:
            continue
        kept += 1
        frames = replay(task, seed, actions, shadows=shadows, image_size=image_size)
        yield Episode(seed, task, INSTRUCTIONS[task], frames, len(actions))
    if kept < num_episodes:
        raise ScriptFailed(f"only {kept}/{num_episodes} scripted {task} episodes succeeded in {attempts} seeds "
                           f"({start_seed}-{start_seed + attempts - 1})")


__all__ = ["LazyObservation", "expert", "replay", "rollout", "run_script", "scripted_episodes", "state_of"]
