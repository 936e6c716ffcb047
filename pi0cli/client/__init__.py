"""The robot side of ``pi0 serve``: light dependencies only (numpy, msgpack, websockets; never JAX).

A robot script is a few lines::

    from pi0cli.client import ActionChunkBroker, PolicyAgent, Runtime, WebsocketClientPolicy

    policy = WebsocketClientPolicy("127.0.0.1", 8000, api_key=KEY)   # waits for the server, reads metadata
    agent = PolicyAgent(ActionChunkBroker(policy, action_horizon=10))
    Runtime(MyRobotEnvironment(), agent, max_hz=50, num_episodes=1).run()

- ``WebsocketClientPolicy``: the websocket client (retries while the server starts, API key, metadata).
- ``ActionChunkBroker``: executes one predicted chunk step by step, asking again every ``action_horizon``.
- ``Runtime``, ``Environment``, ``Agent``, ``PolicyAgent``, ``Subscriber``: the control loop.
- ``RealtimeAgent``: asynchronous chunk execution (strategies ``sync``, ``naive``, ``ensemble``, ``rtc``)
  with a ``ThreadedRequester`` on a robot, or ``SimulatedLatency`` on a ``SimulatedClock`` in simulation.
"""

from pi0cli.client.broker import ActionChunkBroker
from pi0cli.client.clock import MonotonicClock, SimulatedClock
from pi0cli.client.policy import BasePolicy, PolicyServerError, WebsocketClientPolicy
from pi0cli.client.realtime import STRATEGIES, RealtimeAgent, SimulatedLatency, ThreadedRequester
from pi0cli.client.runtime import Agent, Environment, PolicyAgent, Runtime, Subscriber

__all__ = [
    "STRATEGIES",
    "ActionChunkBroker",
    "Agent",
    "BasePolicy",
    "Environment",
    "MonotonicClock",
    "PolicyAgent",
    "PolicyServerError",
    "RealtimeAgent",
    "Runtime",
    "SimulatedClock",
    "SimulatedLatency",
    "Subscriber",
    "ThreadedRequester",
    "WebsocketClientPolicy",
]
