"""Shared helpers for training tests: a tiny config and batches deterministic in (seed, step)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from pi0cli.models.config import preset
from pi0cli.training.config import CosineDecaySchedule, TrainConfig


def tiny_config(**changes) -> TrainConfig:
    base = TrainConfig(
        name="test_tiny", embodiment="aloha_sim", model=preset("pi0_tiny"), batch_size=8, num_train_steps=8,
        log_interval=2, save_interval=1000, keep_period=None,
        lr_schedule=CosineDecaySchedule(warmup_steps=5, peak_lr=1e-3, decay_steps=200, decay_lr=1e-4),
    )
    return dataclasses.replace(base, **changes)


def fake_batches(config: TrainConfig, seed: int = 0, process: int = 0, processes: int = 1):
    """``batches(start_step)``: model-format numpy batches; batch k depends only on (seed, k). Each of
    ``processes`` processes gets its contiguous share of the global batch."""
    m = config.model
    share = config.batch_size // processes
    rows = slice(process * share, (process + 1) * share)

    def batches(start: int) -> Iterator[dict]:
        step = start
        while True:
            rng = np.random.default_rng([seed, step])
            b = config.batch_size
            batch = {
                "image": {k: rng.integers(0, 256, (b, *m.image_resolution, 3), dtype=np.uint8) for k in m.image_keys},
                "image_mask": {k: np.ones(b, bool) for k in m.image_keys},
                "state": rng.normal(size=(b, m.action_dim)).astype(np.float32),
                "tokenized_prompt": rng.integers(0, 100, (b, m.token_len)).astype(np.int32),
                "tokenized_prompt_mask": np.ones((b, m.token_len), bool),
                "actions": np.tile(np.linspace(-1, 1, m.action_dim, dtype=np.float32), (b, m.action_horizon, 1)),
            }
            yield {k: ({s: x[rows] for s, x in v.items()} if isinstance(v, dict) else v[rows])
                   for k, v in batch.items()}
            step += 1

    return batches
