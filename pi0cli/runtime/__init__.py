"""Run an exported artifact without JAX or Flax: ``load_artifact(dir).infer(observation)["actions"]``.

Needs only numpy, sentencepiece and onnxruntime (``pip install 'pi0[onnx]'``); names resolve lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pi0cli import lazy_attributes

if TYPE_CHECKING:
    from pi0cli.runtime.manifest import ArtifactError, read_manifest
    from pi0cli.runtime.onnx_policy import load_artifact

__all__ = ["ArtifactError", "load_artifact", "read_manifest"]

_LAZY = {
    "ArtifactError": "pi0cli.runtime.manifest",
    "read_manifest": "pi0cli.runtime.manifest",
    "load_artifact": "pi0cli.runtime.onnx_policy",
}

__getattr__ = lazy_attributes(__name__, _LAZY)
