"""Evaluation under simulated inference latency: smoothness by hand, sync without latency is the plain chunk
broker, the simulator keeps stepping while the policy thinks, and served RTC equals in-process RTC."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pi0cli.client.policy import BasePolicy
from pi0cli.evaluation.realtime import Execution, RealtimeError, smoothness


def test_smoothness_by_hand():
    actions = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 3.0], [1.0, 4.0]])
    # steps: 1, 0, 3, 1; switches at 1 and 3 -> jumps 1 and 3 (step 0 never counts)
    # third differences: a3 - 3a2 + 3a1 - a0 = (1-3+3-0, 3) = (1, 3); a4 - 3a3 + 3a2 - a1 = (0, 4-9) = (0, -5)
    out = smoothness(actions, [0, 1, 3])
    assert out["max_boundary_jump"] == 3.0 and out["mean_boundary_jump"] == 2.0
    assert out["mean_step"] == pytest.approx(5 / 4)
    assert out["mean_jerk"] == pytest.approx((np.sqrt(10) + 5) / 2)
    assert smoothness(actions[:1], [0]) == {"max_boundary_jump": 0.0, "mean_boundary_jump": 0.0,
                                             "mean_step": 0.0, "mean_jerk": 0.0}
    with pytest.raises(RealtimeError, match="choose one of sync, naive, ensemble, rtc"):
        Execution("async")


@pytest.fixture(scope="module")
def aloha():
    from pi0cli.plugins.manager import load_registry

    registry = load_registry({})
    return registry.embodiment("aloha_sim"), registry.simulator_for("aloha_sim")


class StatePolicy(BasePolicy):
    """A numpy policy: a 10-step chunk drifting from the observed state; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        state = np.asarray(obs["state"], np.float32)
        return {"actions": state + 0.01 * np.arange(1, 11, dtype=np.float32)[:, None]}


@pytest.mark.slow
def test_sync_without_latency_is_the_chunk_broker_and_latency_costs_sync_time(aloha):
    from pi0cli.evaluation.closed_loop import run_episode
    from pi0cli.evaluation.realtime import run_realtime_episode

    emb, sim = aloha
    plain = run_episode(sim, emb, "transfer_cube", 3, StatePolicy(), open_loop_steps=5)
    sync = run_realtime_episode(sim, emb, "transfer_cube", 3, StatePolicy(), Execution("sync"), open_loop_steps=5)
    assert sync.actions_sha256 == plain.actions_sha256 and sync.steps == plain.steps
    assert sync.control_seconds == pytest.approx(plain.steps / emb.control_hz)
    slow = StatePolicy()
    paused = run_realtime_episode(sim, emb, "transfer_cube", 3, slow, Execution("sync", 100.0), open_loop_steps=5,
                                  max_steps=50)
    assert slow.calls == 10 and paused.chunk_switches == 10
    assert paused.control_seconds == pytest.approx(50 / emb.control_hz + 10 * 0.1)  # the robot waited
    naive = run_realtime_episode(sim, emb, "transfer_cube", 3, StatePolicy(), Execution("naive", 100.0),
                                 open_loop_steps=5, max_steps=50)
    # 100 ms = 5 steps at 50 Hz: only the first request paused the robot; the rest overlapped execution
    assert naive.control_seconds == pytest.approx(50 / emb.control_hz + 0.1)
    assert naive.actions_sha256 != paused.actions_sha256


@pytest.mark.slow
def test_served_rtc_equals_in_process_rtc(aloha, tmp_path):
    from pi0cli.client.policy import WebsocketClientPolicy
    from pi0cli.evaluation.realtime import run_realtime_episode
    from pi0cli.policy import load_policy
    from pi0cli.serving.server import PolicyServer, ServerThread
    from pi0cli.testing import make_tiny_checkpoint

    emb, sim = aloha
    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt", emb)
    setting = Execution("rtc", 100.0)
    direct = run_realtime_episode(sim, emb, "transfer_cube", 7, load_policy(checkpoint, embodiment=emb), setting,
                                  open_loop_steps=5, max_steps=40)
    server = PolicyServer(load_policy(checkpoint, embodiment=emb), embodiment=emb, port=0, max_batch=1)
    with ServerThread(server) as thread:
        client = WebsocketClientPolicy("127.0.0.1", thread.port)
        served = run_realtime_episode(sim, emb, "transfer_cube", 7, client, setting, open_loop_steps=5, max_steps=40)
        client.close()
    assert served.actions_sha256 == direct.actions_sha256
    # the first chunk at step 0, then one requested every 5 steps arriving 5 later: 10, 15, ..., 35
    assert served.chunk_switches == direct.chunk_switches == 7 and served.starved_steps == 0
    naive = run_realtime_episode(sim, emb, "transfer_cube", 7, load_policy(checkpoint, embodiment=emb),
                                 Execution("naive", 100.0), open_loop_steps=5, max_steps=40)
    assert naive.actions_sha256 != direct.actions_sha256  # the RTC fields reached the model


class SleepyPolicy(StatePolicy):
    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        import time

        time.sleep(0.05)
        return super().infer(obs)


@pytest.mark.slow
def test_real_time_execution_measures_the_latency(aloha):
    from pi0cli.evaluation.realtime import run_realtime_episode

    emb, sim = aloha
    policy = SleepyPolicy()
    result = run_realtime_episode(sim, emb, "transfer_cube", 3, policy, Execution("rtc", real_time=True),
                                  open_loop_steps=5, max_steps=30)
    # Only what holds at any machine speed: a busy (shared) core slows the simulator and the worker thread
    # unevenly, so how many chunks arrive in 30 steps varies, and the last request may still be in flight
    # when the episode ends (it is then dropped, never executed).
    assert result.steps == 30 and result.chunk_switches >= 1
    assert policy.calls - result.chunk_switches in (0, 1)
    assert len(result.measured_latency_ms) == result.chunk_switches
    assert min(result.measured_latency_ms) >= 50.0  # the policy's real 50 ms, measured on the control clock
    assert result.control_seconds >= 30 / emb.control_hz  # paced to the control rate in wall-clock time
    with pytest.raises(RealtimeError, match="measures the latency"):
        Execution("rtc", 100.0, real_time=True)


def test_cli_latency_needs_an_execution_strategy(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "pi0cli", "eval", "aloha_sim", "--checkpoint", "x",
                             "--latency-ms", "100"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 2 and "need --execution" in result.stderr
    result = subprocess.run([sys.executable, "-m", "pi0cli", "eval", "aloha_sim", "--checkpoint", "x",
                             "--execution", "fast"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 1 and "choose one of sync, naive, ensemble, rtc" in result.stderr
