"""Closed-loop episodes with inference latency: the simulator keeps stepping while the policy "thinks".

The policy's reply to a request made at control step ``k`` is released ``latency_ms`` later on a simulated
clock (:class:`~pi0cli.client.realtime.SimulatedLatency`), so a run is deterministic and independent of how
fast this machine computes; :class:`~pi0cli.client.realtime.RealtimeAgent` decides what the robot does
meanwhile (``sync`` pauses the simulator, ``naive``, ``ensemble`` and ``rtc`` keep executing). Each episode
adds smoothness to the usual result: the largest and mean action jump ``||a_k - a_{k-1}||`` at the steps a
new chunk took over, the mean step ``||a_k - a_{k-1}||`` over the episode for scale, and the mean jerk
``||a_{k+3} - 3 a_{k+2} + 3 a_{k+1} - a_k||`` (robot units per step^3), plus the episode's simulated
duration on the control loop's clock (sync's pauses included). With ``real_time`` the latency is real
instead: the policy (in-process or a live ``pi0 serve``) runs on a worker thread while the simulator is paced
to the control rate in wall-clock time.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pi0cli.client.clock import Clock, MonotonicClock, SimulatedClock
from pi0cli.client.realtime import (
    STRATEGIES,
    RealtimeAgent,
    RealtimeError,
    Requester,
    SimulatedLatency,
    ThreadedRequester,
)
from pi0cli.evaluation.episode import EpisodeResult, play

if TYPE_CHECKING:
    from pi0cli.client.policy import BasePolicy
    from pi0cli.embodiment import Embodiment
    from pi0cli.simulator import OptionValue, Simulator


@dataclasses.dataclass(frozen=True)
class Execution:
    """How chunks are executed: a strategy of :data:`~pi0cli.client.realtime.STRATEGIES`, the simulated
    inference latency, and the execution horizon (``None``: the evaluation's open-loop steps). ``real_time``:
    no simulated latency; the policy runs on a worker thread while the simulator steps at the control rate in
    wall-clock time, so the delay is whatever the real round trip takes (not deterministic)."""

    strategy: str
    latency_ms: float = 0.0
    execution_horizon: int | None = None
    real_time: bool = False

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise RealtimeError(f"unknown execution strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if not self.latency_ms >= 0:
            raise RealtimeError(f"--latency-ms must not be negative, got {self.latency_ms}")
        if self.real_time and self.latency_ms:
            raise RealtimeError("real-time execution measures the latency; do not also simulate one (--latency-ms)")
        if self.execution_horizon is not None and self.execution_horizon < 1:
            raise RealtimeError(f"the execution horizon must be at least 1, got {self.execution_horizon}")


@dataclasses.dataclass(frozen=True)
class RealtimeEpisodeResult(EpisodeResult):
    strategy: str
    latency_ms: float  # simulated (0 with real_time: see the measured ones)
    measured_latency_ms: list[float]  # per chunk, on the control loop's clock
    max_boundary_jump: float
    mean_boundary_jump: float
    mean_step: float
    mean_jerk: float
    chunk_switches: int
    starved_steps: int
    control_seconds: float


def smoothness(actions: np.ndarray, switch_steps: Sequence[int]) -> dict[str, float]:
    """Boundary jumps at ``switch_steps`` (the first step has none), mean step and mean jerk of ``actions [T, D]``."""
    actions = np.asarray(actions, dtype=np.float64)
    steps = np.linalg.norm(np.diff(actions, axis=0), axis=-1) if len(actions) > 1 else np.zeros(0)
    jumps = [float(steps[k - 1]) for k in switch_steps if 0 < k < len(actions)]
    jerk = np.linalg.norm(np.diff(actions, n=3, axis=0), axis=-1) if len(actions) > 3 else np.zeros(0)
    return {
        "max_boundary_jump": max(jumps, default=0.0),
        "mean_boundary_jump": float(np.mean(jumps)) if jumps else 0.0,
        "mean_step": float(steps.mean()) if steps.size else 0.0,
        "mean_jerk": float(jerk.mean()) if jerk.size else 0.0,
    }


def run_realtime_episode(simulator: Simulator, embodiment: Embodiment, task: str, seed: int, policy: BasePolicy,
                         execution: Execution, *, open_loop_steps: int, video: Path | None = None,
                         sim_options: Mapping[str, OptionValue] | None = None,
                         max_steps: int | None = None) -> RealtimeEpisodeResult:
    """One closed-loop episode at the embodiment's control rate with ``execution``'s strategy and latency."""
    period = 1.0 / embodiment.control_hz
    simulated = SimulatedClock()
    clock: Clock = MonotonicClock() if execution.real_time else simulated
    threaded = ThreadedRequester(policy, clock) if execution.real_time else None
    requester: Requester = threaded or SimulatedLatency(policy, clock, execution.latency_ms / 1000.0)
    agent = RealtimeAgent(requester, strategy=execution.strategy,
                          execution_horizon=execution.execution_horizon or open_loop_steps,
                          control_hz=embodiment.control_hz)
    started = clock.now()
    next_tick = started
    executed: list[np.ndarray] = []

    def act(obs: dict[str, Any]) -> np.ndarray:
        nonlocal next_tick
        action = np.asarray(agent.get_action(obs)["actions"], dtype=np.float32)
        executed.append(action)
        if threaded is not None:  # pace the simulator to the control rate (a late step holds a full period)
            next_tick = max(next_tick + period, clock.now())
            clock.sleep_until(next_tick)
        else:
            simulated.advance(period)  # the simulator steps once per control period
        return action

    try:
        played = play(simulator, embodiment, task, seed, act, video=video, sim_options=sim_options,
                      max_steps=max_steps)
    finally:
        if threaded is not None:
            threaded.cancel()
            threaded.close()
    smooth = smoothness(np.stack(executed) if executed else np.zeros((0, 1)), [s.tick for s in agent.switches])
    return RealtimeEpisodeResult(
        played.seed, played.success, played.episode_return, played.max_reward, played.steps, played.seconds,
        played.video, played.actions_sha256,
        strategy=execution.strategy, latency_ms=execution.latency_ms,
        measured_latency_ms=[round(1000.0 * s.latency_s, 3) for s in agent.switches],
        chunk_switches=len(agent.switches), starved_steps=agent.starved_ticks, control_seconds=clock.now() - started,
        **smooth)


def delay_ticks(latency_ms: float, control_hz: float) -> int:
    """Control ticks a reply ``latency_ms`` late misses (as :meth:`RealtimeAgent.estimated_delay` counts them)."""
    return max(0, math.ceil(latency_ms / 1000.0 * control_hz - 1e-6))


def workable_horizon(chunk: int, delay: int, requested: int, *, explicit: bool) -> tuple[int, str | None]:
    """The execution horizon for chunks of ``chunk`` actions whose successors arrive ``delay`` ticks after the
    request, and a note when it is not ``requested``.

    The next chunk is requested after ``horizon`` actions, so the current one must hold ``horizon + delay`` of
    them; past its end the robot holds its last action (starved steps) and rtc has no tail to continue, which
    makes it the same as naive. A default horizon (not ``explicit``) is shortened to fit and said; an explicit
    one is kept (to measure starving on purpose) with the warning; no horizon fits a delay of a whole chunk.
    """
    if requested + delay <= chunk:
        return requested, None
    if delay >= chunk:
        raise RealtimeError(f"replies {delay} control ticks late leave nothing of a {chunk}-action chunk to execute "
                            "meanwhile: lower --latency-ms, or use --execution sync (the robot waits)")
    fit = chunk - delay
    if explicit:
        return requested, (f"--open-loop-steps {requested} with replies {delay} ticks late needs chunks of "
                           f"{requested + delay} actions, these have {chunk}: {requested + delay - chunk} starved "
                           f"step(s) per chunk, and rtc has nothing to continue (--open-loop-steps {fit} fits)")
    return fit, (f"executing {fit} actions of each {chunk}-action chunk (not {requested}): replies arrive {delay} "
                 "ticks after the request, and the chunk must last until then (--open-loop-steps overrides)")


def summary(results: Sequence[EpisodeResult], execution: Execution, open_loop_steps: int) -> dict[str, Any]:
    """The report's execution entry: the setting and the smoothness over its episodes."""
    realtime = [r for r in results if isinstance(r, RealtimeEpisodeResult)]

    def mean(name: str) -> float:
        return float(np.mean([getattr(r, name) for r in realtime])) if realtime else 0.0

    return {
        "execution": {"strategy": execution.strategy, "latency_ms": execution.latency_ms,
                      "execution_horizon": execution.execution_horizon or open_loop_steps,
                      "real_time": execution.real_time},
        "max_boundary_jump": max((r.max_boundary_jump for r in realtime), default=0.0),
        "mean_boundary_jump": mean("mean_boundary_jump"),
        "mean_step": mean("mean_step"),
        "mean_jerk": mean("mean_jerk"),
        "mean_control_seconds": mean("control_seconds"),
        "starved_steps": int(sum(r.starved_steps for r in realtime)),
    }
