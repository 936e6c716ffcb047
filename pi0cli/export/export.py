"""Export a pi0 / pi0.5 checkpoint to a self-contained artifact directory (layout: :mod:`pi0cli.runtime.manifest`).

    checkpoint -> load_training_pipeline (weights, norm stats, tokenizer, transforms' settings)
               -> rebuild unrolled (pi0cli.export.sampling) -> trace prepared inputs + noise -> actions
               -> onnx: our jaxpr converter, weights as external data | stablehlo: jax.export serialization
               -> config, norm stats, tokenizer, embodiment contract -> manifest (sizes, sha256) last

Written into a temporary sibling directory renamed into place at the end: a reader never sees half an
artifact. pi0-FAST is refused: its token-by-token decode loop (a data-dependent stop at EOS, a growing KV
cache) is not a fixed-shape graph.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pi0cli import __version__
from pi0cli.checkpoint import (
    atomic_directory,
    checkpoint_config,
    model_config_of,
    read_checkpoint_config,
    read_tokenizer,
    resolve_step,
)
from pi0cli.errors import Pi0Error
from pi0cli.normstats import save_norm_stats
from pi0cli.runtime.manifest import CONFIG, CONTRACT, NORM_STATS, TOKENIZER, write_manifest

if TYPE_CHECKING:
    from pi0cli.embodiment import Embodiment
    from pi0cli.models.config import Pi0Config

Format = Literal["onnx", "stablehlo"]
DType = Literal["float32", "bfloat16", "float16"]
FORMATS: tuple[str, ...] = ("onnx", "stablehlo")
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")


class ExportError(Pi0Error):
    """A checkpoint or request that cannot be exported as asked."""


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """What to export: the format, the graph's compute dtype, its fixed batch size and denoising steps."""

    format: Format = "onnx"
    dtype: DType = "float32"
    batch_size: int = 1
    num_steps: int = 10
    force: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ExportError(f"export format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.dtype not in DTYPES:
            raise ExportError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.format == "stablehlo" and self.dtype == "float16":
            raise ExportError("float16 is an ONNX option (runtimes without bfloat16 kernels); export stablehlo in "
                              "float32 or bfloat16")
        if self.batch_size < 1 or self.num_steps < 1:
            raise ExportError(f"--batch-size ({self.batch_size}) and the step count ({self.num_steps}) must be "
                              "at least 1")


@dataclasses.dataclass(frozen=True)
class ExportResult:
    directory: Path
    manifest: dict[str, Any]
    seconds: float

    @property
    def bytes(self) -> int:
        return sum(int(f["bytes"]) for f in self.manifest["files"].values())


def refuse_unexportable(config: Pi0Config) -> None:
    if config.family.autoregressive:  # pi0-FAST
        raise ExportError("pi0-FAST cannot be exported yet: its decode loop stops at a data-dependent EOS token and "
                          "grows its KV cache per token, which no fixed-shape ONNX graph expresses; export a pi0 or "
                          "pi0.5 checkpoint, or serve this one with `pi0 serve --checkpoint`")


def export_checkpoint(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], *, embodiment: Embodiment,
                      options: ExportOptions, progress: Callable[[str], None] | None = None) -> ExportResult:
    """Export ``checkpoint`` (a step directory or experiment folder) for ``embodiment`` into ``out``."""
    say = progress or (lambda _: None)
    target = Path(out).absolute()
    if target.exists() and not options.force:
        raise ExportError(f"{target} already exists; pass --force to replace it, or choose another --out")
    step, _ = resolve_step(checkpoint)
    saved = read_checkpoint_config(step) or {}
    config = model_config_of(saved, None)
    if config is None:
        raise ExportError(f"{step} has no {CONFIG}; only checkpoints written by pi0 (train or convert) export")
    refuse_unexportable(config)
    start = time.perf_counter()

    from pi0cli.export import sampling
    from pi0cli.policy.load import load_training_pipeline

    say(f"loading {step}")
    module, pipeline = load_training_pipeline(step, embodiment=embodiment)
    say(f"tracing {config.model_type} ({options.num_steps} steps, batch {options.batch_size}, {options.dtype})")
    traced = sampling.tracing_model(module, "float32" if options.dtype == "float32" else "bfloat16")
    fn, state = sampling.sampler(traced, options.num_steps)
    bspec = sampling.batch_spec(config, options.batch_size)
    nspec = sampling.noise_spec(config, options.batch_size)
    inputs = [{"name": n, "shape": list(s.shape), "dtype": np.dtype(s.dtype).name}
              for n, s in zip(sampling.leaf_names(bspec), _leaves(bspec), strict=True)]
    inputs.append({"name": sampling.NOISE, "shape": list(nspec.shape), "dtype": "float32"})
    outputs = [{"name": sampling.ACTIONS, "shape": list(nspec.shape), "dtype": "float32"}]

    with atomic_directory(target, overwrite=options.force) as tmp:
        if options.format == "onnx":
            say("converting to ONNX")
            fields = _write_onnx(tmp, fn, state, bspec, nspec, options)
        else:
            say("serialising StableHLO")
            fields = _write_stablehlo(tmp, fn, state, bspec, nspec)
        _write_assets(tmp, step, saved, config, pipeline, embodiment)
        manifest = write_manifest(tmp, {
            "pi0_version": __version__, "export_format": options.format, "dtype": options.dtype,
            "batch_size": options.batch_size, "num_steps": options.num_steps, "model_type": config.model_type,
            "embodiment": embodiment.name, "inputs": inputs, "outputs": outputs, **fields,
        })
    return ExportResult(target, manifest, time.perf_counter() - start)


def _leaves(tree: Any) -> list[Any]:
    import jax

    return jax.tree.leaves(tree)


def _write_onnx(directory: Path, fn: Callable[..., Any], state: Any, bspec: Any, nspec: Any,
                options: ExportOptions) -> dict[str, Any]:
    import jax
    import onnx

    from pi0cli.export import onnx_graph, sampling

    closed = jax.make_jaxpr(fn)(state, bspec, nspec)
    weight_names = sampling.leaf_names(state, "params/")
    specs: list[str | onnx_graph.Weight] = [
        onnx_graph.Weight(name, np.asarray(value))
        for name, value in zip(weight_names, jax.tree.leaves(state), strict=True)]
    specs += [*sampling.leaf_names(bspec), sampling.NOISE]
    weights = onnx_graph.WeightFile(directory / "weights.bin")
    try:
        model = onnx_graph.convert(closed, inputs=specs, outputs=[sampling.ACTIONS], weights=weights,
                                   float16=options.dtype == "float16",
                                   doc=f"pi0 {__version__}: prepared observation + noise -> actions")
    finally:
        weights.close()
    onnx.save(model, str(directory / "model.onnx"))
    return {"graph": "model.onnx", "weights": "weights.bin", "opset": onnx_graph.OPSET,
            "onnx_ir_version": onnx_graph.IR_VERSION}


def _write_stablehlo(directory: Path, fn: Callable[..., Any], state: Any, bspec: Any, nspec: Any) -> dict[str, Any]:
    import jax

    from pi0cli.export import sampling

    leaves, treedef = jax.tree.flatten(state)

    def flat(weights: list[Any], batch: Any, noise: Any) -> Any:
        # The weights travel as a plain list: a serialized signature holds only standard containers.
        return fn(jax.tree.unflatten(treedef, weights), batch, noise)

    abstract = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]
    exported = jax.export.export(jax.jit(flat))(abstract, bspec, nspec)
    (directory / "model.stablehlo").write_bytes(exported.serialize())
    names = sampling.leaf_names(state)
    arrays = {}
    for name, value in zip(names, leaves, strict=True):
        array = np.asarray(value)
        # npz has no bfloat16: store its bits (the loader views them back through the manifest's dtype)
        arrays[name] = array.view(np.uint16) if array.dtype.name == "bfloat16" else array
    with (directory / "weights.npz").open("wb") as f:
        np.savez(f, allow_pickle=False, **arrays)
    return {"graph": "model.stablehlo", "weights": "weights.npz", "weight_order": names,
            "weight_dtypes": [np.asarray(v).dtype.name for v in leaves], "jax_version": jax.__version__,
            "calling_convention_version": int(exported.calling_convention_version)}


def _write_assets(directory: Path, step: Path, saved: dict[str, Any], config: Pi0Config, pipeline: Any,
                  embodiment: Embodiment) -> None:
    """Config (with the transforms' resolved settings), norm stats, tokenizer and the embodiment contract."""
    from pi0cli.models.tokenizer import find_tokenizer_model

    mask = pipeline.delta_action_mask
    config_json = checkpoint_config(
        model_config=config, embodiment=embodiment.name, asset_id=saved.get("asset_id") or embodiment.asset_id,
        default_prompt=pipeline.default_prompt, delta_action_mask=list(mask) if mask else None,
        metadata=dict(saved.get("metadata") or {}))
    (directory / CONFIG).write_text(json.dumps(config_json, indent=2) + "\n")
    save_norm_stats(pipeline.norm_stats, directory / NORM_STATS)
    tokenizer = read_tokenizer(step)
    (directory / TOKENIZER).write_bytes(tokenizer if tokenizer is not None else find_tokenizer_model().read_bytes())
    (directory / CONTRACT).write_text(json.dumps(contract_of(embodiment), indent=2) + "\n")


def contract_of(embodiment: Embodiment) -> dict[str, Any]:
    """The parts of an embodiment's contract a runtime checks against the registered embodiment."""
    return {
        "name": embodiment.name, "state_dim": embodiment.state_dim, "action_dim": embodiment.action_dim,
        "control_hz": embodiment.control_hz,
        "state": [{"key": f.key, "dim": f.dim} for f in embodiment.state],
        "cameras": [{"key": c.key, "slot": c.slot, "required": c.required} for c in embodiment.cameras],
        "delta_action_mask": None if embodiment.delta_action_mask is None else list(embodiment.delta_action_mask),
    }
