"""Scripted demonstrations succeed in the joint-space scene, and episodes come out as dataset-ready frames."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gym_aloha", reason="gym-aloha is not installed (pip install gym-aloha)")

from pi0_embodiment_aloha.sim.episodes import rollout, scripted_episode, scripted_episodes
from pi0_embodiment_aloha.sim.scripted import ArmIK, pointing, run_script


def test_ik_reaches_a_reachable_pose():
    from pi0_embodiment_aloha.sim.env import AlohaSim

    with AlohaSim("transfer_cube", cameras=()) as env:
        env.reset(seed=0)
        ik = ArmIK(env.physics.model.ptr, "right")
        target = np.array([0.1, 0.5, 0.12])
        rot = pointing([0, 0, -1], [0, -1, 0])
        q = ik.solve_best(target, rot, [env.physics.data.qpos[8:14].copy()])
        pos, got = ik.forward(q)
        np.testing.assert_allclose(pos, target, atol=1e-3)
        np.testing.assert_allclose(got, rot, atol=1e-2)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_scripted_transfer_cube_succeeds(seed):
    actions, success, max_reward = run_script("transfer_cube", seed)
    assert success and max_reward == 4
    assert actions.shape == (300, 14)
    assert np.all((actions[:, [6, 13]] >= 0) & (actions[:, [6, 13]] <= 1))


@pytest.mark.slow
def test_scripted_episode_frames_replay_the_successful_run():
    # a small render keeps this fast; the replay reproduces the headless run exactly (MuJoCo is deterministic)
    frames = list(scripted_episode("transfer_cube", 4, height=48, width=64, shadows=False))
    assert len(frames) == 300
    assert [f["index"] for f in frames] == list(range(300))
    assert frames[-1]["success"] and max(f["reward"] for f in frames) == 4
    first = frames[0]
    assert set(first) >= {"observation", "action", "reward", "success"}
    assert first["observation"]["images"]["cam_high"].shape == (3, 224, 224)
    assert first["observation"]["state"].shape == (14,) and first["action"].shape == (14,)
    assert first["action"].dtype == np.float32
    # the recorded action of a step is what the next state moves towards
    np.testing.assert_allclose(frames[10]["observation"]["state"][:6], frames[9]["action"][:6], atol=0.1)


@pytest.mark.slow
def test_scripted_episodes_iterator_and_rollout():
    episodes = scripted_episodes("transfer_cube", 1, start_seed=5, height=24, width=32, shadows=False)
    episode = next(episodes)
    assert episode.seed == 5 and episode.prompt == "Transfer cube" and episode.length == 300
    assert next(episode.frames)["index"] == 0

    hold = None

    def act(observation):
        nonlocal hold
        hold = observation["state"] if hold is None else hold
        return hold

    frames = list(rollout("transfer_cube", 0, act, max_steps=5, height=24, width=32, shadows=False))
    assert len(frames) == 5 and not frames[-1]["success"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_scripted_insertion_succeeds(seed):
    actions, success, max_reward = run_script("insertion", seed)
    assert success and max_reward == 4 and actions.shape == (300, 14)
