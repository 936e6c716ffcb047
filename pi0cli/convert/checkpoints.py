"""Checkpoints between pi0, openpi and LeRobot, and big_vision PaliGemma ``.npz`` into a fresh pi0 checkpoint.

Formats (``detect_format`` tells them apart):

- ``pi0``: ``params/`` (orbax ``{"params": tree}``), ``assets/<asset_id>/norm_stats.json``, ``pi0_config.json``
  (see :mod:`pi0cli.checkpoint`); a pi0 training step directory (config in ``assets/``) reads the same way.
- ``openpi``: ``params/`` and ``assets/<asset_id>/norm_stats.json`` only. openpi never reads anything else, so on
  the way out the pi0 config rides along as ``assets/pi0_config.json`` and the way back needs no flags; a
  checkpoint written by openpi itself needs ``model=`` (``--model pi0`` / ``pi05``).
- ``lerobot``: ``model.safetensors`` with LeRobot's names (:mod:`pi0cli.convert.lerobot_names`) and LeRobot's
  ``config.json`` (``type: pi0`` / ``pi05``), plus ``pi0_config.json`` and ``assets/`` so the norm stats and the
  exact model sizes survive the round trip. LeRobot's config only names full-size Gemma variants, so for reduced
  models (tests) no ``config.json`` is written; ``pi0_config.json`` holds the sizes.
- ``paligemma`` (source only): a big_vision ``.npz`` (flat ``params/img/...``, ``params/llm/...`` keys). Its
  weights become the ``PaliGemma`` backbone of a freshly initialised model; the action expert and projections
  come from the seed, as the reference's PaliGemma weight loader does.

Every target is written into a temporary sibling directory and renamed into place (nothing half-written).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from pi0cli.checkpoint import (
    CONFIG_FILENAME,
    TOKENIZER_FILENAME,
    atomic_directory,
    checkpoint_config,
    model_config_of,
    read_checkpoint_config,
    read_params,
    read_tokenizer,
    write_checkpoint_config,
    write_params,
)
from pi0cli.errors import ConversionError, read_json

if TYPE_CHECKING:
    from pi0cli.models.config import Pi0Config

Format = Literal["pi0", "openpi", "lerobot", "paligemma"]
TARGETS: tuple[str, ...] = ("pi0", "openpi", "lerobot")
SAFETENSORS = "model.safetensors"
LEROBOT_CONFIG = "config.json"
FULL_SIZE_VARIANTS = {"gemma_2b", "gemma_300m"}


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A checkpoint in memory: flat reference-named params plus everything that travels with them."""

    params: dict[str, np.ndarray]
    model_config: Pi0Config
    source: Path
    format: str
    embodiment: str | None = None
    asset_id: str | None = None
    assets_dir: Path | None = None  # holds <asset_id>/norm_stats.json; copied as is
    default_prompt: str | None = None
    delta_action_mask: Any = "embodiment"
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    tokenizer: bytes | None = None


def detect_format(path: str | Path) -> Format:
    """The format of a checkpoint file or directory; ``ConversionError`` if it is none of them."""
    path = Path(path)
    if path.is_file() and path.suffix == ".npz":
        return "paligemma"
    if not path.exists():
        raise ConversionError(f"{path} does not exist; point at a checkpoint directory or a PaliGemma .npz file")
    if not path.is_dir():
        raise ConversionError(f"{path} is a file but not a PaliGemma .npz; point at a checkpoint directory (a "
                              "training step holding params/, or its experiment folder) or a PaliGemma .npz file")
    if (path / SAFETENSORS).is_file():
        return "lerobot"
    if (path / "params").is_dir():
        return "pi0" if (path / CONFIG_FILENAME).is_file() else "openpi"  # openpi layout: config inside assets/
    raise ConversionError(f"{path} has no params/ (pi0 / openpi) and no {SAFETENSORS} (LeRobot); point at the "
                          "checkpoint step directory")


def _model_config(saved: Mapping[str, Any] | None, model: str | Pi0Config | None, where: Path, fix: str) -> Pi0Config:
    config = model_config_of(saved, model)
    if config is None:
        raise ConversionError(f"{where} does not record its model config; {fix}")
    return config


def _saved_fields(saved: Mapping[str, Any] | None, directory: Path) -> dict[str, Any]:
    saved = saved or {}
    assets = directory / "assets"
    return dict(
        embodiment=saved.get("embodiment"), asset_id=saved.get("asset_id"),
        assets_dir=assets if any(assets.rglob("norm_stats.json")) else None,
        default_prompt=saved.get("default_prompt"), delta_action_mask=saved.get("delta_action_mask", "embodiment"),
        metadata=dict(saved.get("metadata") or {}), tokenizer=read_tokenizer(directory),
    )


def read_checkpoint(path: str | Path, *, model: str | Pi0Config | None = None, seed: int = 0) -> Checkpoint:
    """Read any supported checkpoint. ``model`` (preset name or ``Pi0Config``) is needed where the source does
    not record its config (openpi's own checkpoints, PaliGemma ``.npz``) and overrides it otherwise."""
    from pi0cli.models.params import flatten

    path = Path(path).expanduser()
    fmt = detect_format(path)
    if fmt == "paligemma":
        config = _model_config(None, model, path, "name the model to build around it with --model pi0 (or pi05)")
        return Checkpoint(params=paligemma_params(path, config, seed=seed), model_config=config, source=path,
                          format=fmt)
    saved = read_checkpoint_config(path)
    if fmt == "lerobot":
        config = _model_config(saved, model, path, "") if (saved or model) else _config_from_lerobot(path)
        return Checkpoint(params=read_lerobot_params(path, config), model_config=config, source=path, format=fmt,
                          **_saved_fields(saved, path))
    config = _model_config(saved, model, path, "name its model with --model pi0 (or pi05, or another preset)")
    params = {k: np.asarray(v) for k, v in flatten(read_params(path / "params")).items()}
    return Checkpoint(params=params, model_config=config, source=path, format=fmt, **_saved_fields(saved, path))


def write_checkpoint(ckpt: Checkpoint, out: str | Path, to: str, *, dtype: str | None = None,
                     overwrite: bool = False) -> Path:
    """Write ``ckpt`` in format ``to`` (pi0, openpi or lerobot) at ``out``, parameters cast to ``dtype``."""
    from pi0cli.models.params import unflatten

    if to not in TARGETS:
        raise ConversionError(f"unknown target format {to!r}; choose one of {', '.join(TARGETS)}")
    params = _cast(ckpt.params, dtype)
    out = Path(out).expanduser()
    with atomic_directory(out, overwrite=overwrite) as tmp:
        if ckpt.assets_dir is not None:
            shutil.copytree(ckpt.assets_dir, tmp / "assets",
                            ignore=shutil.ignore_patterns(CONFIG_FILENAME, TOKENIZER_FILENAME))
        # openpi reads only params/ and assets/<id>/: our config and tokenizer go inside assets/ there.
        side = tmp / "assets" if to == "openpi" else tmp
        side.mkdir(exist_ok=True)
        write_checkpoint_config(side / CONFIG_FILENAME, checkpoint_config(
            model_config=ckpt.model_config, embodiment=ckpt.embodiment, asset_id=ckpt.asset_id,
            default_prompt=ckpt.default_prompt, delta_action_mask=ckpt.delta_action_mask,
            metadata={**ckpt.metadata, "converted_from": f"{ckpt.format}:{ckpt.source}"}))
        if ckpt.tokenizer is not None:
            (side / TOKENIZER_FILENAME).write_bytes(ckpt.tokenizer)
        if to == "lerobot":
            write_lerobot(tmp, params, ckpt.model_config)
        else:
            write_params(tmp / "params", unflatten(params))
    return out.absolute()


def _cast(params: Mapping[str, np.ndarray], dtype: str | None) -> dict[str, np.ndarray]:
    if dtype is None:
        return dict(params)
    if dtype not in ("float32", "bfloat16"):
        raise ConversionError(f"dtype {dtype!r} is not supported; use float32 or bfloat16")
    import ml_dtypes

    target = np.float32 if dtype == "float32" else ml_dtypes.bfloat16
    return {k: v.astype(target) if np.issubdtype(v.dtype, np.floating) or v.dtype == ml_dtypes.bfloat16 else v
            for k, v in params.items()}


# ---------------------------------------------------------------------------------------------- LeRobot


def lerobot_config(model_config: Pi0Config) -> Any:
    """LeRobot's config (``PI0Config``, ``PI05Config``, ``PI0FastConfig``: the model family's) describing
    ``model_config`` (full-size variants only)."""
    from lerobot.configs.types import FeatureType, PolicyFeature

    h, w = model_config.image_resolution
    inputs = {f"observation.images.{key}": PolicyFeature(type=FeatureType.VISUAL, shape=(3, h, w))
              for key in model_config.image_keys}
    inputs["observation.state"] = PolicyFeature(type=FeatureType.STATE, shape=(model_config.action_dim,))
    return model_config.family.lerobot_config(
        model_config,
        paligemma_variant=model_config.paligemma_variant, action_expert_variant=model_config.action_expert_variant,
        dtype=model_config.dtype, chunk_size=model_config.action_horizon, n_action_steps=model_config.action_horizon,
        max_state_dim=model_config.action_dim, max_action_dim=model_config.action_dim,
        image_resolution=tuple(model_config.image_resolution), tokenizer_max_length=model_config.token_len,
        input_features=inputs,
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(model_config.action_dim,))},
        device="cpu",
    )


def is_full_size(model_config: Pi0Config) -> bool:
    """Whether LeRobot's own config can describe this model (it knows only the full-size Gemma variants)."""
    return ({model_config.paligemma_variant, model_config.action_expert_variant} <= FULL_SIZE_VARIANTS
            and model_config.siglip_variant == "So400m/14")


def write_lerobot(directory: Path, params: Mapping[str, np.ndarray], model_config: Pi0Config) -> None:
    """``model.safetensors`` (+ LeRobot's ``config.json`` for full-size models) into ``directory``."""
    import torch
    from safetensors.torch import save_file

    from pi0cli.convert.lerobot_names import to_lerobot

    tensors = {}
    for name, value in to_lerobot(params, model_config).items():
        if value.dtype.name == "bfloat16":  # torch cannot take ml_dtypes arrays directly
            tensors[name] = torch.from_numpy(np.ascontiguousarray(value).view(np.uint16)).view(torch.bfloat16)
        else:
            tensors[name] = torch.from_numpy(np.ascontiguousarray(value))
    save_file(tensors, str(directory / SAFETENSORS), metadata={"format": "pt", "producer": "pi0 convert"})
    # safetensors writes through a private temporary file (0600): give it the mode of every other file written.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory / SAFETENSORS, 0o666 & ~umask)
    if is_full_size(model_config):
        lerobot_config(model_config)._save_pretrained(directory)


def read_lerobot_params(directory: Path, model_config: Pi0Config) -> dict[str, np.ndarray]:
    """The flat reference-named params in a LeRobot policy directory's ``model.safetensors``."""
    import ml_dtypes
    import torch
    from safetensors.torch import load_file

    from pi0cli.convert.lerobot_names import NameMapError, from_lerobot

    try:
        tensors = load_file(str(directory / SAFETENSORS))
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise ConversionError(f"cannot read {directory / SAFETENSORS}: {exc}") from None
    arrays = {}
    for name, t in tensors.items():
        if t.dtype == torch.bfloat16:
            arrays[name] = t.view(torch.uint16).numpy().view(ml_dtypes.bfloat16)
        else:
            arrays[name] = t.numpy()
    try:
        return from_lerobot(arrays, model_config)
    except NameMapError as exc:
        raise ConversionError(f"{directory}: {exc}") from None


def _config_from_lerobot(directory: Path) -> Pi0Config:
    """A ``Pi0Config`` from LeRobot's ``config.json`` (policies written by LeRobot itself)."""
    from pi0cli.models.config import Pi0Config
    from pi0cli.models.families import families

    file = directory / LEROBOT_CONFIG
    if not file.is_file():
        raise ConversionError(f"{directory} has neither {CONFIG_FILENAME} nor LeRobot's {LEROBOT_CONFIG}; name its "
                              "model with --model pi0 (or pi05)")
    data = read_json(file, ConversionError)
    kind = data.get("type")
    by_type = {f.lerobot_type: f for f in families() if f.lerobot_type}
    if kind not in by_type:
        raise ConversionError(f"{file} describes a {kind!r} policy; only LeRobot {', '.join(sorted(by_type))} "
                              "policies convert")
    family = by_type[kind]
    fields: dict[str, Any] = dict(paligemma_variant=data.get("paligemma_variant", "gemma_2b"),
                  action_expert_variant=data.get("action_expert_variant", "gemma_300m"),
                  action_dim=int(data.get("max_action_dim", 32)), action_horizon=int(data.get("chunk_size", 50)),
                  image_resolution=tuple(data.get("image_resolution", (224, 224))),
                  max_token_len=int(data.get("tokenizer_max_length", family.default_token_len)))
    if data.get("dtype") in ("float32", "bfloat16"):
        fields["dtype"] = data["dtype"]
    return Pi0Config(model_type=family.name, **fields)


# -------------------------------------------------------------------------------------------- PaliGemma


def paligemma_params(npz: Path, model_config: Pi0Config, *, seed: int = 0) -> dict[str, np.ndarray]:
    """A fresh model's flat params (``seed``) with every ``PaliGemma`` weight of the VLM taken from ``npz``.

    big_vision keys are ``params/img/...`` and ``params/llm/...``; they must cover exactly the backbone
    (the VLM expert; the action expert's ``_1`` weights are not in PaliGemma and come from the seed).
    """
    import jax
    from flax import nnx

    from pi0cli.models.params import export_flat

    try:
        with np.load(npz, allow_pickle=False) as data:
            loaded = {k.removeprefix("params/"): data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise ConversionError(f"cannot read {npz} as a .npz archive: {exc}") from None
    with jax.default_device(jax.devices("cpu")[0]):
        model = cast("nnx.Module", model_config.family.build(model_config, nnx.Rngs(seed)))
        fresh = {k: np.asarray(v) for k, v in export_flat(model).items()}
    problems = []
    for key, value in loaded.items():
        ours = f"PaliGemma/{key}"
        if ours not in fresh:
            problems.append(f"{key!r} has no place in the model")
        elif value.shape != fresh[ours].shape:
            problems.append(f"{key!r} has shape {value.shape}, the model expects {fresh[ours].shape}")
        else:
            fresh[ours] = value.astype(fresh[ours].dtype)
    backbone = [k for k in fresh if k.startswith("PaliGemma/") and not _expert_key(k)]
    missing = sorted(k.removeprefix("PaliGemma/") for k in backbone if k.removeprefix("PaliGemma/") not in loaded)
    if missing:
        problems.append(f"{len(missing)} backbone weight(s) missing, e.g. {missing[:3]}")
    if problems:
        raise ConversionError(f"{npz} does not fit the {model_config.paligemma_variant} backbone: "
                              + "; ".join(problems[:5]) + " (is it a PaliGemma 224 checkpoint for this model?)")
    return fresh


def _expert_key(key: str) -> bool:
    """Whether a ``PaliGemma/llm`` key belongs to the action expert (suffix ``_1`` on a path component)."""
    return key.startswith("PaliGemma/llm/") and any(part.endswith("_1") for part in key.split("/"))
