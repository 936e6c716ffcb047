"""Tiny random-weight pi0 and pi0.5 checkpoints for ALOHA sim and their exported artifacts (session-wide:
exporting traces and converts the whole model, a few seconds each)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory, aloha_sim) -> dict[str, Path]:
    from pi0cli.testing import make_tiny_checkpoint, tiny_model_config

    root = tmp_path_factory.mktemp("export-ckpt")
    return {model: make_tiny_checkpoint(root / model, aloha_sim, model_config=tiny_model_config(aloha_sim, model))
            for model in ("pi0_tiny", "pi05_tiny")}


@pytest.fixture(scope="session")
def onnx_artifact(tmp_path_factory, tiny_checkpoints, aloha_sim) -> Path:
    """The tiny pi0 checkpoint exported to ONNX (batch 1, float32)."""
    from pi0cli.export import ExportOptions, export_checkpoint

    out = tmp_path_factory.mktemp("export-art") / "pi0_onnx"
    return export_checkpoint(tiny_checkpoints["pi0_tiny"], out, embodiment=aloha_sim,
                             options=ExportOptions("onnx")).directory
