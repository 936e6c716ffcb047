"""Export benchmark: ONNX Runtime (CPU) against the JAX model (CPU) per action chunk, export time and size.

Usage: python benchmarks/bench_export.py [--model pi0_small] [--repeats N] [--skip-full] [--so400m] [--json PATH]

1. A random-weight checkpoint of ``--model`` (a tiny/small preset sized for the ALOHA-sim robot) is exported
   to ONNX at batch 1 and batch 4 (timed, sizes read from the manifests). Latency per chunk of the model call
   (prepared inputs + noise -> actions, ``--num-steps`` Euler steps): the ONNX Runtime session against the
   jitted JAX ``sample_actions`` of the same checkpoint, same inputs, same noise, calls interleaved in one
   run; reported as medians and as the ratio JAX / ONNX (above 1: ONNX Runtime is faster), for ONNX Runtime
   with its default thread pool and with one intra-op thread.
2. Full size (gemma_2b + gemma_300m + So400m, float32): traced from abstract shapes and converted with a
   weight file that only counts bytes (no 13 GB of random weights on a 24 GB machine): the graph's size, the
   external-data size and the trace + convert time. An estimate of the artifact, not a measured export.
3. ``--so400m``: a reduced Gemma (tiny) with the full So400m/14 vision tower at 224 px, random weights:
   exported to ONNX, max |ONNX - JAX| of the actions (the float32 tolerance is 1e-4) and the same latency
   comparison at batch 1. Minutes on a CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pi0cli.export import ExportOptions, export_checkpoint  # noqa: E402
from pi0cli.export.onnx_graph import Weight, WeightFile, convert  # noqa: E402

MiB = 2**20


def _robot() -> Any:
    from pi0_embodiment_aloha import ALOHA_SIM

    return ALOHA_SIM


def interleaved(fns: dict[str, Any], repeats: int) -> dict[str, dict[str, float]]:
    """Median/min wall time of each zero-argument fn, calls interleaved so load changes hit all alike."""
    for fn in fns.values():
        fn()  # compile / first run
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {k: {"median_ms": statistics.median(v) * 1e3, "min_ms": min(v) * 1e3} for k, v in times.items()}


def latency(model: str, repeats: int, num_steps: int, work: Path, batch_sizes: tuple[int, ...] = (1, 4),
            **overrides: Any) -> dict[str, Any]:
    import jax
    from flax import nnx

    from pi0cli.models.observation import Observation
    from pi0cli.policy.load import load_training_pipeline
    from pi0cli.policy.policy import MODEL_KEYS, make_transforms
    from pi0cli.runtime.manifest import read_manifest
    from pi0cli.runtime.noise import policy_noise
    from pi0cli.runtime.onnx_policy import OnnxSampler
    from pi0cli.testing import make_tiny_checkpoint, tiny_model_config
    from pi0cli.transforms import stack_trees

    robot = _robot()
    config = tiny_model_config(robot, model, **overrides)
    checkpoint = make_tiny_checkpoint(work / f"ckpt_{model}", robot, model_config=config)
    module, pipeline = load_training_pipeline(checkpoint, embodiment=robot)
    inputs, _ = make_transforms(robot, module.config, pipeline.norm_stats or {}, tokenizer=pipeline.tokenizer,
                                default_prompt=pipeline.default_prompt,
                                delta_action_mask=list(pipeline.delta_action_mask or []))
    graphdef, state = nnx.split(module)

    @jax.jit
    def sample(state: Any, batch: Any, noise: Any) -> Any:
        return nnx.merge(graphdef, state).sample_actions(None, Observation.from_dict(batch), num_steps=num_steps,
                                                         noise=noise)

    out: dict[str, Any] = {"model": model, "overrides": {k: str(v) for k, v in overrides.items()},
                           "num_steps": num_steps, "export": {}}
    fns: dict[str, Any] = {}
    for batch_size in batch_sizes:
        start = time.perf_counter()
        result = export_checkpoint(checkpoint, work / f"onnx_{model}_b{batch_size}", embodiment=robot,
                                   options=ExportOptions("onnx", batch_size=batch_size, num_steps=num_steps))
        out["export"][f"batch{batch_size}"] = {"seconds": time.perf_counter() - start,
                                               "artifact_mib": result.bytes / MiB}
        manifest = read_manifest(result.directory)
        session = OnnxSampler(result.directory / manifest["graph"], manifest)
        single = OnnxSampler(result.directory / manifest["graph"], manifest, threads=1)
        prepared = [inputs({"prompt": "transfer the cube", **robot.example_observation(i)}) for i in range(batch_size)]
        batch = stack_trees([{k: p[k] for k in MODEL_KEYS if k in p} for p in prepared])
        noise = policy_noise(0, 0, session.noise_shape)
        diff = np.abs(session.run(batch, noise) - np.asarray(sample(state, batch, noise))).max()
        out[f"max_abs_diff_batch{batch_size}"] = float(diff)
        fns[f"jax_b{batch_size}"] = lambda b=batch, n=noise: jax.block_until_ready(sample(state, b, n))
        fns[f"onnx_b{batch_size}"] = lambda s=session, b=batch, n=noise: s.run(b, n)
        fns[f"onnx_1thread_b{batch_size}"] = lambda s=single, b=batch, n=noise: s.run(b, n)
    timed = interleaved(fns, repeats)
    out["latency"] = timed
    for b in batch_sizes:
        jax_ms = timed[f"jax_b{b}"]["median_ms"]
        out[f"jax_over_onnx_batch{b}"] = jax_ms / timed[f"onnx_b{b}"]["median_ms"]
        out[f"jax_over_onnx_1thread_batch{b}"] = jax_ms / timed[f"onnx_1thread_b{b}"]["median_ms"]
    return out


class _CountingWeights(WeightFile):
    """A weight file that records sizes and writes nothing (abstract-shape export estimates)."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.total = 0

    def tensor(self, name: str, array: np.ndarray, data_type: int) -> Any:
        import onnx

        self.total += int(np.prod(array.shape)) * array.dtype.itemsize
        proto = onnx.TensorProto(name=name, data_type=data_type, dims=list(array.shape))
        proto.data_location = onnx.TensorProto.EXTERNAL
        entry = proto.external_data.add()
        entry.key, entry.value = "location", self.path.name
        return proto


def full_size_estimate(num_steps: int, work: Path) -> dict[str, Any]:
    import jax
    from flax import nnx

    from pi0cli.export import sampling
    from pi0cli.models.config import preset
    from pi0cli.models.pi0 import Pi0

    config = sampling.tracing_config(preset("pi0"), "float32")
    start = time.perf_counter()
    model = nnx.eval_shape(lambda: Pi0(config, nnx.Rngs(0)))
    fn, state = sampling.sampler(model, num_steps)
    bspec, nspec = sampling.batch_spec(config, 1), sampling.noise_spec(config, 1)
    closed = jax.make_jaxpr(fn)(state, bspec, nspec)
    traced = time.perf_counter() - start
    leaves = jax.tree.leaves(state)
    specs: list[Any] = [Weight(n, np.broadcast_to(np.zeros((), np.dtype(x.dtype)), x.shape))
                        for n, x in zip(sampling.leaf_names(state, "params/"), leaves, strict=True)]
    specs += [*sampling.leaf_names(bspec), sampling.NOISE]
    weights = _CountingWeights(work / "weights.bin")
    proto = convert(closed, inputs=specs, outputs=[sampling.ACTIONS], weights=weights)
    weights.close()
    return {"how": "abstract shapes (no weights allocated); float32, batch 1, 3 cameras at 224 px",
            "params": int(sum(np.prod(x.shape) for x in leaves)), "graph_nodes": len(proto.graph.node),
            "graph_mib": proto.ByteSize() / MiB, "weights_mib": weights.total / MiB,
            "trace_s": traced, "trace_and_convert_s": time.perf_counter() - start}


def so400m_parity(num_steps: int, work: Path, repeats: int) -> dict[str, Any]:
    """Reduced Gemma + the full So400m/14 tower at 224 px: parity (in ``latency``) and per-chunk latency."""
    return latency("pi0_tiny", repeats, num_steps, work, batch_sizes=(1,), siglip_variant="So400m/14",
                   image_resolution=(224, 224))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pi0_small", help="model preset of the latency checkpoint")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--num-steps", type=int, default=10)
    ap.add_argument("--skip-full", action="store_true", help="skip the full-size abstract estimate")
    ap.add_argument("--so400m", action="store_true", help="also check parity with the full So400m vision tower")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results["latency"] = latency(args.model, args.repeats, args.num_steps, work)
        print(json.dumps({"latency": results["latency"]}, indent=2), flush=True)
        if not args.skip_full:
            results["full_size"] = full_size_estimate(args.num_steps, work)
            print(json.dumps({"full_size": results["full_size"]}, indent=2), flush=True)
        if args.so400m:
            results["so400m_parity"] = so400m_parity(args.num_steps, work, max(3, args.repeats // 5))
            print(json.dumps({"so400m_parity": results["so400m_parity"]}, indent=2), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
