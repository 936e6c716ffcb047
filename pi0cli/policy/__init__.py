"""Inference policies: transforms + model + sampling (``Policy``) and the checkpoint layout they load from.

Names are resolved lazily: importing this package does not import JAX.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pi0cli.policy.loading import load_policy, make_tiny_checkpoint, save_policy_checkpoint
    from pi0cli.policy.policy import Policy, make_transforms

__all__ = ["Policy", "load_policy", "make_tiny_checkpoint", "make_transforms", "save_policy_checkpoint"]

_LAZY = {
    "Policy": "pi0cli.policy.policy",
    "make_transforms": "pi0cli.policy.policy",
    "load_policy": "pi0cli.policy.loading",
    "make_tiny_checkpoint": "pi0cli.policy.loading",
    "save_policy_checkpoint": "pi0cli.policy.loading",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pi0cli.policy' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
