"""Freeze filters for fine-tuning (NNX filters over parameter paths in the reference naming).

Modes: ``full`` (nothing frozen), ``lora_vlm`` (freeze the VLM's LLM weights), ``lora_expert`` (freeze the action
expert's weights, the ``_1`` names under ``llm``), ``lora_both`` (freeze all LLM weights). LoRA weights
(``lora`` in the name) always train. ``freeze_vision`` additionally freezes the SigLIP encoder (``img``).
Use: ``nnx.Optimizer(model, tx, wrt=trainable_filter(...))``.
"""

from __future__ import annotations

import re

from flax import nnx

from pi0cli.errors import UnknownNameError
from pi0cli.models.config import FREEZE_MODES, FreezeMode, Pi0Config

__all__ = ["FREEZE_MODES", "FreezeMode", "PathRegex", "freeze_filter", "freeze_mode_for", "trainable_filter"]


class PathRegex:
    """NNX filter: the ``/``-joined parameter path fully matches ``pattern``."""

    def __init__(self, pattern: str):
        self.pattern = pattern
        self._re = re.compile(pattern)

    def __call__(self, path, value) -> bool:
        return self._re.fullmatch("/".join(str(p) for p in path)) is not None

    def __repr__(self) -> str:
        return f"PathRegex({self.pattern!r})"


_LLM = PathRegex(r".*llm.*")
_EXPERT = PathRegex(r".*llm.*_1.*")  # every action-expert name under llm carries the _1 suffix
_IMG = PathRegex(r".*img.*")
_LORA = PathRegex(r".*lora.*")


def freeze_filter(mode: str = "full", *, freeze_vision: bool = False):
    """Filter selecting the frozen parameters (``nnx.Nothing`` when nothing is frozen)."""
    if mode not in FREEZE_MODES:
        raise UnknownNameError("freeze mode", mode, FREEZE_MODES)
    parts: list[nnx.filterlib.Filter] = []
    if mode == "lora_vlm":
        parts.append(nnx.All(_LLM, nnx.Not(_EXPERT)))
    elif mode == "lora_expert":
        parts.append(_EXPERT)
    elif mode == "lora_both":
        parts.append(_LLM)
    if freeze_vision:
        parts.append(_IMG)
    if not parts:
        return nnx.Nothing
    return nnx.All(nnx.Param, nnx.Any(*parts), nnx.Not(_LORA))


def trainable_filter(mode: str = "full", *, freeze_vision: bool = False):
    """Filter selecting the trained parameters: every ``nnx.Param`` not frozen by ``freeze_filter``."""
    frozen = freeze_filter(mode, freeze_vision=freeze_vision)
    return nnx.Param if frozen is nnx.Nothing else nnx.All(nnx.Param, nnx.Not(frozen))


def freeze_mode_for(config: Pi0Config) -> FreezeMode:
    """The reference's choice: freeze the LLM weights of whichever experts carry LoRA adapters. The model's
    family decides (pi0-FAST has only the VLM: its action expert variant is ignored)."""
    return config.family.freeze_mode(config)
