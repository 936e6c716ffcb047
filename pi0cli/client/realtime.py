"""Asynchronous chunk execution: keep acting at the control rate while the next chunk is computed.

:class:`RealtimeAgent` is an :class:`~pi0cli.client.runtime.Agent` called once per control tick. Every
``execution_horizon`` executed actions it asks the policy for a new chunk from the current observation;
how it carries on meanwhile is the strategy:

- ``sync``: wait for the reply (the robot pauses; the simulated clock jumps by the latency).
- ``naive``: keep executing the current chunk; switch to the new one as soon as it arrives, at the index of
  the tick it arrived in (its first ``d`` actions are already in the past).
- ``ensemble``: as ``naive``, but each action is the weighted mean of every chunk that covers the tick
  (weights ``exp(-decay * age rank)``, the oldest first: temporal ensembling).
- ``rtc``: as ``naive``, and the request carries the current chunk's unexecuted tail, the inference delay
  ``d`` (from the measured round-trip latencies: ``ceil(max(recent) * hz)``) and the execution horizon, so
  the server samples the new chunk as a continuation of the old one (:mod:`pi0cli.policy.rtc`).

Time comes from a :class:`Clock` and requests go through a :class:`Requester`: :class:`MonotonicClock`
with :class:`ThreadedRequester` on a robot; :class:`SimulatedClock` with :class:`SimulatedLatency` in
simulation and tests, where the policy's reply "arrives" a fixed latency after the request in simulated
time whatever the machine's speed, so runs are deterministic. No JAX here.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import threading
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from pi0cli.client.clock import Clock, MonotonicClock
from pi0cli.client.policy import BasePolicy
from pi0cli.client.runtime import Agent
from pi0cli.errors import Pi0Error
from pi0cli.policy.rtc import EXECUTION_HORIZON, INFERENCE_DELAY, PREV_ACTIONS

STRATEGIES = ("sync", "naive", "ensemble", "rtc")
#: Float slack when comparing simulated times (ticks are sums of periods).
_EPS = 1e-9


class RealtimeError(Pi0Error):
    """A real-time execution set up in a way that cannot work."""


# ------------------------------------------------------------------------------------------------ requesters


@dataclasses.dataclass(frozen=True)
class Reply:
    result: dict[str, Any]
    latency_s: float  # submit to reply, on the requester's clock


class Requester(Protocol):
    """One policy request at a time: ``submit`` it, ``poll`` (non-blocking) or ``wait`` for its reply."""

    def submit(self, request: dict[str, Any]) -> None: ...

    def poll(self) -> Reply | None: ...

    def wait(self) -> Reply: ...

    def cancel(self) -> None: ...


class ThreadedRequester:
    """Runs ``policy.infer`` on a worker thread; the control loop keeps ticking meanwhile."""

    def __init__(self, policy: BasePolicy, clock: Clock | None = None):
        self.policy = policy
        self.clock = clock or MonotonicClock()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pi0-realtime")
        self._future: concurrent.futures.Future[tuple[dict[str, Any], float]] | None = None
        self._sent = 0.0
        self._lock = threading.Lock()

    def _call(self, request: dict[str, Any]) -> tuple[dict[str, Any], float]:
        result = self.policy.infer(request)
        return result, self.clock.now()

    def submit(self, request: dict[str, Any]) -> None:
        with self._lock:
            if self._future is not None:
                raise RealtimeError("a request is already in flight")
            self._sent = self.clock.now()
            self._future = self._pool.submit(self._call, request)

    def _take(self) -> Reply:
        assert self._future is not None
        result, done = self._future.result()
        self._future = None
        return Reply(result, done - self._sent)

    def poll(self) -> Reply | None:
        with self._lock:
            if self._future is None or not self._future.done():
                return None
            return self._take()

    def wait(self) -> Reply:
        with self._lock:
            if self._future is None:
                raise RealtimeError("no request in flight")
            return self._take()

    def cancel(self) -> None:
        with self._lock:
            if self._future is not None:
                self._future.cancel()
                try:  # a call already running is let finish; its reply is dropped
                    self._future.result()
                except Exception:  # noqa: BLE001 - a dropped reply's failure does not matter
                    pass
            self._future = None

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class SimulatedLatency:
    """Answers at once but releases the reply ``latency_s`` later on a (simulated) clock: the policy
    "thinks" for exactly that long, independent of how fast this machine really computed it."""

    def __init__(self, policy: BasePolicy, clock: Clock, latency_s: float):
        if latency_s < 0:
            raise RealtimeError(f"latency must not be negative, got {latency_s}")
        self.policy = policy
        self.clock = clock
        self.latency_s = float(latency_s)
        self._pending: tuple[dict[str, Any], float] | None = None

    def submit(self, request: dict[str, Any]) -> None:
        if self._pending is not None:
            raise RealtimeError("a request is already in flight")
        self._pending = (self.policy.infer(request), self.clock.now() + self.latency_s)

    def poll(self) -> Reply | None:
        if self._pending is None or self.clock.now() + _EPS < self._pending[1]:
            return None
        result, _ = self._pending
        self._pending = None
        return Reply(result, self.latency_s)

    def wait(self) -> Reply:
        if self._pending is None:
            raise RealtimeError("no request in flight")
        self.clock.sleep_until(self._pending[1])
        reply = self.poll()
        assert reply is not None
        return reply

    def cancel(self) -> None:
        self._pending = None


# --------------------------------------------------------------------------------------------------- agent


@dataclasses.dataclass
class _Chunk:
    actions: np.ndarray  # [H, D] robot units
    index: int  # the entry due at the current tick


@dataclasses.dataclass(frozen=True)
class Switch:
    """A new chunk taking over: at ``tick``, entering at ``index`` (the delay in ticks) after ``latency_s``."""

    tick: int
    index: int
    latency_s: float
    inference_delay: int | None  # what an rtc request announced


class RealtimeAgent(Agent):
    """Chunked execution with one of :data:`STRATEGIES` (module docstring); one ``get_action`` per tick.

    ``execution_horizon``: ticks from a chunk's observation until the next chunk is requested (the paper's
    ``s``; with delay ``d``, ``s - d`` of its actions are executed before the request and ``d`` after).
    ``control_hz``: the tick rate (turns latencies into delays). ``latency_window``: how many recent
    latencies the delay estimate takes the maximum of. Afterwards ``switches``, ``latencies_s`` and
    ``starved_ticks`` (ticks with no fresh action: the chunk ran out before its successor arrived; the last
    action is held) describe the episode.
    """

    def __init__(
        self,
        requester: Requester,
        *,
        strategy: str,
        execution_horizon: int,
        control_hz: float,
        latency_window: int = 10,
        ensemble_decay: float = 0.01,
    ):
        if strategy not in STRATEGIES:
            raise RealtimeError(f"unknown execution strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if execution_horizon < 1:
            raise RealtimeError(f"execution_horizon must be at least 1, got {execution_horizon}")
        if not control_hz > 0:
            raise RealtimeError(f"control_hz must be positive, got {control_hz}")
        self.requester = requester
        self.strategy = strategy
        self.execution_horizon = int(execution_horizon)
        self.control_hz = float(control_hz)
        self.latency_window = int(latency_window)
        self.ensemble_decay = float(ensemble_decay)
        self.reset()

    def reset(self) -> None:
        if getattr(self, "_pending", False):
            self.requester.cancel()
        self._chunks: list[_Chunk] = []  # oldest first; only ensembling keeps more than one
        self._pending = False
        self._pending_tick = 0
        self._pending_delay: int | None = None
        self._tick = 0
        self._horizon: int | None = None
        self._last: dict[str, Any] | None = None
        self.switches: list[Switch] = []
        self.latencies_s: list[float] = []
        self.starved_ticks = 0

    # ---------------------------------------------------------------------------------------- delay

    def estimated_delay(self) -> int:
        """Ticks a reply is expected to take: ``ceil(max(recent latencies) * hz)`` (0 before any)."""
        recent = self.latencies_s[-self.latency_window :]
        if not recent:
            return 0
        return max(0, math.ceil(max(recent) * self.control_hz - 1e-6))

    def _request(self, observation: Mapping[str, Any]) -> dict[str, Any]:
        request = dict(observation)
        if self.strategy != "rtc" or not self._chunks or self._horizon is None:
            return request
        current = self._chunks[-1]
        tail = current.actions[current.index :]
        if not len(tail):
            return request
        tail = tail[: self._horizon]
        delay = min(self.estimated_delay(), len(tail))
        self._pending_delay = delay
        request[PREV_ACTIONS] = np.ascontiguousarray(tail, dtype=np.float32)
        request[INFERENCE_DELAY] = delay
        request[EXECUTION_HORIZON] = self._horizon - len(tail)
        return request

    # ---------------------------------------------------------------------------------------- switching

    def _accept(self, reply: Reply) -> None:
        actions = np.asarray(reply.result["actions"], dtype=np.float32)
        if actions.ndim != 2 or not len(actions):
            raise RealtimeError(f"the policy returned actions of shape {actions.shape}; expected a chunk [H, D]")
        self._horizon = len(actions)
        index = self._tick - self._pending_tick  # ticks since the observation it was computed from
        self.latencies_s.append(reply.latency_s)
        self.switches.append(Switch(self._tick, index, reply.latency_s, self._pending_delay))
        chunk = _Chunk(actions, index)
        self._chunks = [*self._chunks, chunk] if self.strategy == "ensemble" else [chunk]
        self._last = {k: v for k, v in reply.result.items() if k != "actions"}
        self._pending = False
        self._pending_delay = None

    def _submit(self, observation: Mapping[str, Any]) -> None:
        self.requester.submit(self._request(observation))
        self._pending = True
        self._pending_tick = self._tick

    def get_action(self, observation: dict[str, Any]) -> dict[str, Any]:
        if self._pending:
            reply = self.requester.poll()
            if reply is not None:
                self._accept(reply)
        # As in the paper, a chunk's index counts the ticks since its observation: requests every s ticks.
        due = not self._chunks or self._chunks[-1].index >= self.execution_horizon
        if due and not self._pending:
            self._submit(observation)
            if self.strategy == "sync" or not self._chunks:
                self._accept(self.requester.wait())  # nothing to execute meanwhile: the robot waits
            else:
                reply = self.requester.poll()  # a zero-latency reply is taken in the same tick
                if reply is not None:
                    self._accept(reply)
        action = self._action()
        self._tick += 1
        return {**(self._last or {}), "actions": action}

    def _action(self) -> np.ndarray:
        live = [c for c in self._chunks if c.index < len(c.actions)]
        if not live:  # the newest chunk ran out before its successor arrived: hold its last action
            self.starved_ticks += 1
            newest = self._chunks[-1]
            newest.index += 1
            return newest.actions[-1].copy()
        if len(live) == 1:
            action = live[0].actions[live[0].index].copy()
        else:
            weights = np.exp(-self.ensemble_decay * np.arange(len(live)))
            stacked = np.stack([c.actions[c.index] for c in live])
            action = (weights[:, None] * stacked).sum(axis=0) / weights.sum()
        for chunk in self._chunks:
            chunk.index += 1
        self._chunks = [c for c in self._chunks if c.index < len(c.actions)] or self._chunks[-1:]
        return action.astype(np.float32)
