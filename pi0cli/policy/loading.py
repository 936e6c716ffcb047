"""Policy checkpoints: the layout every pi0 tool reads and writes, and loading a :class:`Policy` from one.

A policy checkpoint directory::

    <dir>/params/                          orbax PyTree {"params": <reference-named parameter tree>}
    <dir>/assets/<asset_id>/norm_stats.json reference norm-stats format
    <dir>/pi0_config.json                  {"format": "pi0-policy/1", "model": {Pi0Config fields},
                                            "embodiment", "asset_id", "default_prompt", "delta_action_mask",
                                            "metadata"}   (our addition; optional)
    <dir>/tokenizer.model                  optional sentencepiece model (tiny test checkpoints)

``params/`` and ``assets/`` are exactly the reference (openpi) layout, so a released openpi checkpoint
directory loads too when the model preset is named (``model="pi0"``), and a pi0 training step directory
(whose config sits at ``assets/pi0_config.json``) loads with no extra argument.

:func:`save_policy_checkpoint` writes into a temporary sibling directory and renames it into place, so a
reader never sees half a checkpoint. :func:`make_tiny_checkpoint` builds a random-weight one for tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pi0cli.errors import Pi0Error
from pi0cli.normstats import NormStats, load_norm_stats, save_norm_stats

CONFIG_FILENAME = "pi0_config.json"
TOKENIZER_FILENAME = "tokenizer.model"
FORMAT = "pi0-policy/1"


class CheckpointError(Pi0Error):
    """A policy checkpoint that is missing, incomplete or does not fit the request."""


# --------------------------------------------------------------------------------------------- configs


def config_to_dict(config: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(data: Mapping[str, Any]) -> Any:
    """A ``Pi0Config`` from its JSON form (unknown fields are an error naming them)."""
    from pi0cli.models.config import Pi0Config

    fields = {f.name for f in dataclasses.fields(Pi0Config)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise CheckpointError(f"model config has unknown field(s) {unknown}; is the checkpoint from a newer pi0?")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return Pi0Config(**values)


def read_checkpoint_config(directory: Path) -> dict[str, Any] | None:
    """The pi0 config of a checkpoint (``pi0_config.json`` or a training step's ``assets/pi0_config.json``)."""
    for candidate in (directory / CONFIG_FILENAME, directory / "assets" / CONFIG_FILENAME):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise CheckpointError(f"{candidate} is not valid JSON ({exc})") from None
            if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
                raise CheckpointError(f"{candidate} has no 'model' object; it is not a pi0 checkpoint config")
            return data
    return None


# ---------------------------------------------------------------------------------------------- saving


def _as_numpy_tree(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {str(k): _as_numpy_tree(v) for k, v in tree.items()}
    return np.asarray(tree)


def save_policy_checkpoint(
    directory: str | os.PathLike[str],
    *,
    params: Mapping[str, Any],
    model_config: Any,
    embodiment: str,
    norm_stats: Mapping[str, NormStats],
    asset_id: str,
    default_prompt: str | None = None,
    delta_action_mask: Sequence[bool] | None | str = "embodiment",
    metadata: Mapping[str, Any] | None = None,
    tokenizer: bytes | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a policy checkpoint atomically (temporary sibling directory, then one rename).

    ``params`` is the reference-named tree (``pi0cli.models.params.export_params(model)``).
    """
    with atomic_directory(directory, overwrite=overwrite) as tmp:
        write_params(tmp / "params", params)
        save_norm_stats(norm_stats, tmp / "assets" / asset_id)
        write_checkpoint_config(tmp / CONFIG_FILENAME, model_config=model_config, embodiment=embodiment,
                                asset_id=asset_id, default_prompt=default_prompt,
                                delta_action_mask=delta_action_mask, metadata=metadata)
        if tokenizer is not None:
            (tmp / TOKENIZER_FILENAME).write_bytes(tokenizer)
    return Path(directory).absolute()


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``directory`` to fill; on success it replaces ``directory`` in one rename.

    On any error (or Ctrl-C) the temporary directory is removed and an existing ``directory`` is untouched.
    """
    target = Path(directory).absolute()
    if target.exists() and not overwrite:
        raise CheckpointError(f"{target} already exists; pass --overwrite (overwrite=True) or choose another directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        yield tmp
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_params(params_dir: Path, params: Mapping[str, Any]) -> None:
    """Write a reference-named parameter tree as the orbax ``params/`` item (``{"params": tree}``)."""
    import orbax.checkpoint as ocp

    ocp.PyTreeCheckpointer().save(Path(params_dir).absolute(), {"params": _as_numpy_tree(params)})


def write_checkpoint_config(
    path: Path,
    *,
    model_config: Any,
    embodiment: str | None,
    asset_id: str | None,
    default_prompt: str | None = None,
    delta_action_mask: Sequence[bool] | None | str = "embodiment",
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write ``pi0_config.json`` (the format documented at the top of this module)."""
    config = {
        "format": FORMAT,
        "model": config_to_dict(model_config),
        "embodiment": embodiment,
        "asset_id": asset_id,
        "default_prompt": default_prompt,
        "delta_action_mask": delta_action_mask if delta_action_mask in ("embodiment", None)
        else [bool(v) for v in delta_action_mask],
        "metadata": json.loads(json.dumps(dict(metadata or {}))),
    }
    path.write_text(json.dumps(config, indent=2, sort_keys=True))


def train_tiny_tokenizer(sentences: Sequence[str] = ()) -> bytes:
    """A small sentencepiece model (vocab 320, ids as Gemma's: pad 0, eos 1, bos 2, unk 3) for tests."""
    import sentencepiece

    corpus = list(sentences) + [
        "pick up the cube", "transfer cube", "fold the towel", "open the drawer", "uncap the pen",
        "put the object in the bowl", "move the arm to the left", "Task: State: Action:",
        "0 1 2 3 4 5 6 7 8 9 10 100 128 255", "the quick brown fox jumps over the lazy dog",
    ] * 4
    buffer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=buffer, vocab_size=320, model_type="bpe", byte_fallback=True,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, hard_vocab_limit=False, minloglevel=2,
    )
    return buffer.getvalue()


def example_norm_stats(embodiment: Any, model_config: Any, count: int = 32, seed: int = 0) -> dict[str, NormStats]:
    """Norm stats from ``count`` example observations of ``embodiment`` (state) and a random walk around them
    (actions): good enough for a random-weight model."""
    states = np.stack([np.asarray(embodiment.inputs(embodiment.example_observation(seed + i))["state"], np.float64)
                       for i in range(count)])
    rng = np.random.default_rng(seed)
    actions = states[:, : embodiment.action_dim] if states.shape[1] >= embodiment.action_dim else np.concatenate(
        [states, rng.normal(size=(count, embodiment.action_dim - states.shape[1]))], axis=1)
    actions = actions + rng.normal(scale=0.05, size=actions.shape)

    def stats(x: np.ndarray) -> NormStats:
        return NormStats(mean=x.mean(0), std=x.std(0) + 1e-3, q01=np.quantile(x, 0.01, axis=0) - 1e-3,
                         q99=np.quantile(x, 0.99, axis=0) + 1e-3)

    return {"state": stats(states), "actions": stats(actions)}


def tiny_model_config(embodiment: Any, model: str = "pi0_tiny", **overrides: Any) -> Any:
    """A tiny model preset widened to the robot (action_dim 32 unless the robot is bigger), horizon 10,
    prompts of up to 16 tokens."""
    from pi0cli.models.config import preset

    dim = max(32, embodiment.action_dim, embodiment.state_dim)
    return preset(model, **({"action_dim": dim, "action_horizon": 10, "max_token_len": 16} | overrides))


def random_params(model_config: Any, seed: int = 0, std: float = 0.02) -> dict[str, Any]:
    """Random weights in the reference naming, drawn with numpy from the model's abstract shapes (no JAX
    compilation: initialising a model eagerly on a CPU takes most of a minute even when tiny).

    Kernels and embeddings ~ N(0, std); biases 0; LayerNorm scales 1 (SigLIP), RMSNorm scales 0 (Gemma's
    ``1 + scale``)."""
    from flax import nnx

    from pi0cli.models.params import flatten, unflatten
    from pi0cli.models.pi0 import Pi0

    abstract = nnx.eval_shape(lambda: Pi0(model_config, nnx.Rngs(0)))
    shapes = flatten(nnx.to_pure_dict(nnx.state(abstract, nnx.Param)))
    rng = np.random.default_rng(seed)
    out = {}
    for key, spec in sorted(shapes.items()):
        dtype = np.float32
        if key.endswith("/bias"):
            value = np.zeros(spec.shape, dtype)
        elif key.endswith("/scale"):
            value = (np.ones if key.startswith("PaliGemma/img") else np.zeros)(spec.shape, dtype)
        else:
            value = rng.normal(0.0, std, spec.shape).astype(dtype)
        out[key] = value
    return unflatten(out)


def make_tiny_checkpoint(
    directory: str | os.PathLike[str],
    embodiment: Any,
    *,
    model_config: Any | None = None,
    seed: int = 0,
    norm_stats: Mapping[str, NormStats] | None = None,
    default_prompt: str | None = None,
    overwrite: bool = False,
) -> Path:
    """A random-weight policy checkpoint for ``embodiment`` (an ``Embodiment``) with a tiny model."""
    config = model_config if model_config is not None else tiny_model_config(embodiment)
    stats = dict(norm_stats) if norm_stats is not None else example_norm_stats(embodiment, config)
    prompts = [p for p in (default_prompt, embodiment.default_prompt) if p]
    return save_policy_checkpoint(
        directory, params=random_params(config, seed), model_config=config, embodiment=embodiment.name,
        norm_stats=stats, asset_id=embodiment.asset_id, default_prompt=default_prompt,
        metadata=dict(embodiment.metadata), tokenizer=train_tiny_tokenizer(prompts), overwrite=overwrite,
    )


# --------------------------------------------------------------------------------------------- loading


def read_params(params_dir: Path) -> dict[str, Any]:
    """The reference-named parameter tree of a ``params/`` item (numpy arrays; ``value`` leaves stripped)."""
    import orbax.checkpoint as ocp

    from pi0cli.models.params import strip_value_leaves

    try:
        tree = ocp.PyTreeCheckpointer().restore(params_dir.absolute())
    except Exception as exc:  # orbax raises many types for unreadable directories
        raise CheckpointError(f"cannot read the parameters in {params_dir}: {' '.join(str(exc).split())[:300]}") from None
    if isinstance(tree, Mapping) and set(tree) == {"params"}:
        tree = tree["params"]
    return strip_value_leaves(tree)


def build_model(model_config: Any, params: Mapping[str, Any]) -> Any:
    """A ``Pi0`` holding ``params`` (built abstractly first: no random initialisation of the full model)."""
    from flax import nnx

    from pi0cli.models.params import import_params
    from pi0cli.models.pi0 import Pi0

    model = nnx.eval_shape(lambda: Pi0(model_config, nnx.Rngs(0)))
    import_params(model, params)
    return model


def _find_tokenizer(directory: Path, tokenizer: str | os.PathLike[str] | None, max_len: int) -> Any:
    from pi0cli.models.tokenizer import PaligemmaTokenizer

    if tokenizer is not None:
        return PaligemmaTokenizer(max_len, model=tokenizer)
    for local in (directory / TOKENIZER_FILENAME, directory / "assets" / TOKENIZER_FILENAME):  # policy / training step
        if local.is_file():
            return PaligemmaTokenizer(max_len, model=local.read_bytes())
    return PaligemmaTokenizer(max_len)


def load_policy(
    directory: str | os.PathLike[str],
    *,
    embodiment: Any | str | None = None,
    model: str | Any | None = None,
    default_prompt: str | None = None,
    tokenizer: str | os.PathLike[str] | None = None,
    batch_sizes: Sequence[int] = (1,),
    num_steps: int = 10,
    seed: int = 0,
    asset_id: str | None = None,
) -> Any:
    """Load a :class:`~pi0cli.policy.Policy` from a pi0 or reference checkpoint directory.

    ``embodiment``: an ``Embodiment`` or a registered name (default: the one in ``pi0_config.json``).
    ``model``: a model preset name or ``Pi0Config``; required for reference checkpoints (no pi0_config.json),
    otherwise it must agree with the checkpoint's.
    """
    from pi0cli.models.config import Pi0Config, preset
    from pi0cli.policy.policy import Policy, make_transforms

    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory} does not exist or is not a directory")
    params_dir = directory / "params"
    if not params_dir.is_dir():
        raise CheckpointError(f"{directory} has no params/ directory; point --checkpoint at a checkpoint step "
                              "(the directory holding params/ and assets/)")
    saved = read_checkpoint_config(directory) or {}

    if isinstance(model, str):
        model_config = preset(model)
    elif isinstance(model, Pi0Config):
        model_config = model
    elif saved:
        model_config = config_from_dict(saved["model"])
    else:
        raise CheckpointError(
            f"{directory} has no {CONFIG_FILENAME} (a reference openpi checkpoint?); name its model with "
            "--model (pi0 or pi05, or another preset)"
        )

    if embodiment is None:
        embodiment = saved.get("embodiment")
        if embodiment is None:
            raise CheckpointError(f"{directory} does not say which robot it drives; pass --embodiment")
    if isinstance(embodiment, str):
        from pi0cli.plugins.manager import get_registry

        embodiment = get_registry().embodiment(embodiment)

    assets = directory / "assets"
    wanted = asset_id or saved.get("asset_id") or embodiment.asset_id
    stats_file = assets / wanted / "norm_stats.json"
    if not stats_file.is_file():
        found = sorted(str(p.parent.relative_to(assets)) for p in assets.rglob("norm_stats.json")) if assets.is_dir() else []
        if len(found) == 1 and asset_id is None:
            stats_file = assets / found[0] / "norm_stats.json"
        else:
            raise CheckpointError(f"no norm stats for asset {wanted!r} at {stats_file}"
                                  + (f"; the checkpoint has {found}" if found else "")
                                  + "; compute them with `pi0 norm-stats` and copy them there")
    norm_stats = load_norm_stats(stats_file)

    params = read_params(params_dir)
    if model_config.dtype == "bfloat16" and model_config.param_dtype == "float32":
        model_config = dataclasses.replace(model_config, param_dtype="bfloat16")  # inference: bf16 weights
    module = build_model(model_config, params)
    del params

    prompt = default_prompt if default_prompt is not None else saved.get("default_prompt")
    mask = saved.get("delta_action_mask", "embodiment")
    if saved.get("format") != FORMAT and mask is None:  # a training config: None means the embodiment's mask
        mask = "embodiment"
    tok = _find_tokenizer(directory, tokenizer, model_config.token_len)
    inputs, outputs = make_transforms(embodiment, model_config, norm_stats, tokenizer=tok, default_prompt=prompt,
                                      delta_action_mask=mask)
    metadata = dict(embodiment.metadata) | dict(saved.get("metadata") or saved.get("policy_metadata") or {})
    example = embodiment.example_observation
    return Policy.from_model(
        module, num_steps=num_steps, input_transform=inputs, output_transform=outputs, batch_sizes=batch_sizes,
        seed=seed, metadata=metadata, example=lambda: {"prompt": "warm up", **example(0)},
        description=f"{model_config.model_type} ({model_config.paligemma_variant}) for {embodiment.name} from {directory}",
    )


# ---------------------------------------------------------------------------------- remote checkpoints

GCS_API = "https://storage.googleapis.com/storage/v1/b/{bucket}/o"
GCS_OBJECT = "https://storage.googleapis.com/{bucket}/{name}"


def checkpoint_cache_dirs() -> list[Path]:
    """Where downloaded checkpoints are looked for: the pi0 cache, then the reference's (``~/.cache/openpi``)."""
    pi0 = Path(os.environ.get("PI0_CACHE_DIR") or Path.home() / ".cache" / "pi0")
    openpi = Path(os.environ.get("OPENPI_DATA_HOME") or Path.home() / ".cache" / "openpi")
    return [pi0, openpi]


def _offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in ("PI0_OFFLINE", "HF_HUB_OFFLINE"))


def resolve_checkpoint(location: str, *, download: bool = True, timeout: float = 15.0) -> Path:
    """A local directory for ``location``: a path as is, or a ``gs://bucket/path`` URL found in (or downloaded
    into) the checkpoint cache. Fails with one line naming every place looked at and how to pass --checkpoint."""
    if not location.startswith("gs://"):
        path = Path(location).expanduser()
        if not path.is_dir():
            raise CheckpointError(f"checkpoint {path} does not exist; pass --checkpoint DIR")
        return path
    bucket, _, prefix = location.removeprefix("gs://").partition("/")
    prefix = prefix.strip("/")
    candidates = [root / bucket / prefix for root in checkpoint_cache_dirs()]
    for candidate in candidates:
        if (candidate / "params").is_dir():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    hint = (f"download it (gsutil -m cp -r {location} {candidates[0].parent}/) or pass --checkpoint DIR "
            "with a local checkpoint")
    if not download or _offline():
        raise CheckpointError(f"checkpoint {location} is not in the cache (looked in {looked}) and downloads are off; {hint}")
    try:
        return _download_gcs(bucket, prefix, candidates[0], timeout)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise CheckpointError(f"checkpoint {location} is not in the cache (looked in {looked}) and downloading it "
                              f"failed ({reason}); {hint}") from None


def _download_gcs(bucket: str, prefix: str, target: Path, timeout: float) -> Path:
    import urllib.parse
    import urllib.request

    names: list[str] = []
    token = None
    while True:
        query = {"prefix": prefix + "/", "fields": "items(name),nextPageToken"}
        if token:
            query["pageToken"] = token
        url = GCS_API.format(bucket=bucket) + "?" + urllib.parse.urlencode(query)
        with urllib.request.urlopen(url, timeout=timeout) as response:
            listing = json.loads(response.read())
        names += [item["name"] for item in listing.get("items", [])]
        token = listing.get("nextPageToken")
        if not token:
            break
    if not names:
        raise ValueError(f"no objects under gs://{bucket}/{prefix}/")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.download-{uuid.uuid4().hex[:8]}"
    try:
        for name in names:
            rel = name[len(prefix) + 1:]
            if not rel or rel.endswith("/") or ".." in Path(rel).parts:
                continue
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            url = GCS_OBJECT.format(bucket=bucket, name=urllib.parse.quote(name))
            with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
