"""Learning-rate schedules and the optimiser (global-norm clipping, then AdamW), as in the reference."""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from pi0cli.training.config import AdamW, ConstantSchedule, CosineDecaySchedule, RsqrtDecaySchedule, Schedule


def make_schedule(schedule: Schedule) -> optax.Schedule:
    """The optax schedule for a schedule config."""
    match schedule:
        case CosineDecaySchedule(warmup_steps=warmup, peak_lr=peak, decay_steps=decay, decay_lr=end):
            return optax.warmup_cosine_decay_schedule(
                init_value=peak / (warmup + 1), peak_value=peak, warmup_steps=warmup, decay_steps=decay, end_value=end
            )
        case RsqrtDecaySchedule(warmup_steps=warmup, peak_lr=peak, timescale=timescale):
            return optax.join_schedules(
                [
                    optax.linear_schedule(init_value=peak / (warmup + 1), end_value=peak, transition_steps=warmup),
                    lambda step: peak / (1.0 + step / timescale) ** 0.5,
                ],
                [warmup],
            )
        case ConstantSchedule(lr=lr, warmup_steps=warmup):
            if warmup == 0:
                return optax.constant_schedule(lr)
            return optax.join_schedules(
                [optax.linear_schedule(lr / (warmup + 1), lr, warmup), optax.constant_schedule(lr)], [warmup]
            )
    raise TypeError(f"unknown schedule {schedule!r}")


class LowPrecisionAdamState(NamedTuple):
    steps: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def scale_by_adam_stored_as(dtype: jnp.dtype, *, b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    """Adam's scaling with both moments stored in ``dtype`` (updated in float32, rounded once per step).

    Rounding the moments is harmless where rounding the weights would not be: each step moves a moment by a
    sizeable fraction ((1 - b1) and (1 - b2) of the new gradient), far above bfloat16's 2^-8 resolution.
    """

    def init(params: optax.Params) -> LowPrecisionAdamState:
        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, dtype), params)
        return LowPrecisionAdamState(steps=jnp.zeros((), jnp.int32), mu=zeros, nu=zeros)

    def update(updates: optax.Updates, state: LowPrecisionAdamState, params: optax.Params | None = None):
        del params
        count = optax.safe_increment(state.steps)
        f32 = jnp.float32
        c1 = 1 - jnp.asarray(b1, f32) ** count
        c2 = 1 - jnp.asarray(b2, f32) ** count

        def leaf(g: jax.Array, m: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
            # The update reads the rounded moments it stores: no float32 copy of either moment outlives a leaf.
            g32 = g.astype(f32)
            m = (b1 * m.astype(f32) + (1 - b1) * g32).astype(dtype)
            v = (b2 * v.astype(f32) + (1 - b2) * jnp.square(g32)).astype(dtype)
            u = (m.astype(f32) / c1) / (jnp.sqrt(v.astype(f32) / c2) + eps)
            return u.astype(g.dtype), m, v

        leaves, treedef = jax.tree.flatten(updates)
        done = [leaf(g, m, v) for g, m, v in zip(leaves, jax.tree.leaves(state.mu), jax.tree.leaves(state.nu),
                                                  strict=True)]
        u, mu, nu = (jax.tree.unflatten(treedef, [t[i] for t in done]) for i in range(3))
        return u, LowPrecisionAdamState(steps=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def make_optimizer(
    config: AdamW, schedule: Schedule, *, moment_dtype: Literal["float32", "bfloat16"] = "float32"
) -> optax.GradientTransformation:
    """Clip gradients by global norm, then AdamW with the schedule; weight decay applies to all parameters.

    ``moment_dtype="bfloat16"`` stores Adam's two moments in bfloat16 (half their memory; same update rule).
    """
    clip = optax.clip_by_global_norm(config.clip_gradient_norm)
    lr = make_schedule(schedule)
    if moment_dtype == "float32":
        adamw = optax.adamw(learning_rate=lr, b1=config.b1, b2=config.b2, eps=config.eps,
                            weight_decay=config.weight_decay)
        return optax.chain(clip, adamw)
    return optax.chain(
        clip,
        optax.chain(
            scale_by_adam_stored_as(jnp.dtype(moment_dtype), b1=config.b1, b2=config.b2, eps=config.eps),
            optax.add_decayed_weights(config.weight_decay),
            optax.scale_by_learning_rate(lr),
        ),
    )
