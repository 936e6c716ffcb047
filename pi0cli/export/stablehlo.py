"""Load a StableHLO artifact: ``jax.export.deserialize`` plus its weights, no model code.

The serialized function takes ``(weights: list, batch: dict, noise)`` and returns actions; the weights are
stored in ``weights.npz`` (bfloat16 as its raw bits) in the manifest's ``weight_order``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pi0cli.runtime.manifest import ArtifactError, read_manifest


def load_stablehlo(directory: str | os.PathLike[str], *,
                   check_files: bool = True) -> Callable[[Mapping[str, Any], np.ndarray], np.ndarray]:
    """``run(batch, noise) -> actions`` of StableHLO artifact ``directory`` (checked against its manifest)."""
    import jax
    import ml_dtypes

    path = Path(directory)
    manifest = read_manifest(path, check_files=check_files)
    if manifest.get("export_format") != "stablehlo":
        raise ArtifactError(f"{path} holds a {manifest.get('export_format')} export, not stablehlo; load it with "
                            "pi0cli.runtime.load_artifact")
    try:
        exported = jax.export.deserialize(bytearray((path / str(manifest["graph"])).read_bytes()))
    except Exception as exc:  # noqa: BLE001 - a damaged or too-new serialization: one line
        raise ArtifactError(f"jax {jax.__version__} cannot deserialize {path / str(manifest['graph'])} ({exc}); "
                            f"it was written by jax {manifest.get('jax_version')}") from None
    with np.load(path / str(manifest["weights"]), allow_pickle=False) as npz:
        weights = []
        for name, dtype in zip(manifest["weight_order"], manifest["weight_dtypes"], strict=True):
            array = npz[name]
            weights.append(array.view(ml_dtypes.bfloat16) if dtype == "bfloat16" else array)
    names = [spec["name"] for spec in manifest["inputs"] if spec["name"] != "noise"]

    def run(batch: Mapping[str, Any], noise: np.ndarray) -> np.ndarray:
        from pi0cli.transforms import lookup, unflatten

        flat = {name: np.asarray(lookup(batch, name), dtype=spec["dtype"])
                for name, spec in zip(names, manifest["inputs"], strict=False)}
        return np.asarray(exported.call(weights, unflatten(flat), np.asarray(noise, np.float32)))

    return run
