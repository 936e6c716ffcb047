"""Parity of an exported artifact with the JAX model it came from: same prepared observations, same noise.

The reference is the checkpoint's own ``Pi0.sample_actions`` (its while loop, KV cache) in float32. A float32
export must match it within :data:`FP32_TOLERANCE` on the (model-space) actions. A bfloat16 / float16 export
is reported beside the JAX model's own drift when run in bfloat16, the yardstick for what low precision costs.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from pi0cli.runtime.manifest import read_manifest
from pi0cli.runtime.noise import policy_noise

if TYPE_CHECKING:
    from pi0cli.embodiment import Embodiment

#: Largest allowed |artifact - JAX| on the actions of a float32 export.
FP32_TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    dtype: str
    max_abs_diff: float  # artifact vs the float32 JAX model
    jax_drift: float | None  # the JAX model in bfloat16 vs in float32 (low-precision exports only)
    tolerance: float | None  # None: reported, not enforced (low precision)
    action_scale: float  # max |action| of the reference, to read the differences against

    @property
    def passed(self) -> bool:
        if not np.isfinite(self.max_abs_diff):
            return False
        return self.tolerance is None or self.max_abs_diff <= self.tolerance

    def summary(self) -> str:
        text = f"max |artifact - JAX float32| = {self.max_abs_diff:.3g} on actions up to {self.action_scale:.3g}"
        if self.tolerance is not None:
            return text + f" (tolerance {self.tolerance:g}: {'ok' if self.passed else 'FAILED'})"
        drift = "n/a" if self.jax_drift is None else f"{self.jax_drift:.3g}"
        return text + f"; the JAX model's own bfloat16 drift: {drift}"


def verify_artifact(artifact: str | os.PathLike[str], checkpoint: str | os.PathLike[str], *, embodiment: Embodiment,
                    seed: int = 0) -> VerifyReport:
    """Run ``artifact`` and the JAX model of ``checkpoint`` on the embodiment's example observations."""
    import dataclasses as dc

    from pi0cli.export.sampling import reference_actions
    from pi0cli.models.params import build_any_model, export_params
    from pi0cli.policy.load import load_training_pipeline
    from pi0cli.policy.policy import MODEL_KEYS, make_transforms
    from pi0cli.transforms import stack_trees

    path = Path(artifact)
    manifest = read_manifest(path)
    batch_size, num_steps, dtype = int(manifest["batch_size"]), int(manifest["num_steps"]), str(manifest["dtype"])
    module, pipeline = load_training_pipeline(checkpoint, embodiment=embodiment)
    config = module.config
    mask = pipeline.delta_action_mask
    inputs, _ = make_transforms(embodiment, config, pipeline.norm_stats or {}, tokenizer=pipeline.tokenizer,
                                default_prompt=pipeline.default_prompt, delta_action_mask=list(mask or []))
    prepared = [inputs({"prompt": embodiment.default_prompt or "do the task", **embodiment.example_observation(i)})
                for i in range(batch_size)]
    batch = stack_trees([{k: p[k] for k in MODEL_KEYS if k in p} for p in prepared])
    noise = policy_noise(seed, 0, (batch_size, config.action_horizon, config.action_dim))

    params: Any = None

    def model_in(compute: Literal["float32", "bfloat16"]) -> Any:
        """The checkpoint's model computing in ``compute`` (weights in float32 for float32, else bfloat16)."""
        nonlocal params
        weights: Literal["float32", "bfloat16"] = "float32" if compute == "float32" else "bfloat16"
        if (config.dtype, config.param_dtype) == (compute, weights):
            return module
        params = params if params is not None else export_params(cast("Any", module))
        return build_any_model(dc.replace(config, dtype=compute, param_dtype=weights), params)

    reference = reference_actions(model_in("float32"), batch, noise, num_steps)
    got = run_artifact(path, manifest, batch, noise)
    diff = float(np.max(np.abs(got.astype(np.float64) - reference)))
    drift = None
    if dtype != "float32":
        low = reference_actions(model_in("bfloat16"), batch, noise, num_steps)
        drift = float(np.max(np.abs(low.astype(np.float64) - reference)))
    return VerifyReport(dtype, diff if np.isfinite(diff) else float("inf"), drift,
                        FP32_TOLERANCE if dtype == "float32" else None, float(np.max(np.abs(reference))))


def run_artifact(path: Path, manifest: dict[str, Any], batch: Any, noise: np.ndarray) -> np.ndarray:
    """The artifact's actions for a prepared ``batch`` and ``noise`` (ONNX Runtime or deserialized StableHLO)."""
    if manifest["export_format"] == "onnx":
        from pi0cli.runtime.onnx_policy import OnnxSampler

        return OnnxSampler(path / str(manifest["graph"]), manifest).run(batch, noise)
    from pi0cli.export.stablehlo import load_stablehlo

    return load_stablehlo(path, check_files=False)(batch, noise)
