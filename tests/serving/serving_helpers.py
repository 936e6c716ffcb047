"""Helpers of the serving tests (imported by module name, as tests/plugin_helpers.py is)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from net_helpers import free_port  # noqa: F401  (re-exported for the serving tests)
from obs_helpers import sim_obs  # noqa: F401  (re-exported for the serving tests)

from pi0cli.transforms import PadStatesAndActions, compose

HORIZON = 10


def fake_policy(embodiment: Any, *, delay_s: float = 0.0, batch_sizes=(1, 2, 4, 8), per_item_s: float = 0.0):
    """A real :class:`Policy` whose model is numpy: actions = the padded state repeated over the horizon, after
    ``delay_s`` (+ ``per_item_s`` per padded row) of simulated compute."""
    from pi0cli.policy.policy import Policy

    def sample(rng, batch):
        time.sleep(delay_s + per_item_s * batch["state"].shape[0])
        state = np.asarray(batch["state"], np.float32)
        return np.repeat(state[:, None, :], HORIZON, axis=1)

    return Policy(
        sample,
        input_transform=compose(embodiment.inputs, PadStatesAndActions(32)),
        output_transform=embodiment.outputs,
        batch_sizes=batch_sizes,
        metadata={"reset_pose": [0.0, -1.5, 1.5], "server": "fake"},
        example=lambda: embodiment.example_observation(0),
    )
