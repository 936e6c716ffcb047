"""Learning-rate schedules and the optimiser (global-norm clipping, then AdamW), as in the reference."""

from __future__ import annotations

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


def make_optimizer(config: AdamW, schedule: Schedule) -> optax.GradientTransformation:
    """Clip gradients by global norm, then AdamW with the schedule; weight decay applies to all parameters."""
    return optax.chain(
        optax.clip_by_global_norm(config.clip_gradient_norm),
        optax.adamw(
            learning_rate=make_schedule(schedule), b1=config.b1, b2=config.b2, eps=config.eps,
            weight_decay=config.weight_decay,
        ),
    )
