"""`pi0cli.export`: tiny pi0 and pi0.5 checkpoints export to ONNX and StableHLO and match the JAX model (its
own sample_actions, same prepared observations, same noise) within 1e-4 in float32."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")


@pytest.mark.slow
@pytest.mark.parametrize("model", ["pi0_tiny", "pi05_tiny"])
@pytest.mark.parametrize("fmt", ["onnx", "stablehlo"])
def test_export_matches_the_jax_model(model, fmt, tiny_checkpoints, aloha_sim, tmp_path):
    from pi0cli.export import ExportOptions, export_checkpoint, verify_artifact

    result = export_checkpoint(tiny_checkpoints[model], tmp_path / "art", embodiment=aloha_sim,
                               options=ExportOptions(fmt, batch_size=2))
    report = verify_artifact(result.directory, tiny_checkpoints[model], embodiment=aloha_sim)
    assert report.tolerance == 1e-4 and report.passed, report.summary()
    assert report.action_scale > 0.1  # a real comparison: the random model's actions are not ~0
    manifest = result.manifest
    assert manifest["model_type"] == model.removesuffix("_tiny") and manifest["embodiment"] == "aloha_sim"
    assert {"pi0_config.json", "norm_stats.json", "tokenizer.model", "embodiment.json", manifest["graph"],
            manifest["weights"]} == set(manifest["files"])
    assert manifest["inputs"][-1] == {"name": "noise", "shape": [2, 10, 32], "dtype": "float32"}


def test_onnx_artifact_layout_and_manifest(onnx_artifact):
    import onnx

    from pi0cli import __version__
    from pi0cli.runtime.manifest import FORMAT, sha256

    manifest = json.loads((onnx_artifact / "manifest.json").read_text())
    assert manifest["format"] == FORMAT and manifest["pi0_version"] == __version__ and manifest["opset"] == 18
    for name, entry in manifest["files"].items():
        assert (onnx_artifact / name).stat().st_size == entry["bytes"]
        assert sha256(onnx_artifact / name) == entry["sha256"]
    # Weights live in the external-data file (the full model passes protobuf's 2 GB limit the same way).
    graph = onnx.load(str(onnx_artifact / "model.onnx"), load_external_data=False).graph
    params = [t for t in graph.initializer if t.name.startswith("params/")]
    assert params and all(t.data_location == onnx.TensorProto.EXTERNAL for t in params)
    assert {e.value for t in params for e in t.external_data if e.key == "location"} == {"weights.bin"}
    onnx.checker.check_model(str(onnx_artifact / "model.onnx"), full_check=True)
    contract = json.loads((onnx_artifact / "embodiment.json").read_text())
    assert contract["name"] == "aloha_sim" and contract["action_dim"] == 14


def test_existing_output_is_refused_without_force(onnx_artifact, tiny_checkpoints, aloha_sim):
    from pi0cli.export import ExportError, ExportOptions, export_checkpoint

    before = (onnx_artifact / "manifest.json").read_bytes()
    with pytest.raises(ExportError, match="already exists; pass --force"):
        export_checkpoint(tiny_checkpoints["pi0_tiny"], onnx_artifact, embodiment=aloha_sim, options=ExportOptions())
    assert (onnx_artifact / "manifest.json").read_bytes() == before


def test_pi0_fast_is_refused_by_name(tmp_path, aloha_sim):
    from pi0cli.checkpoint import checkpoint_config, write_checkpoint_config
    from pi0cli.export import ExportError, ExportOptions, export_checkpoint
    from pi0cli.models.config import preset

    (tmp_path / "ckpt" / "params").mkdir(parents=True)
    write_checkpoint_config(tmp_path / "ckpt" / "pi0_config.json", checkpoint_config(
        model_config=preset("pi0_fast_tiny"), embodiment="aloha_sim", asset_id="aloha_sim"))
    with pytest.raises(ExportError, match="pi0-FAST cannot be exported yet: its decode loop"):
        export_checkpoint(tmp_path / "ckpt", tmp_path / "out", embodiment=aloha_sim, options=ExportOptions())
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_low_precision_export_reports_drift_beside_jax(tiny_checkpoints, aloha_sim, tmp_path):
    from pi0cli.export import ExportOptions, export_checkpoint, verify_artifact

    result = export_checkpoint(tiny_checkpoints["pi0_tiny"], tmp_path / "fp16", embodiment=aloha_sim,
                               options=ExportOptions("onnx", "float16"))
    report = verify_artifact(result.directory, tiny_checkpoints["pi0_tiny"], embodiment=aloha_sim)
    assert report.tolerance is None and report.jax_drift is not None and report.jax_drift > 0
    assert np.isfinite(report.max_abs_diff) and report.passed
    assert "the JAX model's own bfloat16 drift" in report.summary()
