"""Each training decision is made in one place: the LoRA recipe (freeze mode, accumulation, EMA) for ``--lora``
and the ``*_lora`` presets alike, and the memory planner's first rung is the preset's own plan."""

from __future__ import annotations

import dataclasses

import pytest

from pi0cli.plugins.manager import get_registry
from pi0cli.training.launch import resolve_config


@pytest.fixture(scope="module")
def registry():
    return get_registry()


def test_pi0_fast_lora_freezes_the_vlm_not_a_missing_expert(registry):
    """``pi0 train --embodiment ur5 --model pi0_fast --lora`` used to fail with "freeze=lora_both needs a LoRA
    expert variant ... (use --lora)": pi0-FAST has no action expert, so its LoRA run freezes the VLM."""
    config = resolve_config(None, embodiment=registry.embodiment("ur5"), model="pi0_fast", lora=True)
    assert config.freeze == "lora_vlm" and config.ema_decay is None
    assert config.model.paligemma_variant == "gemma_2b_lora"
    # The same recipe as the pi0_fast_*_lora presets.
    preset = registry.preset("pi0_fast_droid_lora")
    assert (preset.freeze, preset.ema_decay, preset.grad_accum_steps) == (config.freeze, None, config.grad_accum_steps)


def test_a_freeze_mode_the_family_lacks_names_the_one_it_has(registry):
    from pi0cli.training.config import TrainConfigError

    config = resolve_config(None, embodiment=registry.embodiment("ur5"), model="pi0_fast", lora=True)
    with pytest.raises(TrainConfigError, match="not a pi0_fast freeze mode.*lora_vlm"):
        dataclasses.replace(config, freeze="lora_both")


@pytest.mark.parametrize("model", ["pi0", "pi05"])
def test_lora_flag_and_lora_preset_agree(registry, model):
    """``--model pi05 --lora`` used to get grad_accum_steps=1 where the ``pi05_*_lora`` presets get 2."""
    for robot in ("droid", "libero", "aloha"):
        preset = registry.preset(f"{model}_{robot}_lora")
        flags = resolve_config(None, embodiment=registry.embodiment(preset.embodiment), model=model, lora=True,
                               batch_size=preset.batch_size)
        assert (flags.freeze, flags.grad_accum_steps, flags.ema_decay) == \
            (preset.freeze, preset.grad_accum_steps, preset.ema_decay), robot
        assert flags.model == preset.model
    expected = 2 if model == "pi05" else 1
    assert resolve_config(None, embodiment=registry.embodiment("ur5"), model=model, lora=True).grad_accum_steps \
        == expected
    # An odd batch cannot split in two: one micro-batch, not an error.
    odd = resolve_config(None, embodiment=registry.embodiment("ur5"), model=model, lora=True, batch_size=3)
    assert odd.grad_accum_steps == 1


def test_the_planner_starts_from_the_presets_own_plan(registry):
    """``planner.ladder`` rebuilt its first rung by hand and dropped a preset's token-chunked MLPs and its
    micro-batches; now every rung keeps them (and only adds trades), and so does the chosen config."""
    from pi0cli.training.planner import ladder, plan_memory

    preset = registry.preset("pi05_droid_lora")
    assert preset.model.mlp_chunk == 256 and preset.grad_accum_steps == 2
    rungs = ladder(preset, devices=1)
    assert rungs[0].mlp_chunk == 256 and rungs[0].grad_accum_steps == 2
    assert rungs[0].remat_llm == rungs[0].remat_vision == "none"  # remat is what the ladder chooses
    assert all(r.mlp_chunk == 256 and r.grad_accum_steps >= 2 for r in rungs)
    assert [r.grad_accum_steps for r in rungs if r.grad_accum_steps > 2] == [4, 8, 16, 32]

    compiled = []

    def compile_peak(config):  # every plan fits: the first rung is chosen
        compiled.append(config)
        return 1, "cpu", "fake"

    result = plan_memory(preset, 2**40, compile_peak=compile_peak)
    assert result.plan == rungs[0]
    assert result.config.model.mlp_chunk == 256 and result.config.grad_accum_steps == 2
    assert compiled[0].model.mlp_chunk == 256 and compiled[0].grad_accum_steps == 2

    # A budget only the accumulation rungs meet: the walk starts after the preset's own accumulation.
    def accumulation_fits(config):
        return (1 if config.grad_accum_steps >= 8 else 2**41), "cpu", "fake"

    chosen = plan_memory(preset, 2**40, compile_peak=accumulation_fits)
    assert chosen.config.grad_accum_steps == 8 and chosen.config.model.mlp_chunk == 256


@pytest.mark.parametrize("steps", [1, 2, 5, 30])
def test_any_step_count_gives_a_schedule_optax_accepts(steps):
    """`pi0 train --steps N` shortens the preset's schedule; even one step leaves one step after the warmup."""
    from pi0cli.training.optimizer import make_schedule

    base = get_registry().preset("pi0_aloha_sim_tiny")
    schedule = resolve_config(base, steps=steps).lr_schedule
    assert schedule.decay_steps == steps and 0 <= schedule.warmup_steps < steps
    lr = make_schedule(schedule)
    assert float(lr(0)) > 0 and float(lr(steps - 1)) > 0
