"""Export a pi0 / pi0.5 checkpoint to an artifact directory (ONNX or StableHLO) and check its parity.

Names resolve lazily (the exporters import JAX; :mod:`pi0cli.runtime` runs the ONNX artifact without it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pi0cli import lazy_attributes

if TYPE_CHECKING:
    from pi0cli.export.export import ExportError, ExportOptions, ExportResult, export_checkpoint
    from pi0cli.export.stablehlo import load_stablehlo
    from pi0cli.export.verify import VerifyReport, verify_artifact

__all__ = ["ExportError", "ExportOptions", "ExportResult", "VerifyReport", "export_checkpoint", "load_stablehlo",
           "verify_artifact"]

_LAZY = {
    "ExportError": "pi0cli.export.export",
    "ExportOptions": "pi0cli.export.export",
    "ExportResult": "pi0cli.export.export",
    "export_checkpoint": "pi0cli.export.export",
    "load_stablehlo": "pi0cli.export.stablehlo",
    "VerifyReport": "pi0cli.export.verify",
    "verify_artifact": "pi0cli.export.verify",
}

__getattr__ = lazy_attributes(__name__, _LAZY)
