"""``pi0 export``: a checkpoint as a portable artifact (ONNX or StableHLO) that runs without the model code."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, cast

import typer

from pi0cli.cli import console
from pi0cli.cli.embodiments import complete_embodiment


def export(
    checkpoint: Annotated[str, typer.Argument(
        help="Checkpoint step directory (holding params/ and assets/) or its experiment folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Artifact directory to write.")],
    format: Annotated[str, typer.Option(
        "--format", "-f", metavar="onnx|stablehlo",
        help="onnx (ONNX Runtime, TensorRT; no JAX needed to run it) or stablehlo (jax.export).")] = "onnx",
    dtype: Annotated[str, typer.Option(
        "--dtype", metavar="float32|bfloat16|float16",
        help="Compute dtype of the graph (bfloat16 ONNX needs a GPU provider; float16 is ONNX only).")] = "float32",
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=1, max=256, help="The graph's fixed batch size (requests are padded to it).")] = 1,
    num_steps: Annotated[int, typer.Option(
        "--num-steps", min=1, help="Denoising steps, fixed in the graph.")] = 10,
    embodiment: Annotated[str | None, typer.Option(
        "--embodiment", "-e", help="Robot the policy drives (default: the one the checkpoint was trained for).",
        autocompletion=complete_embodiment)] = None,
    verify: Annotated[bool, typer.Option(
        "--verify", help="Run the artifact and the JAX model on the same observation and noise; fail above 1e-4 "
                         "(float32) on the actions.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out directory.")] = False,
) -> None:
    """Export a pi0 / pi0.5 checkpoint: graph, weights, norm stats, tokenizer, embodiment contract, manifest."""
    from pi0cli.cli.checkpoints import step_dir
    from pi0cli.errors import Pi0Error
    from pi0cli.export.export import DTYPES, FORMATS, ExportOptions, export_checkpoint

    if format not in FORMATS:
        raise typer.BadParameter(f"{format!r} is not one of {', '.join(FORMATS)}", param_hint="--format")
    if dtype not in DTYPES:
        raise typer.BadParameter(f"{dtype!r} is not one of {', '.join(DTYPES)}", param_hint="--dtype")
    options = ExportOptions(cast("Literal['onnx', 'stablehlo']", format),
                            cast("Literal['float32', 'bfloat16', 'float16']", dtype), batch_size, num_steps, force)
    directory = step_dir(checkpoint)
    if embodiment is None:
        from pi0cli.policy.load import checkpoint_embodiment

        embodiment = checkpoint_embodiment(directory)
    emb = console.registry().embodiment(embodiment)
    with console.err.status(f"exporting {directory} ...") as status:
        result = export_checkpoint(directory, out, embodiment=emb, options=options,
                                   progress=lambda stage: status.update(f"{stage} ..."))
    manifest = result.manifest
    console.out.print(f"exported {manifest['model_type']} for {emb.name} to {result.directory} "
                      f"({format}, {dtype}, batch {batch_size}, {num_steps} steps): "
                      f"{result.bytes / 2**20:.1f} MiB in {result.seconds:.1f} s")
    if not verify:
        return
    from pi0cli.export.verify import verify_artifact

    with console.err.status("verifying against the JAX model ..."):
        report = verify_artifact(result.directory, directory, embodiment=emb)
    console.out.print(f"verify: {console.escape(report.summary())}")
    if not report.passed:
        raise Pi0Error(f"the artifact's actions differ from the JAX model's by {report.max_abs_diff:.3g} "
                       f"(> {report.tolerance}); do not deploy it; report the checkpoint and pi0 version")
