"""The exported-artifact layout and its manifest: written by :mod:`pi0cli.export`, checked by the runtime.

An artifact directory::

    manifest.json      {"format": "pi0-artifact/1", "pi0_version", "export_format": "onnx" | "stablehlo",
                        "opset", "dtype", "batch_size", "num_steps", "model_type", "embodiment",
                        "graph": file name, "inputs"/"outputs": [{"name", "shape", "dtype"}],
                        "files": {name: {"sha256", "bytes"}}}
    model.onnx + weights.bin          (onnx: the graph and its external-data weights)
    model.stablehlo + weights.npz     (stablehlo: jax.export serialization; the weights are its first argument)
    pi0_config.json    the checkpoint's config (model config, embodiment, asset id, default prompt, delta mask)
    norm_stats.json    the norm stats the policy normalises with
    tokenizer.model    the sentencepiece prompt tokenizer
    embodiment.json    the embodiment's contract (dims, cameras, control rate), checked against the registered one

Every file but the manifest is listed with its size and sha256, so a truncated, corrupted or missing file is
named before any of it is used. No JAX here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pi0cli.errors import Pi0Error

MANIFEST = "manifest.json"
FORMAT = "pi0-artifact/1"
CONFIG = "pi0_config.json"
NORM_STATS = "norm_stats.json"
TOKENIZER = "tokenizer.model"
CONTRACT = "embodiment.json"


class ArtifactError(Pi0Error):
    """An exported artifact that is missing, damaged or of another format version."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entries(directory: Path) -> dict[str, dict[str, Any]]:
    """``{name: {"sha256", "bytes"}}`` of every file in ``directory`` except the manifest."""
    return {p.name: {"sha256": sha256(p), "bytes": p.stat().st_size}
            for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST}


def write_manifest(directory: Path, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``manifest.json`` (``fields`` plus the format and the file list) last, after every other file."""
    manifest = {"format": FORMAT, **fields, "files": file_entries(directory)}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(directory: str | Path, *, check_files: bool = True) -> dict[str, Any]:
    """The manifest of artifact ``directory``, its format version and (``check_files``) every file checked.

    One :class:`ArtifactError` names the first problem: no manifest, another format version, a missing file
    (an ONNX external-data file included), a file of the wrong size (truncated) or checksum (corrupted).
    """
    directory = Path(directory)
    file = directory / MANIFEST
    if not file.is_file():
        raise ArtifactError(f"{directory} has no {MANIFEST}: not a pi0 artifact; export one with "
                            "`pi0 export CHECKPOINT --out DIR`")
    try:
        manifest = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{file} is not valid JSON ({exc}); re-export the artifact") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{file} is not a JSON object; re-export the artifact")
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{directory} is artifact format {manifest.get('format')!r} but this pi0 reads {FORMAT!r}; "
                            "re-export it with this pi0 version (`pi0 export CHECKPOINT --out DIR --force`)")
    if check_files:
        check_files_of(directory, manifest)
    return manifest


def check_files_of(directory: Path, manifest: Mapping[str, Any]) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{directory / MANIFEST} lists no files; re-export the artifact")
    for name, entry in files.items():
        path = directory / name
        if not path.is_file():
            what = "external-data file of the ONNX graph" if name.endswith(".bin") else "file"
            raise ArtifactError(f"artifact {directory} lacks its {what} {name}; copy the whole artifact directory "
                                "(every file the manifest lists), or re-export it")
        size = path.stat().st_size
        if size != entry.get("bytes"):
            raise ArtifactError(f"artifact file {path} has {size} bytes but the manifest says {entry.get('bytes')} "
                                "(truncated or replaced); copy it again or re-export the artifact")
        if sha256(path) != entry.get("sha256"):
            raise ArtifactError(f"artifact file {path} does not match its sha256 checksum (corrupted); copy it "
                                "again or re-export the artifact")
