"""Run an exported ONNX artifact on ONNX Runtime as a :class:`~pi0cli.policy.Policy`, without JAX or Flax.

The policy is the same class ``pi0 serve --checkpoint`` serves, with the same input and output transforms
(:func:`pi0cli.policy.policy.make_transforms`: numpy, sentencepiece), so it fills in the server's
:class:`~pi0cli.serving.served.ServedPolicy` protocol unchanged. Only its sampler differs: the prepared batch
and JAX-identical noise (:mod:`pi0cli.runtime.noise`) go through one ONNX Runtime session. Requests are padded
to the graph's fixed batch size. Real-time chunking is not in the exported graph: requests carrying
``prev_actions`` are refused with one clear error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pi0cli.runtime.manifest import CONFIG, CONTRACT, NORM_STATS, TOKENIZER, ArtifactError, read_manifest
from pi0cli.runtime.noise import policy_noise
from pi0cli.transforms import lookup

if TYPE_CHECKING:
    from pi0cli.embodiment import Embodiment
    from pi0cli.policy.policy import Policy

#: Execution providers used when none are named (TensorRT / CUDA builds of onnxruntime name theirs).
DEFAULT_PROVIDERS: tuple[str, ...] = ("CPUExecutionProvider",)


class OnnxSampler:
    """``(rng=(seed, counter), batch) -> actions [B, H, A]`` on one ONNX Runtime session."""

    def __init__(self, graph: Path, manifest: Mapping[str, Any], providers: Sequence[str] | None = None,
                 threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ArtifactError("onnxruntime is not installed; install the runtime with `pip install 'pi0[onnx]'`") \
                from None
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # ORT's own warnings (e.g. unused initializers) are not the user's problem
        if threads is not None:
            # Small models: thousands of tiny ops, where one thread beats the pool's hand-offs (3x on 2 cores).
            options.intra_op_num_threads = threads
        wanted = list(providers or DEFAULT_PROVIDERS)
        available = ort.get_available_providers()
        missing = [p for p in wanted if p not in available]
        if missing:
            raise ArtifactError(f"ONNX Runtime here has no {', '.join(missing)} (it has {', '.join(available)}); "
                                "install the onnxruntime build for it (onnxruntime-gpu for CUDA/TensorRT) or drop it")
        try:
            self.session = ort.InferenceSession(str(graph), options, providers=wanted)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types; one line for the user
            hint = ""
            if manifest.get("dtype") == "bfloat16" and "NOT_IMPLEMENTED" in str(exc):
                hint = ("; ONNX Runtime's CPU provider has no bfloat16 kernels: run it with the CUDA or TensorRT "
                        "provider, or export --dtype float16 / float32 for CPUs")
            raise ArtifactError(f"ONNX Runtime cannot load {graph}: {' '.join(str(exc).split())[:300]}{hint}") \
                from None
        self.inputs = [(spec["name"], tuple(spec["shape"]), np.dtype(spec["dtype"])) for spec in manifest["inputs"]]
        self.output = manifest["outputs"][0]["name"]
        self.noise_shape = tuple(manifest["outputs"][0]["shape"])

    @property
    def batch_size(self) -> int:
        return int(self.noise_shape[0])

    def run(self, batch: Mapping[str, Any], noise: np.ndarray) -> np.ndarray:
        """Prepared model inputs (stacked to the graph's batch) and noise -> actions."""
        feed = {}
        for name, shape, dtype in self.inputs:
            value = noise if name == "noise" else lookup(batch, name)
            array = np.ascontiguousarray(np.asarray(value, dtype=dtype))
            if array.shape != shape:
                raise ArtifactError(f"input {name!r} has shape {array.shape} but the exported graph takes {shape}")
            feed[name] = array
        return np.asarray(self.session.run([self.output], feed)[0])

    def __call__(self, rng: tuple[int, int], batch: Mapping[str, Any]) -> np.ndarray:
        seed, counter = rng
        return self.run(batch, policy_noise(seed, counter, self.noise_shape))


def load_artifact(directory: str | os.PathLike[str], *, embodiment: Embodiment, seed: int = 0,
                  default_prompt: str | None = None, providers: Sequence[str] | None = None,
                  threads: int | None = None, check_files: bool = True) -> Policy:
    """The policy of ONNX artifact ``directory`` (checked against its manifest first).

    ``embodiment``: the robot (the CLI finds the one the manifest names in the plugin registry); its contract
    must match the one exported with the artifact. ``providers``: ONNX Runtime execution providers in order of
    preference (e.g. ``["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]``).
    ``threads``: ONNX Runtime's intra-op CPU threads (None: its default, one per core).
    """
    from pi0cli.checkpoint import config_from_dict
    from pi0cli.models.tokenizer import PaligemmaTokenizer
    from pi0cli.normstats import load_norm_stats
    from pi0cli.policy.policy import Policy, make_transforms

    path = Path(directory)
    manifest = read_manifest(path, check_files=check_files)
    if manifest.get("export_format") != "onnx":
        raise ArtifactError(f"{path} holds a {manifest.get('export_format')} export, which runs under JAX "
                            "(pi0cli.export.stablehlo.load_stablehlo); export --format onnx for this runtime")
    saved = _json(path / CONFIG)
    config = config_from_dict(saved["model"])
    emb = embodiment
    check_contract(_json(path / CONTRACT), emb)
    tokenizer = PaligemmaTokenizer(config.token_len, model=(path / TOKENIZER).read_bytes())
    mask = saved.get("delta_action_mask")
    prompt = default_prompt if default_prompt is not None else saved.get("default_prompt")
    inputs, outputs = make_transforms(emb, config, load_norm_stats(path / NORM_STATS), tokenizer=tokenizer,
                                      default_prompt=prompt, delta_action_mask=mask or [])
    sampler = OnnxSampler(path / str(manifest["graph"]), manifest, providers, threads)
    example = emb.example_observation
    return Policy(
        sampler, input_transform=inputs, output_transform=outputs, batch_sizes=(sampler.batch_size,), seed=seed,
        metadata=dict(emb.metadata) | dict(saved.get("metadata") or {}),
        example=lambda: {"prompt": "warm up", **example(0)},
        rng_fn=lambda seed, counter: (seed, counter), rtc_shape=None,
        description=f"{manifest.get('model_type')} ONNX artifact for {emb.name} from {path} "
                    f"(batch {sampler.batch_size}, {manifest.get('dtype')}, "
                    f"{', '.join(sampler.session.get_providers())})",
    )


def _json(file: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(file.read_text()))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read {file} ({exc}); re-export the artifact") from None


def check_contract(contract: Mapping[str, Any], embodiment: Embodiment) -> None:
    """The registered embodiment must still be the robot the artifact was exported for."""
    now = {"name": embodiment.name, "state_dim": embodiment.state_dim, "action_dim": embodiment.action_dim,
           "slots": sorted(c.slot for c in embodiment.cameras if c.slot)}
    then = {"name": contract.get("name"), "state_dim": contract.get("state_dim"),
            "action_dim": contract.get("action_dim"),
            "slots": sorted(c["slot"] for c in contract.get("cameras", []) if c.get("slot"))}
    diffs = [f"{k} {then[k]!r} (artifact) vs {now[k]!r}" for k in now if now[k] != then[k]]
    if diffs:
        raise ArtifactError(f"embodiment {embodiment.name!r} does not match the artifact's contract: "
                            f"{'; '.join(diffs)}; export the artifact again for this robot")
