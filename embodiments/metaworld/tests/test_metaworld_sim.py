"""The simulated Meta-World against its conventions: state and action meaning, the image flip (LeRobot's), how the
image moves when the hand does, seeded placements, rendering only what is read, and the scripted experts."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("metaworld", reason="metaworld is not installed (pip install -e embodiments/metaworld)")

from pi0_embodiment_metaworld import METAWORLD  # noqa: E402
from pi0_embodiment_metaworld.sim import SIMULATOR  # noqa: E402
from pi0_embodiment_metaworld.sim.env import CAMERA, MetaWorldSim, flip_image  # noqa: E402
from pi0_embodiment_metaworld.sim.episodes import rollout, run_script, scripted_episodes  # noqa: E402
from pi0_embodiment_metaworld.tasks import INSTRUCTIONS  # noqa: E402

from pi0cli.simulator import checked  # noqa: E402


def _push(sim: MetaWorldSim, action: list[float], steps: int) -> np.ndarray:
    obs: np.ndarray = np.zeros(39)
    for _ in range(steps):
        obs, *_ = sim.step(np.asarray(action))
    return obs


def _hand_pixel(sim: MetaWorldSim, point: np.ndarray) -> np.ndarray:
    """(row, col) of a world point in the *observation* image: pinhole projection through corner2, then the
    half turn of the flip."""
    import mujoco

    model, data = sim.model, sim.env.data
    cam = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, CAMERA)
    local = data.cam_xmat[cam].reshape(3, 3).T @ (point - data.cam_xpos[cam])
    focal = (sim.image_size / 2) / np.tan(np.radians(model.cam_fovy[cam]) / 2)
    centre = sim.image_size / 2
    raw = np.array([centre - focal * local[1] / -local[2], centre + focal * local[0] / -local[2]])
    return sim.image_size - 1 - raw


def _track(before: np.ndarray, after: np.ndarray, at: np.ndarray, half: int = 14, search: int = 24) -> np.ndarray:
    """Where the patch of ``before`` around ``at`` went in ``after`` (best mean squared difference)."""
    r, c = (int(v) for v in at)
    patch = before[r - half:r + half, c - half:c + half].astype(np.float32)
    best, where = np.inf, (0, 0)
    for dr in range(-search, search + 1):
        for dc in range(-search, search + 1):
            candidate = after[r + dr - half:r + dr + half, c + dc - half:c + dc + half].astype(np.float32)
            if candidate.shape == patch.shape and (err := float(((candidate - patch) ** 2).mean())) < best:
                best, where = err, (dr, dc)
    return np.array(where)


def test_state_is_hand_position_and_gripper_opening():
    with MetaWorldSim("reach-v3") as sim:
        obs = sim.reset(0)
        np.testing.assert_allclose(obs[:3], sim.env.data.body("hand").xpos, atol=1e-6)  # the hand body
        assert obs[3] == pytest.approx(1.0, abs=0.05)  # starts open
        closed = _push(sim, [0, 0, 0, 1], 15)[3]
        assert closed < 0.8  # effort +1 closes
        assert _push(sim, [0, 0, 0, -1], 40)[3] > closed + 0.05  # effort -1 opens


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_action_moves_the_hand_along_its_axis(axis):
    with MetaWorldSim("reach-v3") as sim:
        start = sim.reset(0)[:3]
        action = [0.0, 0.0, 0.0, 0.0]
        action[axis] = 1.0
        moved = _push(sim, action, 10)[:3] - start
        assert moved[axis] > 0.03  # about 1 cm a step at full scale, less while accelerating
        assert np.all(np.abs(np.delete(moved, axis)) < 0.01)


def test_image_is_lerobots_flip_of_corner2():
    # LeRobot renders corner2 with gymnasium's MuJoCo renderer and flips both axes: the same pixels here.
    from gymnasium.envs.mujoco.mujoco_rendering import MujocoRenderer

    with MetaWorldSim("drawer-open-v3") as sim:
        sim.reset(3)
        image = sim.render()
        reference = MujocoRenderer(sim.model, sim.env.data, width=sim.image_size, height=sim.image_size,
                                   camera_name=CAMERA)
        try:
            np.testing.assert_array_equal(image, np.flip(reference.render("rgb_array"), (0, 1)))
        finally:
            reference.close()
        assert image.shape == (224, 224, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(flip_image(flip_image(image)), image)


@pytest.mark.parametrize(("axis", "rows", "cols"), [(2, -1, 0), (0, 1, 1)])
def test_image_content_moves_with_the_hand(axis, rows, cols):
    # After the flip the picture is upright: lifting the hand (+z) moves it up the image; +x (towards the
    # camera, which looks from the +x side) moves it down and to the right.
    with MetaWorldSim("reach-v3") as sim:
        start = sim.reset(0)
        before, at = sim.render(), _hand_pixel(sim, start[:3])
        action = [0.0, 0.0, 0.0, 0.0]
        action[axis] = 1.0
        _push(sim, action, 15)
        moved = _track(before, sim.render(), at)
    if rows:
        assert np.sign(moved[0]) == rows and abs(moved[0]) >= 6, moved
    if cols:
        assert np.sign(moved[1]) == cols and abs(moved[1]) >= 6, moved


def test_shadows_are_off_unless_asked():
    with MetaWorldSim("reach-v3") as sim:
        assert not sim.model.light_castshadow.any()
    with MetaWorldSim("reach-v3", shadows=True) as sim:
        assert sim.model.light_castshadow.any()


def test_placements_are_seeded_and_eval_seeds_are_unseen():
    with MetaWorldSim("push-v3") as sim:
        first = sim.reset(5)
        again = sim.reset(5)
        np.testing.assert_array_equal(first, again)  # same seed, same scene
        recorded = {tuple(sim.reset(s)[4:7].round(4)) + tuple(sim.reset(s)[36:39].round(4)) for s in range(10)}
        evaluated = {tuple(sim.reset(s)[4:7].round(4)) + tuple(sim.reset(s)[36:39].round(4))
                     for s in range(1000, 1010)}
    assert len(recorded) == 10 and len(evaluated) == 10 and not recorded & evaluated


def test_rollout_renders_only_observations_that_are_read():
    reads: list[Any] = []

    def act(obs):
        if len(reads) % 5 == 0:  # a chunk policy: looks every 5th step
            assert obs["image"].shape == (224, 224, 3)
        reads.append(obs)
        return np.array([0.0, 0.0, 0.5, 0.0])

    frames = list(checked(rollout("reach-v3", 0, act, max_steps=12), SIMULATOR, METAWORLD))
    assert len(frames) == 12 and [f["index"] for f in frames] == list(range(12))
    assert [o.rendered for o in reads] == [i % 5 == 0 for i in range(12)]
    assert frames[0]["observation"]["prompt"] == INSTRUCTIONS["reach-v3"]
    # A late read renders the state the observation was taken in, not the current one.
    with MetaWorldSim("reach-v3") as sim:
        sim.reset(0)
        for action in [f["action"] for f in frames[:7]]:
            sim.step(action)
        np.testing.assert_array_equal(frames[7]["observation"]["image"], sim.render())
        np.testing.assert_array_equal(frames[7]["observation"]["state"], sim.env._get_obs()[:4].astype(np.float32))


def test_rollout_stops_at_success():
    # The expert's actions, replayed open loop through a rollout of the same scene, end it at the same step.
    actions, success = run_script("reach-v3", 2)
    steps = iter(actions)
    frames = list(rollout("reach-v3", 2, lambda obs: next(steps)))
    assert success and len(frames) == len(actions) < 500
    assert frames[-1]["success"] and not any(f["success"] for f in frames[:-1])


@pytest.mark.parametrize("task", ["reach-v3", "push-v3", "drawer-open-v3", "window-close-v3"])
def test_scripted_expert_succeeds(task):
    results = [run_script(task, seed) for seed in range(3)]
    assert all(success for _, success in results), [len(a) for a, _ in results]
    assert all(len(actions) < 200 and np.abs(actions).max() <= 1.0 for actions, _ in results)


def test_scripted_episodes_skip_failed_seeds():
    # peg-insert-side's expert fails on seed 7 (and 17, 21: 22 of its first 25 seeds succeed): never recorded.
    assert not run_script("peg-insert-side-v3", 7)[1]
    episode = next(scripted_episodes("peg-insert-side-v3", 1, start_seed=7))
    assert (episode.seed, episode.task) == (8, "peg-insert-side-v3")
    assert episode.prompt == INSTRUCTIONS["peg-insert-side-v3"]


@pytest.mark.slow
def test_scripted_episode_replays_exactly_with_every_frame_rendered():
    episode = next(scripted_episodes("reach-v3", 1, start_seed=3))
    frames = list(checked(episode.frames, SIMULATOR, METAWORLD))
    assert len(frames) == episode.length and frames[-1]["success"] and not frames[-2]["success"]
    assert all(type(f["observation"]) is dict for f in frames)
    images = [f["observation"]["image"] for f in frames]
    assert all(isinstance(image, np.ndarray) and image.shape == (224, 224, 3) for image in images)


def test_doctor_check_renders_a_scene():
    from pi0_embodiment_metaworld.doctor import check_rendering

    (row,) = check_rendering()
    assert row.status == "ok" and "ms a frame" in row.detail, row


def test_every_task_resets_to_its_seeded_scene():
    # A frozen placement made reach-v3 (and other tasks that redraw) loop forever on some seeds (reach: 7).
    from pi0_embodiment_metaworld.tasks import TASKS

    for task in TASKS:
        with MetaWorldSim(task) as sim:
            first, other, again = sim.reset(7), sim.reset(8), sim.reset(7)
        np.testing.assert_array_equal(first, again, err_msg=task)
        assert not np.array_equal(first, other), task
