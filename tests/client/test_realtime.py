"""The asynchronous chunk runtime under a simulated clock: it switches chunks at the right tick, sends the
unexecuted tail with the measured delay, and each strategy executes what it promises."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pytest

from pi0cli.client import BasePolicy, Environment, Runtime
from pi0cli.client.clock import SimulatedClock
from pi0cli.client.realtime import RealtimeAgent, RealtimeError, SimulatedLatency, ThreadedRequester

H, HZ, S = 16, 50.0, 8  # chunk length, control rate, execution horizon


class ChunkPolicy(BasePolicy):
    """Chunk n (0-based) is ``100 * n + i`` at index i in every dim; records what each request carried."""

    def __init__(self, sleep_s: float = 0.0):
        self.requests: list[dict[str, Any]] = []
        self.sleep_s = sleep_s

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        n = len(self.requests)
        self.requests.append(dict(obs))
        actions = (100.0 * n + np.arange(H, dtype=np.float32))[:, None].repeat(2, axis=1)
        return {"actions": actions, "policy_timing": {"infer_ms": 1.0}}


class Recorder(Environment):
    def __init__(self, clock: SimulatedClock):
        self.clock = clock
        self.actions: list[float] = []
        self.times: list[float] = []

    def get_observation(self) -> dict[str, Any]:
        return {"state": np.array([len(self.actions)], np.float32)}

    def apply_action(self, action: dict[str, Any]) -> None:
        self.actions.append(float(action["actions"][0]))
        self.times.append(self.clock.now())


def _run(strategy: str, latency_s: float, steps: int = 30, **kwargs: Any):
    clock = SimulatedClock()
    policy = ChunkPolicy()
    agent = RealtimeAgent(SimulatedLatency(policy, clock, latency_s), strategy=strategy, execution_horizon=S,
                          control_hz=HZ, **kwargs)
    env = Recorder(clock)
    Runtime(env, agent, max_hz=HZ, max_episode_steps=steps, clock=clock).run_episode()
    return agent, policy, env


def test_rtc_switches_at_the_measured_delay_and_sends_the_tail():
    # 100 ms at 50 Hz = 5 ticks. Tick 0 waits for the first chunk (nothing to execute yet); chunk 0 is
    # requested again at its index 8 (tick 8) and the reply arrives 5 ticks later, entering at index 5.
    agent, policy, env = _run("rtc", 0.1)
    assert [(s.tick, s.index) for s in agent.switches] == [(0, 0), (13, 5), (21, 5), (29, 5)]
    expected = list(range(13)) + [105 + i for i in range(8)] + [205 + i for i in range(8)] + [305]
    assert env.actions == expected
    first, second = policy.requests[0], policy.requests[1]
    assert "prev_actions" not in first  # nothing to continue yet: a plain request
    np.testing.assert_array_equal(second["prev_actions"][:, 0], np.arange(8, 16))  # chunk 0's unexecuted tail
    assert second["inference_delay"] == 5 and second["execution_horizon"] == H - 8
    assert [s.inference_delay for s in agent.switches[1:]] == [5, 5, 5]
    assert second["state"][0] == 8  # the observation of the request's tick
    assert agent.starved_ticks == 0


def test_naive_switches_like_rtc_without_the_rtc_fields():
    agent, policy, env = _run("naive", 0.1)
    assert [(s.tick, s.index) for s in agent.switches] == [(0, 0), (13, 5), (21, 5), (29, 5)]
    assert not any("prev_actions" in r or "inference_delay" in r for r in policy.requests)


def test_sync_waits_and_the_clock_pays_for_it():
    agent, policy, env = _run("sync", 0.1, steps=17)
    assert [(s.tick, s.index) for s in agent.switches] == [(0, 0), (8, 0), (16, 0)]
    assert env.actions == list(range(8)) + [100 + i for i in range(8)] + [200]
    # three 100 ms pauses plus 16 periods of 20 ms
    assert env.times[-1] == pytest.approx(3 * 0.1 + 16 * 0.02)


def test_ensemble_averages_the_overlap():
    agent, _, env = _run("ensemble", 0.1, steps=16, ensemble_decay=0.5)
    w = np.exp(-0.5 * np.arange(2))
    # tick 13: chunk 0 at index 13 (the oldest, weight 1) with chunk 1 at index 5 (weight e^-0.5)
    assert env.actions[13] == pytest.approx((w[0] * 13 + w[1] * 105) / w.sum(), rel=1e-6)
    assert env.actions[:13] == list(range(13))


def test_zero_latency_switches_in_the_tick_it_asks():
    agent, policy, env = _run("rtc", 0.0, steps=17)
    assert [(s.tick, s.index) for s in agent.switches] == [(0, 0), (8, 0), (16, 0)]
    assert policy.requests[1]["inference_delay"] == 0
    assert env.actions == list(range(8)) + [100 + i for i in range(8)] + [200]


def test_a_slow_reply_starves_and_holds_the_last_action():
    # 200 ms = 10 ticks but only 8 actions are left after the request at index 8
    agent, _, env = _run("naive", 0.2, steps=20)
    assert agent.switches[1].tick == 18 and agent.switches[1].index == 10
    assert env.actions[16:18] == [15, 15] and agent.starved_ticks == 2
    assert env.actions[18] == 110


def test_delay_estimate_is_the_max_of_recent_latencies():
    agent = RealtimeAgent(SimulatedLatency(ChunkPolicy(), SimulatedClock(), 0.0), strategy="rtc",
                          execution_horizon=S, control_hz=HZ, latency_window=2)
    assert agent.estimated_delay() == 0
    agent.latencies_s += [0.05, 0.031, 0.01]
    assert agent.estimated_delay() == math.ceil(0.031 * HZ)  # the oldest fell out of the window
    with pytest.raises(RealtimeError, match="strategy"):
        RealtimeAgent(SimulatedLatency(ChunkPolicy(), SimulatedClock(), 0.0), strategy="fast",
                      execution_horizon=S, control_hz=HZ)


def test_threaded_requester_keeps_acting_while_the_policy_thinks():
    policy = ChunkPolicy(sleep_s=0.06)
    requester = ThreadedRequester(policy)
    agent = RealtimeAgent(requester, strategy="rtc", execution_horizon=S, control_hz=HZ)
    env = Recorder(SimulatedClock())
    try:
        Runtime(env, agent, max_hz=HZ, max_episode_steps=20).run_episode()
    finally:
        requester.close()
    assert agent.latencies_s[0] >= 0.06
    switch = agent.switches[1]
    assert switch.index >= math.ceil(0.06 * HZ) - 1  # the loop kept ticking for the whole round trip
    assert env.actions[8 : switch.tick] == list(range(8, switch.tick))  # chunk 0 executed meanwhile
    assert policy.requests[1]["inference_delay"] == math.ceil(agent.latencies_s[0] * HZ - 1e-6)
