"""The robot control loop: observe, act, notify subscribers, at a fixed rate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pi0cli.client.clock import Clock, MonotonicClock
from pi0cli.client.policy import BasePolicy


class Environment:
    """A robot or simulator. Override the four methods."""

    def reset(self) -> None:
        pass

    def is_episode_complete(self) -> bool:
        return False

    def get_observation(self) -> dict[str, Any]:
        raise NotImplementedError

    def apply_action(self, action: dict[str, Any]) -> None:
        raise NotImplementedError


class Agent:
    """Chooses an action for an observation."""

    def get_action(self, observation: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def reset(self) -> None:
        pass


class PolicyAgent(Agent):
    """An agent that asks a policy (usually an :class:`~pi0cli.client.ActionChunkBroker` around a
    :class:`~pi0cli.client.WebsocketClientPolicy`)."""

    def __init__(self, policy: BasePolicy):
        self.policy = policy

    def get_action(self, observation: dict[str, Any]) -> dict[str, Any]:
        return self.policy.infer(observation)

    def reset(self) -> None:
        self.policy.reset()


class Subscriber:
    """Gets told about episodes and steps (loggers, video writers, metrics)."""

    def on_episode_start(self) -> None:
        pass

    def on_step(self, observation: dict[str, Any], action: dict[str, Any]) -> None:
        pass

    def on_episode_end(self) -> None:
        pass


class Runtime:
    """Runs ``num_episodes`` episodes of at most ``max_episode_steps`` steps (0: until the environment says the
    episode is complete), paced to ``max_hz`` (0: as fast as possible) on ``clock`` (default: wall-clock time;
    a :class:`~pi0cli.client.clock.SimulatedClock` makes the loop deterministic)."""

    def __init__(
        self,
        environment: Environment,
        agent: Agent,
        subscribers: Sequence[Subscriber] = (),
        *,
        max_hz: float = 0.0,
        num_episodes: int = 1,
        max_episode_steps: int = 0,
        clock: Clock | None = None,
    ):
        self.environment = environment
        self.agent = agent
        self.subscribers = list(subscribers)
        self.max_hz = max_hz
        self.num_episodes = num_episodes
        self.max_episode_steps = max_episode_steps
        self.clock = clock or MonotonicClock()
        self._stop_episode = False
        self.steps_run = 0

    def mark_episode_complete(self) -> None:
        """End the current episode after this step (e.g. from a subscriber)."""
        self._stop_episode = True

    def run(self) -> None:
        for _ in range(self.num_episodes):
            self.run_episode()

    def run_episode(self) -> int:
        """One episode; returns the number of steps taken."""
        self.environment.reset()
        self.agent.reset()
        self._stop_episode = False
        for sub in self.subscribers:
            sub.on_episode_start()
        period = 1.0 / self.max_hz if self.max_hz > 0 else 0.0
        steps = 0
        next_time = self.clock.now()
        while not self._stop_episode:
            if self.max_episode_steps and steps >= self.max_episode_steps:
                break
            if self.environment.is_episode_complete():
                break
            observation = self.environment.get_observation()
            action = self.agent.get_action(observation)
            self.environment.apply_action(action)
            for sub in self.subscribers:
                sub.on_step(observation, action)
            steps += 1
            self.steps_run += 1
            if period:
                next_time += period
                if next_time <= self.clock.now():
                    # Running late (a slow step, a policy that made us wait): hold this action a full period
                    # rather than catching up with a burst of commands.
                    next_time = self.clock.now() + period
                self.clock.sleep_until(next_time)
        for sub in self.subscribers:
            sub.on_episode_end()
        return steps
