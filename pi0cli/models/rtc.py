"""Real-time chunking (RTC): sample the next action chunk as an inpainting of the previous one.

Black, Galliker & Levine (2025), "Real-Time Execution of Action Chunking Flow Policies". While chunk ``k``
executes, chunk ``k + 1`` is sampled from an observation taken now; it arrives ``d`` control steps later
(the inference delay), so its first ``d`` actions are never executed: they are frozen to what the robot
executes meanwhile (the previous chunk's tail), the rest of the overlap is softly pulled toward the tail and
the last ``s`` actions (the execution horizon: beyond the tail) are free.

Per row of a batch (index ``i`` of the new chunk, horizon ``H``, overlap ``H - s``)::

    W_i = 1                                   i < d
    W_i = c_i (e^{c_i} - 1) / (e - 1)         d <= i < H - s,   c_i = (H - s - i) / (H - s - d + 1)
    W_i = 0                                   i >= H - s

At every Euler step the velocity is corrected by a vector-Jacobian product through the denoised estimate
(pseudo-inverse guidance): with pi0's convention (t = 1 noise, t = 0 data; ``x_t = t * noise + (1 - t) * a``)
the estimate is ``a_hat = x_t - t * v(x_t)`` and the guided velocity is ``v - w(t) * J^T (W * (Y - a_hat))``
with ``J = d a_hat / d x_t``. The paper's weight ``min(beta, (1 - tau) / (tau r^2))``,
``r^2 = (1 - tau)^2 / (tau^2 + (1 - tau)^2)``, is symmetric in ``tau <-> 1 - tau`` and so reads the same with
``t = 1 - tau``: ``w(t) = min(beta, (t^2 + (1 - t)^2) / (t (1 - t)))`` (``beta`` at both ends).

A row whose overlap is empty (``execution_horizon >= H``) has no previous chunk: it is plain sampling, and a
batch without any such row runs exactly the plain sampler (:meth:`pi0cli.models.pi0.Pi0.sample_actions`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

#: The paper's guidance weight clip.
DEFAULT_MAX_GUIDANCE_WEIGHT = 5.0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RTCInputs:
    """Per-row RTC conditioning, in model units (normalised, delta, padded like the model's actions).

    ``prev_actions [B, H, A]``: the previous chunk's actions not yet executed when the observation was taken,
    aligned so that index 0 is the action due now (right-padded to ``H``; padding is ignored).
    ``inference_delay [B]`` (``d``): control steps until the new chunk arrives. ``execution_horizon [B]``
    (``s``): ``H - s`` actions overlap the previous chunk; ``s >= H`` means no previous chunk.
    """

    prev_actions: jax.Array
    inference_delay: jax.Array
    execution_horizon: jax.Array

    @classmethod
    def none(cls, batch: int, horizon: int, action_dim: int) -> RTCInputs:
        """Rows without a previous chunk (plain sampling)."""
        return cls(jnp.zeros((batch, horizon, action_dim), jnp.float32), jnp.zeros(batch, jnp.int32),
                   jnp.full(batch, horizon, jnp.int32))


def prefix_weights(horizon: int, inference_delay: jax.Array, execution_horizon: jax.Array) -> jax.Array:
    """The soft mask ``W [B, H]`` (module docstring); ``d`` is clipped to the overlap ``[0, H - s]``."""
    i = jnp.arange(horizon, dtype=jnp.float32)[None, :]
    overlap = jnp.clip(horizon - jnp.asarray(execution_horizon, jnp.int32), 0, horizon)[:, None].astype(jnp.float32)
    d = jnp.clip(jnp.asarray(inference_delay, jnp.int32)[:, None].astype(jnp.float32), 0.0, overlap)
    c = (overlap - i) / (overlap - d + 1.0)
    decay = c * jnp.expm1(c) / math.expm1(1.0)
    return jnp.where(i < d, 1.0, jnp.where(i < overlap, decay, 0.0))


def guidance_weight(time: jax.Array, max_weight: float = DEFAULT_MAX_GUIDANCE_WEIGHT) -> jax.Array:
    """``w(t) = min(beta, (t^2 + (1 - t)^2) / (t (1 - t)))`` in pi0's time (``beta`` where it diverges)."""
    t = jnp.asarray(time, jnp.float32)
    denominator = t * (1.0 - t)
    safe = jnp.where(denominator > 0, denominator, 1.0)
    raw = (t * t + (1.0 - t) * (1.0 - t)) / safe
    return jnp.where(denominator > 0, jnp.minimum(raw, max_weight), max_weight)


def active_rows(rtc: RTCInputs) -> jax.Array:
    """``[B]`` bool: rows that have a previous chunk to follow (a non-empty overlap)."""
    horizon = rtc.prev_actions.shape[1]
    return jnp.asarray(rtc.execution_horizon) < horizon


def guided_velocity(
    velocity: Callable[[jax.Array], jax.Array],
    x_t: jax.Array,
    time: jax.Array,
    rtc: RTCInputs,
    weights: jax.Array,
    max_weight: float = DEFAULT_MAX_GUIDANCE_WEIGHT,
) -> jax.Array:
    """The RTC-guided velocity at ``(x_t, time)``; rows without a previous chunk get ``velocity(x_t)`` itself.

    ``velocity``: ``x_t [B, H, A] -> v [B, H, A]`` at this time (rows independent of each other, so one VJP
    with a per-row cotangent gives every row its own guidance). ``weights``: :func:`prefix_weights`.
    """

    def denoised(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        v = velocity(x)
        return x - time * v, v

    estimate, vjp, v = jax.vjp(denoised, x_t, has_aux=True)
    error = (rtc.prev_actions - estimate) * weights[:, :, None]
    (correction,) = vjp(error)
    guided = v - guidance_weight(time, max_weight) * correction
    return jnp.where(active_rows(rtc)[:, None, None], guided, v)
