"""The simulated ALOHA: seeding, the step API, headless rendering of only the needed camera, gym-aloha parity."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gym_aloha", reason="gym-aloha is not installed (pip install gym-aloha)")

from pi0_embodiment_aloha.sim import PROMPTS, SIMULATOR, task_name
from pi0_embodiment_aloha.sim.env import MAX_STEPS, AlohaSim, make_env, sample_object_poses


def test_importing_the_package_is_light():
    import subprocess
    import sys

    code = ("import sys, pi0_embodiment_aloha.sim, pi0cli.cli, pi0cli.simulator, pi0cli.evaluation.closed_loop; "
            "print(any(m in sys.modules for m in ('mujoco', 'dm_control', 'gym_aloha')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_headless_gl_default(monkeypatch):
    from pi0_embodiment_aloha.sim import ensure_headless_gl

    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.delenv("PYOPENGL_PLATFORM", raising=False)
    assert ensure_headless_gl() == "egl"
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    assert ensure_headless_gl() == "osmesa"  # a user's choice is kept


def test_task_names():
    for alias in ("transfer_cube", "transfer-cube", "AlohaTransferCube-v0", "gym_aloha/AlohaTransferCube-v0"):
        assert task_name(alias) == "transfer_cube"
    assert task_name("gym_aloha/AlohaInsertion-v0") == "insertion"
    assert PROMPTS["transfer_cube"] == "Transfer cube"
    with pytest.raises(ValueError, match="unknown"):
        task_name("stack_blocks")
    # The simulator pi0 sees accepts the same spellings and lists its own tasks otherwise.
    for alias in ("transfer-cube", "AlohaTransferCube-v0", "gym_aloha/AlohaTransferCube-v0"):
        assert SIMULATOR.task(alias).name == "transfer_cube"
    assert SIMULATOR.task(None).prompt == "Transfer cube"
    assert SIMULATOR.task("gym_aloha/AlohaInsertion-v0").prompt == PROMPTS["insertion"]
    with pytest.raises(Exception, match="known: insertion, transfer_cube"):
        SIMULATOR.task("stack_blocks")


def test_seeded_reset_is_reproducible_and_matches_gym_aloha_sampler():
    from gym_aloha.utils import sample_box_pose

    with make_env("transfer_cube", cameras=()) as env:
        obs = env.reset(seed=7)
        assert obs["pixels"] == {} and obs["agent_pos"].shape == (14,)
        pose = env.object_pose
        np.testing.assert_allclose(pose, sample_box_pose(7))
        env.reset(seed=8)
        assert not np.allclose(env.object_pose, pose)
        env.reset(seed=7)
        np.testing.assert_allclose(env.object_pose, pose)
    assert sample_object_poses("insertion", 3).shape == (14,)


def test_step_api_and_episode_limit():
    with AlohaSim("transfer_cube", cameras=(), max_steps=5) as env:
        obs = env.reset(seed=0)
        hold = obs["agent_pos"].copy()
        for i in range(5):
            obs, reward, done, info = env.step(hold)
            assert reward == 0.0 and not info["success"] and info["step"] == i + 1
        assert done and info["truncated"]
        with pytest.raises(ValueError, match="14"):
            env.step(np.zeros(7))
        with pytest.raises(ValueError, match="NaN"):
            env.step(np.full(14, np.nan))
    assert MAX_STEPS == 300


def test_diverging_physics_ends_the_episode_as_a_failure(monkeypatch, caplog):
    """A policy's joint targets that make MuJoCo diverge end that episode (a failure), not the evaluation."""
    from dm_control.rl.control import PhysicsError

    with AlohaSim("transfer_cube", cameras=(), max_steps=50) as env:
        first = env.reset(seed=0)
        obs, _, done, info = env.step(first["agent_pos"])
        assert not done and not env.unstable

        def diverge(action):
            raise PhysicsError("Physics state is invalid. Warning(s) raised: mjWARN_BADQACC")

        monkeypatch.setattr(env._env, "step", diverge)
        with caplog.at_level("WARNING"):
            after, reward, done, info = env.step(first["agent_pos"])
        assert done and reward == 0.0 and not info["success"] and info["unstable"] and env.unstable
        assert info["step"] == 2 and np.array_equal(after["agent_pos"], obs["agent_pos"])
        assert "seed 0: the simulation diverged at step 2" in caplog.text
        monkeypatch.undo()
        env.reset(seed=0)
        assert not env.unstable


def test_insertion_env_steps():
    with AlohaSim("insertion", cameras=()) as env:
        obs = env.reset(seed=1)
        obs, reward, done, _ = env.step(obs["agent_pos"])
        assert env.object_pose.shape == (14,) and reward == 0.0 and not done


@pytest.mark.slow
def test_renders_only_the_top_camera_headless_and_sim_observation_applies():
    from pi0_embodiment_aloha import ALOHA_SIM, sim_observation

    with AlohaSim("transfer_cube", cameras=("top",)) as env:
        obs = env.reset(seed=0)
        top = obs["pixels"]["top"]
        assert list(obs["pixels"]) == ["top"]
        assert top.shape == (480, 640, 3) and top.dtype == np.uint8
        assert top.any() and top.std() > 5  # not blank: the scene rendered
        # the red cube is visible from the top camera
        red = (top[..., 0] > 150) & (top[..., 1] < 60) & (top[..., 2] < 60)
        assert red.sum() > 50
        sim_obs = sim_observation(obs)
        assert sim_obs["images"]["cam_high"].shape == (3, 224, 224)
        assert sim_obs["images"]["cam_high"].any()
        ALOHA_SIM.validate_observation(sim_obs)


@pytest.mark.slow
def test_same_physics_as_gym_aloha():
    import gym_aloha  # noqa: F401  (registers the envs)
    import gymnasium as gym

    theirs = gym.make("gym_aloha/AlohaTransferCube-v0", obs_type="pixels_agent_pos")
    ours = AlohaSim("transfer_cube", cameras=("top",))
    try:
        a, _ = theirs.reset(seed=5)
        b = ours.reset(seed=5)
        np.testing.assert_array_equal(a["pixels"]["top"], b["pixels"]["top"])
        action = b["agent_pos"] + np.r_[0.1, 0, 0, 0, 0, 0, 0.5, -0.1, 0, 0, 0, 0, 0, 0.5]
        for _ in range(3):
            a, ra, *_ = theirs.step(action)
            b, rb, *_ = ours.step(action)
        np.testing.assert_allclose(a["agent_pos"], b["agent_pos"], atol=1e-9)
        assert ra == rb
    finally:
        theirs.close()
        ours.close()
