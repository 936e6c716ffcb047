"""Initial weights for fine-tuning: a pi0 checkpoint, a reference (openpi) checkpoint, or a big_vision
PaliGemma ``.npz`` for the backbone.

Checkpoint weights must cover the whole model except LoRA adapters (initialised fresh when missing, so a
full-weight checkpoint can start a LoRA run); a PaliGemma ``.npz`` covers only the vision tower and the VLM,
and the action expert and projections keep their fresh initialisation. Anything else missing, unexpected or of
the wrong shape is an error naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pi0cli.errors import Pi0Error
from pi0cli.models.params import ParamTreeError, export_flat, flatten, import_params, unflatten

if TYPE_CHECKING:
    from pi0cli.models.pi0 import Pi0


class WeightsError(Pi0Error):
    """Initial weights that cannot be found or read."""


def params_dir(path: Path) -> Path:
    """The orbax ``params`` item of a checkpoint directory (a step dir, or the item itself)."""
    path = Path(path).absolute()
    if (path / "params").is_dir():
        return path / "params"
    if path.name == "params" and path.is_dir():
        return path
    raise WeightsError(
        f"{path} is not a checkpoint: expected a directory with a params/ item "
        "(a pi0 or openpi checkpoint step, e.g. checkpoints/<preset>/<exp>/<step>)"
    )


def read_checkpoint_params(path: Path) -> dict[str, Any]:
    """The reference-named parameter tree of a pi0 or openpi checkpoint, flat, as numpy arrays."""
    from pi0cli.checkpoint import read_params

    return {k: np.asarray(v) for k, v in flatten(read_params(params_dir(path))).items()}


def read_paligemma_npz(path: Path) -> dict[str, np.ndarray]:
    """A big_vision PaliGemma ``.npz`` (flat ``params/img/...``, ``params/llm/...`` keys), renamed into the
    ``PaliGemma/...`` naming of the pi0 model."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read {path} as a PaliGemma .npz: {exc}") from None
    out = {}
    for key in data.files:
        name = key.removeprefix("params/")
        if not name.startswith(("img/", "llm/")):
            raise WeightsError(f"{path}: unexpected key {key!r}; a PaliGemma .npz holds params/img/... and "
                               "params/llm/...")
        out[f"PaliGemma/{name}"] = data[key]
    return out


def load_initial_weights(model: Pi0, source: str | Path) -> None:
    """Load ``source`` into ``model`` in place (see the module docstring for what may be missing)."""
    source = Path(source)
    if not source.exists():
        raise WeightsError(f"--from {source}: no such file or directory (remote checkpoints must be downloaded first)")
    if source.suffix == ".npz":
        loaded = read_paligemma_npz(source)
        current = export_flat(model)
        unknown = sorted(set(loaded) - set(current))
        if unknown:
            raise ParamTreeError([f"unexpected key {k!r}; the model has no such parameter" for k in unknown],
                                 "use a PaliGemma checkpoint of the model's variant")
        missing_vlm = sorted(k for k in current if k.startswith("PaliGemma/") and k not in loaded
                             and not _expert_or_lora(k))
        if missing_vlm:
            raise ParamTreeError([f"missing key {k!r}" for k in missing_vlm], "the .npz does not cover the whole VLM")
        merged = {k: loaded.get(k, np.asarray(v)) for k, v in current.items()}
        import_params(model, unflatten(merged))
        return
    import_params(model, unflatten(read_checkpoint_params(source)), missing_ok=("lora",))


def _expert_or_lora(key: str) -> bool:
    """Keys a PaliGemma checkpoint cannot have: the action expert's (``_1`` suffixed names) and LoRA's."""
    return "lora" in key or any(part.endswith("_1") and not part.startswith(("LayerNorm", "Dense", "MlpBlock"))
                                for part in key.split("/"))
