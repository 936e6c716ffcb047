"""Shared helpers for the model tests (a plain module, not a conftest: tests/conftest.py owns that name)."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from flax import nnx

from pi0cli.models import config as C
from pi0cli.models.observation import Observation


def make_obs(cfg: C.Pi0Config, batch: int = 2, seed: int = 0, *, mask_last_image: bool = True,
             prompt_pad: int = 2) -> Observation:
    """Random observation at the model resolution; the last camera masked out and the prompt right-padded."""
    rng = np.random.default_rng(seed)
    h, w = cfg.image_resolution
    images = {k: jnp.asarray(rng.uniform(-1, 1, (batch, h, w, 3)), jnp.float32) for k in cfg.image_keys}
    masks = {k: jnp.ones(batch, bool) for k in cfg.image_keys}
    if mask_last_image:
        masks[cfg.image_keys[-1]] = jnp.zeros(batch, bool)
    tok_mask = np.ones((batch, cfg.token_len), bool)
    if prompt_pad:
        tok_mask[:, -prompt_pad:] = False
    tokens = rng.integers(1, cfg.vlm.vocab_size, (batch, cfg.token_len)) * tok_mask
    return Observation(
        images=images,
        image_masks=masks,
        state=jnp.asarray(rng.normal(size=(batch, cfg.action_dim)), jnp.float32),
        tokenized_prompt=jnp.asarray(tokens, jnp.int32),
        tokenized_prompt_mask=jnp.asarray(tok_mask),
    )


@functools.cache
def tiny_model(name: str, seed: int = 0):
    """A cached tiny model (model init compiles a lot on CPU; share it between tests that only read it)."""
    from pi0cli.models.pi0 import Pi0

    return Pi0(C.preset(name), nnx.Rngs(seed))
