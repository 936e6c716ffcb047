"""Execute a predicted action chunk one step at a time."""

from __future__ import annotations

from typing import Any

import numpy as np

from pi0cli.client.policy import BasePolicy


def _take(tree: Any, step: int) -> Any:
    if isinstance(tree, dict):
        return {k: _take(v, step) for k, v in tree.items()}
    if isinstance(tree, np.ndarray) and tree.ndim >= 1:
        return tree[step]
    return tree


def _length(tree: Any) -> int | None:
    if isinstance(tree, dict):
        lengths = [n for n in (_length(v) for v in tree.values()) if n is not None]
        return min(lengths) if lengths else None
    if isinstance(tree, np.ndarray) and tree.ndim >= 1:
        return tree.shape[0]
    return None


class ActionChunkBroker(BasePolicy):
    """Wraps a chunk-predicting policy: each ``infer`` returns the reply with every array leaf indexed at the
    current step (``actions[step]``); a new chunk is requested every ``action_horizon`` steps (or sooner if
    the chunk is shorter). Non-array leaves (timings) are passed through.
    """

    def __init__(self, policy: BasePolicy, action_horizon: int):
        if action_horizon < 1:
            raise ValueError(f"action_horizon must be at least 1, got {action_horizon}")
        self.policy = policy
        self.action_horizon = action_horizon
        self._chunk: dict[str, Any] | None = None
        self._step = 0
        self._limit = 0

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        if self._chunk is None:
            self._chunk = self.policy.infer(obs)
            length = _length(self._chunk)
            self._limit = self.action_horizon if length is None else min(self.action_horizon, length)
            self._step = 0
        out = _take(self._chunk, self._step)
        self._step += 1
        if self._step >= self._limit:
            self._chunk = None
        return out

    def reset(self) -> None:
        self.policy.reset()
        self._chunk = None
        self._step = 0
