"""Real-time chunking through the Policy and the server: the previous chunk goes through the pipeline's own
transforms, RTC and plain requests share a batch, bad fields get one clear error, and a served RTC request
gives exactly the in-process reply."""

from __future__ import annotations

import numpy as np
import pytest
from obs_helpers import sim_obs

from pi0cli.policy import load_policy
from pi0cli.policy.rtc import RTCRequestError

H = 10  # the tiny checkpoint's horizon


@pytest.fixture(scope="module")
def policy(tiny_checkpoint, aloha_sim):
    return load_policy(tiny_checkpoint, embodiment=aloha_sim, batch_sizes=(1, 2))


def _rtc(obs, tail, delay):
    return {**obs, "prev_actions": tail, "inference_delay": np.int64(delay)}


@pytest.mark.slow
def test_prev_actions_go_through_the_pipeline_transforms(policy):
    obs = sim_obs(0)
    tail = policy.infer(obs)["actions"][3:]  # 7 unexecuted actions, robot units
    data = policy.prepare(_rtc(obs, tail, 2))
    padded = np.concatenate([tail, np.repeat(tail[-1:], 3, axis=0)])
    expected = policy.input_transform({**obs, "actions": padded})["actions"]
    np.testing.assert_array_equal(data["rtc_prev_actions"], expected)
    assert data["rtc_prev_actions"].shape == (H, 32)
    assert int(data["rtc_inference_delay"]) == 2 and int(data["rtc_execution_horizon"]) == H - 7
    # the output transforms take it back to the robot's tail: the same units as the policy's replies
    back = policy.output_transform({"state": data["state"], "actions": data["rtc_prev_actions"]})["actions"]
    np.testing.assert_allclose(back[:7], tail, atol=1e-4)
    plain = policy.prepare(obs)
    assert int(plain["rtc_execution_horizon"]) == H and not plain["rtc_prev_actions"].any()


@pytest.mark.slow
def test_rtc_and_plain_rows_share_a_batch(policy):
    a, b = sim_obs(1), sim_obs(2)
    tail = policy.infer(b)["actions"][4:]
    counter = policy._counter
    plain = policy.infer_batch([a, b])
    policy._counter = counter  # the same noise for the next call
    mixed = policy.infer_batch([a, _rtc(b, tail, 3)])
    assert mixed[0]["policy_timing"]["batch_size"] == 2
    np.testing.assert_array_equal(mixed[0]["actions"], plain[0]["actions"])  # the plain row: bit for bit
    assert np.abs(mixed[1]["actions"] - plain[1]["actions"]).max() > 1e-4  # the RTC row was guided


@pytest.mark.slow
def test_rtc_max_guidance_changes_guided_rows_only(policy, tiny_checkpoint, aloha_sim):
    """``rtc_max_guidance`` reaches the sampler: a guided request moves, a plain one stays bit for bit."""
    strong = load_policy(tiny_checkpoint, embodiment=aloha_sim, batch_sizes=(1,), rtc_max_guidance=50.0)
    obs = sim_obs(3)
    tail = strong.infer(obs)["actions"][4:]
    strong._counter = policy._counter = 7  # the same noise for both
    guided = _rtc(obs, tail, 3)
    by_default, by_strong = policy.infer(guided)["actions"], strong.infer(guided)["actions"]
    assert np.abs(by_strong - by_default).max() > 1e-4
    strong._counter = policy._counter = 7
    np.testing.assert_array_equal(strong.infer(obs)["actions"], policy.infer(obs)["actions"])


@pytest.mark.parametrize(("fields", "match"), [
    ({"inference_delay": 2}, "without 'prev_actions'"),
    ({"prev_actions": np.zeros((11, 14), np.float32)}, "1 <= L <= 10"),
    ({"prev_actions": np.zeros((10,), np.float32)}, r"\[L, action_dim\]"),
    ({"prev_actions": np.zeros((4, 14), np.float32), "inference_delay": 5}, "must lie in \\[0, 4\\]"),
    ({"prev_actions": np.zeros((4, 14), np.float32), "inference_delay": 1.5}, "whole number"),
    ({"prev_actions": np.zeros((4, 14), np.float32), "execution_horizon": 2}, "must lie in \\[6, 10\\]"),
    ({"prev_actions": np.zeros((4, 13), np.float32)}, "does not fit the robot.s actions"),
])
def test_bad_rtc_fields_are_refused_with_one_clear_error(policy, fields, match):
    with pytest.raises(RTCRequestError, match=match):
        policy.prepare({**sim_obs(0), **fields})


@pytest.mark.slow
def test_served_rtc_equals_in_process_rtc(policy, aloha_sim):
    from pi0cli.client.policy import WebsocketClientPolicy
    from pi0cli.serving.server import PolicyServer, ServerThread

    obs = sim_obs(3)
    tail = policy.infer(obs)["actions"][5:]
    counter = policy._counter
    server = PolicyServer(policy, embodiment=aloha_sim, port=0, max_batch=1)
    with ServerThread(server) as thread:
        client = WebsocketClientPolicy("127.0.0.1", thread.port)
        served = [client.infer(obs)["actions"], client.infer(_rtc(obs, tail, 2))["actions"]]
        client.close()
    policy._counter = counter
    direct = [policy.infer(obs)["actions"], policy.infer(_rtc(obs, tail, 2))["actions"]]
    np.testing.assert_array_equal(served[0], direct[0])
    np.testing.assert_array_equal(served[1], direct[1])
    assert np.abs(served[1] - served[0]).max() > 1e-4
