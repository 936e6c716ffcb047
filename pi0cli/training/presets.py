"""Helpers robot plugins use to declare their training presets (JAX-free)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pi0cli.models.config import preset as model_preset
from pi0cli.training.config import ConstantSchedule, CosineDecaySchedule, TrainConfig, lora_recipe
from pi0cli.training.peaks import PresetPeak, missing_note

#: Tiny models train on a CPU in minutes; full-size ones need a GPU (see ``pi0 train --dry-run``).
TINY_SCHEDULE = CosineDecaySchedule(warmup_steps=100, peak_lr=1e-3, decay_steps=3_000, decay_lr=1e-4)

SMALL_SCHEDULE = CosineDecaySchedule(warmup_steps=200, peak_lr=1e-3, decay_steps=5_000, decay_lr=5e-5)


def standard_presets(
    robot: str,
    embodiment: str,
    *,
    dataset: str | None = None,
    models: tuple[str, ...] = ("pi0", "pi05"),
    tiny: dict[str, Any] | None = None,
    small: dict[str, Any] | None = None,
    peaks: Mapping[str, PresetPeak] | None = None,
    **common: Any,
) -> list[TrainConfig]:
    """``<model>_<robot>`` full fine-tuning, ``<model>_<robot>_lora`` and ``<model>_<robot>_lora_lowmem`` (vision
    frozen, bfloat16 Adam moments) presets for each model type, a
    ``pi0_<robot>_tiny`` CPU preset (model overrides in ``tiny``) and, when ``small`` is given (model overrides,
    may be empty), a ``pi0_<robot>_small`` preset: a wider CPU model for about an hour of training. ``peaks``
    (the plugin's ``peaks.json``, :func:`pi0cli.training.peaks.read_peaks`) gives each its ``compiled_peak``
    and the clause of its description that states it."""
    peaks = peaks or {}

    def peak_note(name: str) -> str:
        peak = peaks.get(name)
        return missing_note(name) if peak is None else peak.note()

    configs = []
    for model in models:
        name = f"{model}_{robot}"
        configs.append(TrainConfig(name=name, embodiment=embodiment, model=model_preset(model), dataset=dataset,
                                   description=f"{model} full fine-tuning on {embodiment} ({peak_note(name)})",
                                   **common))
        lora_model = model_preset(f"{model}_lora")  # token-chunked MLPs (see the model preset)
        # The LoRA recipe is decided in one place (``pi0 train --lora`` takes the same): the family's freeze
        # mode, no EMA, and its micro-batches (pi0.5's 200-token prompts: two, to stay under 24 GiB).
        recipe = lora_recipe(lora_model, common.get("batch_size", TrainConfig.batch_size))
        configs.append(TrainConfig(
            name=f"{name}_lora", embodiment=embodiment, model=lora_model, dataset=dataset, **recipe,
            description=f"{model} LoRA fine-tuning on {embodiment} ({peak_note(name + '_lora')})", **common,
        ))
        # Low memory by freezing the vision tower and storing Adam's moments in bfloat16 instead: one batch.
        configs.append(TrainConfig(
            name=f"{name}_lora_lowmem", embodiment=embodiment, model=lora_model, dataset=dataset,
            freeze=recipe["freeze"], freeze_vision=True, ema_decay=None, moment_dtype="bfloat16",
            description=f"{model} LoRA on {embodiment} with the vision tower frozen and bfloat16 Adam moments "
                        f"({peak_note(name + '_lora_lowmem')})", **common,
        ))
    # Chunks of 10 cover every built-in robot's open-loop execution; action_dim 32 as the full-size models.
    # Prompts of a few words fit in 16 tokens.
    tiny_model = dataclasses.replace(
        model_preset("pi0_tiny"), **({"action_dim": 32, "action_horizon": 10, "max_token_len": 16} | (tiny or {}))
    )
    configs.append(TrainConfig(
        name=f"pi0_{robot}_tiny", embodiment=embodiment, model=tiny_model, dataset=dataset, batch_size=16,
        num_train_steps=3_000, lr_schedule=TINY_SCHEDULE, log_interval=50, save_interval=500, keep_period=None,
        num_workers=2,
        description=f"tiny pi0 that trains on a CPU in minutes ({embodiment}; {peak_note(f'pi0_{robot}_tiny')})",
        **{k: v for k, v in common.items() if k not in ("batch_size", "num_train_steps", "lr_schedule")},
    ))
    if small is not None:
        small_model = dataclasses.replace(
            model_preset("pi0_small"), **({"action_dim": 32, "action_horizon": 10, "max_token_len": 16} | small)
        )
        configs.append(TrainConfig(
            name=f"pi0_{robot}_small", embodiment=embodiment, model=small_model, dataset=dataset, batch_size=16,
            num_train_steps=SMALL_SCHEDULE.decay_steps, lr_schedule=SMALL_SCHEDULE, log_interval=100,
            save_interval=1_000, keep_period=None, num_workers=2,
            description=f"small pi0 (64-wide, 3 layers) for about an hour of CPU training ({embodiment}; "
                        f"{peak_note(f'pi0_{robot}_small')})",
            **{k: v for k, v in common.items() if k not in ("batch_size", "num_train_steps", "lr_schedule")},
        ))
    return [dataclasses.replace(config, compiled_peak=peaks.get(config.name)) for config in configs]



def fast_presets(
    robot: str,
    embodiment: str,
    *,
    action_dim: int,
    action_horizon: int,
    max_token_len: int | None = None,
    dataset: str | None = None,
    **common: Any,
) -> list[TrainConfig]:
    """pi0-FAST presets with the reference settings: ``pi0_fast_<robot>`` (full fine-tuning) and
    ``pi0_fast_<robot>_lora`` (gemma_2b_lora; the LLM frozen except its adapters, SigLIP trains; no EMA)."""
    fast = dict(action_dim=action_dim, action_horizon=action_horizon, max_token_len=max_token_len)
    lora_model = model_preset("pi0_fast_lora", **fast)
    return [
        TrainConfig(name=f"pi0_fast_{robot}", embodiment=embodiment, model=model_preset("pi0_fast", **fast),
                    dataset=dataset, description=f"pi0-FAST full fine-tuning on {embodiment}", **common),
        TrainConfig(name=f"pi0_fast_{robot}_lora", embodiment=embodiment, model=lora_model, dataset=dataset,
                    **lora_recipe(lora_model, common.get("batch_size", TrainConfig.batch_size)),
                    description=f"pi0-FAST LoRA fine-tuning on {embodiment} (fits 24 GB GPUs)", **common),
    ]


def fast_cpu_presets(
    robot: str,
    embodiment: str,
    *,
    action_dim: int,
    dataset: str | None = None,
    tiny: dict[str, Any] | None = None,
    small: dict[str, Any] | None = None,
    **common: Any,
) -> list[TrainConfig]:
    """``pi0_fast_<robot>_tiny`` (and with ``small``, ``pi0_fast_<robot>_small``): CPU pi0-FAST models like the
    pi0 ones, chunks of 10, a 128-token sequence (prompt, state as text, action tokens)."""
    rest = {k: v for k, v in common.items() if k not in ("batch_size", "num_train_steps", "lr_schedule")}
    base = {"action_dim": action_dim, "action_horizon": 10, "max_token_len": 128}
    configs = [TrainConfig(
        name=f"pi0_fast_{robot}_tiny", embodiment=embodiment,
        model=dataclasses.replace(model_preset("pi0_fast_tiny"), **(base | (tiny or {}))), dataset=dataset,
        batch_size=16, num_train_steps=3_000, lr_schedule=TINY_SCHEDULE, log_interval=50, save_interval=500,
        keep_period=None, num_workers=2, description=f"tiny pi0-FAST that trains on a CPU in minutes ({embodiment})",
        **rest,
    )]
    if small is not None:
        model = dataclasses.replace(model_preset("pi0_fast_tiny"), paligemma_variant="small", siglip_variant="small",
                                    image_resolution=(64, 64), **(base | small))
        configs.append(TrainConfig(
            name=f"pi0_fast_{robot}_small", embodiment=embodiment, model=model, dataset=dataset, batch_size=16,
            num_train_steps=SMALL_SCHEDULE.decay_steps, lr_schedule=SMALL_SCHEDULE, log_interval=100,
            save_interval=1_000, keep_period=None, num_workers=2,
            description=f"small pi0-FAST (64-wide, 3 layers) for about an hour of CPU training ({embodiment})",
            **rest,
        ))
    return configs


#: The reference's full DROID fine-tune of pi0-FAST (RLDS in the reference; a LeRobot DROID here).
FAST_FULL_DROID_SCHEDULE = ConstantSchedule(lr=5e-5, warmup_steps=1_000)
