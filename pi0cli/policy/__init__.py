"""Inference policies: transforms + model + sampling (``Policy``), and loading one from a checkpoint.

Names are resolved lazily: importing this package does not import JAX. The checkpoint layout itself is
:mod:`pi0cli.checkpoint`; random-weight test checkpoints are :func:`pi0cli.testing.make_tiny_checkpoint`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pi0cli import lazy_attributes

if TYPE_CHECKING:
    from pi0cli.policy.load import load_policy
    from pi0cli.policy.policy import Policy, make_transforms

__all__ = ["Policy", "load_policy", "make_transforms"]

_LAZY = {
    "Policy": "pi0cli.policy.policy",
    "make_transforms": "pi0cli.policy.policy",
    "load_policy": "pi0cli.policy.load",
}


__getattr__ = lazy_attributes(__name__, _LAZY)
