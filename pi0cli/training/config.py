"""Training configuration (frozen, JAX-free) and the named presets the robot plugins register.

Defaults follow the reference: batch 32, 30k steps, seed 42, AdamW (b1 0.9, b2 0.95, eps 1e-8, weight decay
1e-10) after global-norm clipping at 1.0, warmup-cosine learning rate (1k warmup to 2.5e-5, down to 2.5e-6 at
30k), EMA 0.99 of the parameters, checkpoints every 1000 steps keeping every 5000th.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from pi0cli.errors import Pi0Error
from pi0cli.models.config import FREEZE_MODES, FreezeMode, Pi0Config
from pi0cli.training.peaks import PresetPeak


class TrainConfigError(Pi0Error, ValueError):
    """A training configuration that contradicts itself."""


@dataclasses.dataclass(frozen=True)
class CosineDecaySchedule:
    """Linear warmup from ``peak_lr / (warmup_steps + 1)`` to ``peak_lr``, then cosine down to ``decay_lr`` at
    ``decay_steps`` (warmup included)."""

    warmup_steps: int = 1_000
    peak_lr: float = 2.5e-5
    decay_steps: int = 30_000
    decay_lr: float = 2.5e-6


@dataclasses.dataclass(frozen=True)
class RsqrtDecaySchedule:
    """Linear warmup, then ``peak_lr / sqrt(step / timescale)``-style decay."""

    warmup_steps: int = 1_000
    peak_lr: float = 5e-5
    timescale: float = 10_000


@dataclasses.dataclass(frozen=True)
class ConstantSchedule:
    """Linear warmup to ``lr``, then constant."""

    lr: float = 5e-5
    warmup_steps: int = 0


Schedule = CosineDecaySchedule | RsqrtDecaySchedule | ConstantSchedule


@dataclasses.dataclass(frozen=True)
class AdamW:
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 1e-10
    clip_gradient_norm: float = 1.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs besides the data on disk."""

    name: str
    embodiment: str
    model: Pi0Config
    #: LeRobot dataset: a local root or a repo id in the local cache (``--dataset`` overrides).
    dataset: str | None = None
    batch_size: int = 32
    num_train_steps: int = 30_000
    seed: int = 42
    lr_schedule: Schedule = CosineDecaySchedule()
    optimizer: AdamW = AdamW()
    #: ``None`` disables the EMA; the checkpoint's ``params`` item then holds the raw parameters.
    ema_decay: float | None = 0.99
    #: which weights train: everything, or LoRA adapters on the VLM / the expert / both.
    freeze: FreezeMode = "full"
    freeze_vision: bool = False
    #: weights to start from: None (random), a pi0 or openpi checkpoint dir, or a PaliGemma ``.npz``.
    init_from: str | None = None
    log_interval: int = 100
    save_interval: int = 1_000
    keep_period: int | None = 5_000
    max_to_keep: int = 1
    num_workers: int = 2
    fsdp_devices: int = 1
    #: arrays smaller than this stay replicated under FSDP (tests lower it to shard tiny models).
    fsdp_min_bytes: int = 4 * 2**20
    #: micro-batches per step: the same step as one whole batch (gradients averaged), less activation memory.
    grad_accum_steps: int = 1
    #: storage dtype of Adam's moments, and of the EMA (bfloat16: kept as an offset from the parameters).
    moment_dtype: Literal["float32", "bfloat16"] = "float32"
    ema_dtype: Literal["float32", "bfloat16"] = "float32"
    #: overrides the embodiment's delta mask (``()`` turns delta actions off).
    delta_action_mask: tuple[bool, ...] | None = None
    default_prompt: str | None = None
    #: key -> value sent to clients on connect when this checkpoint is served.
    policy_metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    description: str = ""
    #: compiled peak memory, from the peaks.json its plugin ships (:mod:`pi0cli.training.peaks`)
    compiled_peak: PresetPeak | None = None

    def __post_init__(self) -> None:
        def fail(problem: str) -> None:
            raise TrainConfigError(f"train config {self.name!r}: {problem}")

        for field in ("batch_size", "num_train_steps", "log_interval", "save_interval", "max_to_keep", "fsdp_devices",
                      "grad_accum_steps"):
            if getattr(self, field) <= 0:
                fail(f"{field.replace('_', '-')} must be positive, got {getattr(self, field)}")
        if self.batch_size % self.grad_accum_steps:
            fail(f"batch-size {self.batch_size} is not a multiple of grad-accum-steps {self.grad_accum_steps}")
        for field in ("moment_dtype", "ema_dtype"):
            if getattr(self, field) not in ("float32", "bfloat16"):
                fail(f"{field.replace('_', '-')} must be float32 or bfloat16, got {getattr(self, field)!r}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            fail(f"ema-decay must be in [0, 1), got {self.ema_decay}")
        if self.freeze not in FREEZE_MODES:
            fail(f"freeze must be full, lora_vlm, lora_expert or lora_both, got {self.freeze!r}")
        family = self.model.family
        if self.freeze not in family.freeze_modes:
            fail(f"freeze={self.freeze} is not a {family.name} freeze mode (it has {', '.join(family.freeze_modes)}); "
                 f"a LoRA run of it freezes with {family.freeze_mode(self.model)} (use --lora)")
        if self.freeze != "full":
            needs = {"lora_vlm": ("vlm",), "lora_expert": ("expert",), "lora_both": ("vlm", "expert")}[self.freeze]
            for part in needs:
                cfg = self.model.vlm if part == "vlm" else self.model.expert
                if cfg.attn_lora is None and cfg.ffn_lora is None:
                    fail(f"freeze={self.freeze} needs a LoRA {part} variant; the model's is not LoRA (use --lora)")


def lora_recipe(model: Pi0Config, batch_size: int) -> dict[str, Any]:
    """The fields of a LoRA run of ``model`` at ``batch_size``, decided here once for ``pi0 train --lora`` and
    the ``*_lora`` presets: the model family's freeze mode for its LoRA variants (pi0-FAST, which has no action
    expert: ``lora_vlm``), no EMA, and the family's micro-batches (pi0.5: two, for its 200-token prompts)."""
    family = model.family
    return {"freeze": family.freeze_mode(model), "ema_decay": None,
            "grad_accum_steps": family.lora_grad_accum_steps(model, batch_size)}
