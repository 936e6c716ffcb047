"""Observations shared by the policy and serving tests (imported by module name, as tests/net_helpers.py is)."""

from __future__ import annotations

from typing import Any

import numpy as np


def sim_obs(seed: int = 0) -> dict[str, Any]:
    """A valid aloha_sim observation as a client sends it (CHW uint8 image, 14 state dims, prompt)."""
    rng = np.random.default_rng(seed)
    return {
        "images": {"cam_high": rng.integers(0, 256, (3, 224, 224), dtype=np.uint8)},
        "state": rng.uniform(-1, 1, 14).astype(np.float32),
        "prompt": "Transfer cube",
    }
