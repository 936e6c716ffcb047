"""Parameter trees in the reference (openpi) naming: export from and import into a ``Pi0``.

The NNX modules are named after the reference tree, so the nested dict of a model's ``nnx.Param`` values *is*
the reference layout: ``PaliGemma/img/...`` (SigLIP, blocks stacked on axis 0), ``PaliGemma/llm/...`` (Gemma,
layers stacked on axis 0, action-expert names suffixed ``_1``) and the top-level projections
(``action_in_proj/{kernel,bias}``...). Trained reference checkpoints wrap each leaf in ``{"value": leaf}``;
``import_params`` strips that. Mismatches are reported key by key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pi0cli.errors import Pi0Error
from pi0cli.transforms import flatten, strip_value_leaves, unflatten

if TYPE_CHECKING:
    from pi0cli.models.config import Pi0Config
    from pi0cli.models.families import PolicyModel
    from pi0cli.models.pi0 import Pi0

__all__ = [
    "ParamTreeError", "build_any_model", "build_model", "check_params", "count_params", "export_flat",
    "export_params", "flatten", "import_params", "strip_value_leaves", "unflatten",
]


class ParamTreeError(Pi0Error, ValueError):
    """A parameter tree whose keys or shapes do not match the model's."""

    def __init__(self, problems: list[str], hint: str):
        self.problems = problems
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        super().__init__(f"parameter tree does not match the model ({len(problems)} problem(s)):\n  "
                         + "\n  ".join(shown) + f"\n{hint}")


def export_params(model: nnx.Module) -> dict[str, Any]:
    """The model's weights as a nested dict in the reference naming (jax arrays)."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def export_flat(model: nnx.Module) -> dict[str, Any]:
    """``export_params`` flattened to ``/``-joined keys (the layout of big_vision ``.npz`` files)."""
    return flatten(export_params(model))


def _shape(x) -> tuple[int, ...]:
    return tuple(np.shape(x)) if not hasattr(x, "shape") else tuple(x.shape)


def check_params(
    model: nnx.Module, params: Mapping[str, Any], *, missing_ok: Iterable[str] = ()
) -> tuple[dict[str, Any], list[str]]:
    """Compare ``params`` (nested, reference naming) with the model: returns (flat params, allowed missing keys).

    Raises ``ParamTreeError`` listing every missing, unexpected or wrongly shaped key. Keys containing one of
    ``missing_ok`` (e.g. ``"lora"``) may be missing; they keep the model's current values.
    """
    want = export_flat(model)
    got = flatten(strip_value_leaves(params))
    missing_ok = tuple(missing_ok)
    problems, allowed = [], []
    for key in sorted(want):
        if key not in got:
            if any(tag in key for tag in missing_ok):
                allowed.append(key)
            else:
                problems.append(f"missing key {key!r} (model expects shape {_shape(want[key])})")
        elif _shape(got[key]) != _shape(want[key]):
            problems.append(f"key {key!r} has shape {_shape(got[key])}, model expects {_shape(want[key])}")
    for key in sorted(set(got) - set(want)):
        problems.append(f"unexpected key {key!r} (shape {_shape(got[key])}); the model has no such parameter")
    if problems:
        raise ParamTreeError(
            problems,
            "check that the checkpoint matches the model config (model_type pi0/pi05, Gemma/SigLIP variants, "
            "action_dim, image resolution)",
        )
    return got, allowed


def import_params(model: nnx.Module, params: Mapping[str, Any], *, missing_ok: Iterable[str] = ()) -> None:
    """Load reference-named ``params`` into ``model`` in place (cast to the model's parameter dtypes).

    Trailing ``value`` leaves are tolerated. Raises ``ParamTreeError`` naming every bad key; nothing is written
    unless the whole tree matches.
    """
    got, allowed = check_params(model, params, missing_ok=missing_ok)
    current = export_flat(model)
    merged = {k: (current[k] if k in allowed else jnp.asarray(got[k], dtype=current[k].dtype)) for k in current}
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, unflatten(merged))
    nnx.update(model, state)


def count_params(tree: Mapping[str, Any] | Any) -> int:
    """Number of scalars in a (possibly abstract) pytree of arrays."""
    return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(tree)))


def build_model(model_config: Pi0Config, params: Mapping[str, Any]) -> Pi0:
    """A ``Pi0`` holding ``params`` (built abstractly first: no random initialisation of the full model)."""
    from pi0cli.models.pi0 import Pi0

    if model_config.fast:
        raise ParamTreeError([f"model_type {model_config.model_type!r}"], "build it with build_any_model")
    model = nnx.eval_shape(lambda: Pi0(model_config, nnx.Rngs(0)))
    import_params(model, params)
    return model


def build_any_model(model_config: Pi0Config, params: Mapping[str, Any]) -> PolicyModel:
    """The model of ``model_config.model_type``'s family (``Pi0``, ``Pi0FAST``, ...) holding ``params``."""
    family = model_config.family
    model = nnx.eval_shape(lambda: family.build(model_config, nnx.Rngs(0)))
    import_params(cast("nnx.Module", model), params)
    return model
