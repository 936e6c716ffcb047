"""The policy checkpoint layout every pi0 tool reads and writes, and its file I/O (no model, no JAX at import).

A policy checkpoint directory::

    <dir>/params/                          orbax PyTree {"params": <reference-named parameter tree>}
    <dir>/assets/<asset_id>/norm_stats.json reference norm-stats format
    <dir>/pi0_config.json                  {"format": "pi0-policy/1", "model": {Pi0Config fields},
                                            "embodiment", "asset_id", "default_prompt", "delta_action_mask",
                                            "metadata"}   (our addition; optional)
    <dir>/tokenizer.model                  optional sentencepiece model (tiny models' own vocabulary)

``params/`` and ``assets/`` are exactly the reference (openpi) layout, so a released openpi checkpoint
directory loads too when the model preset is named, and a pi0 training step directory (whose config and
tokenizer sit in ``assets/``) reads with no extra argument.

Writers go through :func:`atomic_directory`: a reader never sees half a checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pi0cli.errors import Pi0Error, read_json
from pi0cli.normstats import NormStats, save_norm_stats
from pi0cli.transforms import strip_value_leaves

if TYPE_CHECKING:
    from pi0cli.models.config import Pi0Config

CONFIG_FILENAME = "pi0_config.json"
#: A checkpoint's own prompt tokenizer. Every checkpoint pi0 has written (and every training step's
#: ``assets/``) uses this name, so it stays; the shared PaliGemma model in the download cache keeps the
#: reference's name, :data:`pi0cli.models.tokenizer.PALIGEMMA_TOKENIZER_FILENAME`.
TOKENIZER_FILENAME = "tokenizer.model"
FORMAT = "pi0-policy/1"


class CheckpointError(Pi0Error):
    """A checkpoint that is missing, incomplete or does not fit the request."""


# ------------------------------------------------------------------------------------------ locating


def latest_step_dir(directory: Path) -> Path | None:
    """The highest-numbered complete step folder of a training experiment (``<exp>/<step>/params``), if any.

    Orbax writes a step under a temporary name and renames it when complete, so a numbered folder holding
    ``params/`` is a finished one."""
    try:
        steps = [p for p in Path(directory).iterdir() if p.name.isdigit() and (p / "params").is_dir()]
    except OSError:
        return None
    return max(steps, key=lambda p: int(p.name), default=None)


def resolve_step(directory: str | os.PathLike[str]) -> tuple[Path, str | None]:
    """The checkpoint directory ``directory`` names, and a note when it is not ``directory`` itself.

    A training experiment folder (numbered step folders, no ``params/`` of its own) means its latest complete
    step, with a note saying so; a file or a missing path fails with one line saying what to point at. Any
    other directory is returned as is (the caller checks its contents)."""
    path = Path(directory).expanduser()
    if path.is_file():
        raise CheckpointError(f"{path} is a file, not a checkpoint; point at a checkpoint directory (a training step "
                              "holding params/ and assets/, or its experiment folder)")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; point at a checkpoint directory (a training step "
                              "holding params/ and assets/, or its experiment folder)")
    if (path / "params").is_dir():
        return path, None
    step = latest_step_dir(path)
    if step is None:
        return path, None
    return step, f"{path} is a training experiment; using its latest complete step, {step.name} ({step})"


# --------------------------------------------------------------------------------------------- configs


def config_to_dict(config: Any) -> dict[str, Any]:
    """A frozen config dataclass as plain JSON values (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(data: Mapping[str, Any]) -> Pi0Config:
    """A ``Pi0Config`` from its JSON form (unknown fields are an error naming them)."""
    from pi0cli.models.config import Pi0Config

    fields = {f.name for f in dataclasses.fields(Pi0Config)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise CheckpointError(f"model config has unknown field(s) {unknown}; is the checkpoint from a newer pi0?")
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return Pi0Config(**values)


def model_config_of(saved: Mapping[str, Any] | None, model: str | Pi0Config | None) -> Pi0Config | None:
    """The model config to use: ``model`` (a preset name or a ``Pi0Config``) if given, else the saved one;
    None when neither exists (the caller says which flag to pass)."""
    from pi0cli.models.config import Pi0Config, preset

    if isinstance(model, Pi0Config):
        return model
    if isinstance(model, str):
        return preset(model)
    if saved:
        return config_from_dict(saved["model"])
    return None


def read_checkpoint_config(directory: Path) -> dict[str, Any] | None:
    """The pi0 config of a checkpoint (``pi0_config.json`` or a training step's ``assets/pi0_config.json``)."""
    for candidate in (directory / CONFIG_FILENAME, directory / "assets" / CONFIG_FILENAME):
        if candidate.is_file():
            data = read_json(candidate, CheckpointError)
            if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
                raise CheckpointError(f"{candidate} has no 'model' object; it is not a pi0 checkpoint config")
            return data
    return None


def read_tokenizer(directory: Path) -> bytes | None:
    """The checkpoint's own tokenizer model (policy or training-step layout), or None."""
    for candidate in (directory / TOKENIZER_FILENAME, directory / "assets" / TOKENIZER_FILENAME):
        if candidate.is_file():
            return candidate.read_bytes()
    return None


def write_checkpoint_config(path: Path, config: Mapping[str, Any]) -> None:
    """Write ``pi0_config.json`` (``config`` as :func:`checkpoint_config` builds it)."""
    path.write_text(json.dumps(config, indent=2, sort_keys=True))


def checkpoint_config(
    *,
    model_config: Pi0Config,
    embodiment: str | None,
    asset_id: str | None,
    default_prompt: str | None = None,
    delta_action_mask: Sequence[bool] | None | str = "embodiment",
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON content of ``pi0_config.json``."""
    mask: Any = delta_action_mask
    if not (mask is None or isinstance(mask, str)):
        mask = [bool(v) for v in mask]
    return {
        "format": FORMAT,
        "model": config_to_dict(model_config),
        "embodiment": embodiment,
        "asset_id": asset_id,
        "default_prompt": default_prompt,
        "delta_action_mask": mask,
        "metadata": json.loads(json.dumps(dict(metadata or {}))),
    }


# ------------------------------------------------------------------------------------------- directories


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


# ----------------------------------------------------------------------------------------------- params


def _as_numpy_tree(tree: Mapping[str, Any]) -> dict[str, Any]:
    from pi0cli.transforms import flatten, unflatten

    return unflatten({k: np.asarray(v) for k, v in flatten(tree).items()})


def write_params(params_dir: Path, params: Mapping[str, Any]) -> None:
    """Write a reference-named parameter tree as the orbax ``params/`` item (``{"params": tree}``)."""
    import orbax.checkpoint as ocp

    ocp.PyTreeCheckpointer().save(Path(params_dir).absolute(), {"params": _as_numpy_tree(params)})


def _without_closed_loop_echoes(hook: Callable[[Any], object]) -> Callable[[Any], object]:
    """``hook`` minus the echoes of a failed orbax read.

    Orbax restores on an event loop of its own and closes it as soon as one read fails; tensorstore then
    finishes the reads still in flight and reports each reply into the closed loop as an unraisable
    ``RuntimeError: Event loop is closed`` (up to one traceback per array, printed after our one-line error).
    They repeat the failure already raised, so they are dropped; anything else, and everything under
    ``PI0_DEBUG=1``, reaches ``hook``.
    """

    def filtered(unraisable: Any) -> object:
        error = unraisable.exc_value
        if (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
                and not os.environ.get("PI0_DEBUG")):
            return None
        return hook(unraisable)

    return filtered


class _DropUnretrievedTaskEchoes(logging.Filter):
    """The same echoes when they arrive as asyncio's "Task exception was never retrieved" log record instead
    (whichever way a finished read is collected, timing decides)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Task exception was never retrieved")


_UNRETRIEVED_TASK_ECHOES = _DropUnretrievedTaskEchoes()  # one instance: addFilter skips it when already there


def read_params(params_dir: Path) -> dict[str, Any]:
    """The reference-named parameter tree of a ``params/`` item (numpy arrays; ``value`` leaves stripped).

    Every leaf is restored as a host numpy array: no device placement, so orbax has no sharding to guess
    (restoring jax arrays without shardings reads them from the checkpoint, with a warning on every load).
    """
    import jax
    import orbax.checkpoint as ocp

    checkpointer = ocp.PyTreeCheckpointer()
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _without_closed_loop_echoes(previous_hook)
    try:
        metadata = checkpointer.metadata(params_dir.absolute())
        tree_metadata = getattr(metadata, "item_metadata", metadata)
        tree_metadata = getattr(tree_metadata, "tree", tree_metadata)
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree_metadata)
        tree = checkpointer.restore(params_dir.absolute(), restore_args=restore_args)
    except Exception as exc:  # orbax raises many types for unreadable directories
        reason = " ".join(str(exc).split())[:300]
        if not os.environ.get("PI0_DEBUG"):
            logging.getLogger("asyncio").addFilter(_UNRETRIEVED_TASK_ECHOES)
        raise CheckpointError(f"cannot read the parameters in {params_dir}: {reason}") from None  # echoes follow
    sys.unraisablehook = previous_hook
    if isinstance(tree, Mapping) and set(tree) == {"params"}:
        tree = tree["params"]
    return strip_value_leaves(tree)


def save_policy_checkpoint(
    directory: str | os.PathLike[str],
    *,
    params: Mapping[str, Any],
    model_config: Pi0Config,
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
        write_checkpoint_config(tmp / CONFIG_FILENAME, checkpoint_config(
            model_config=model_config, embodiment=embodiment, asset_id=asset_id, default_prompt=default_prompt,
            delta_action_mask=delta_action_mask, metadata=metadata))
        if tokenizer is not None:
            (tmp / TOKENIZER_FILENAME).write_bytes(tokenizer)
    return Path(directory).absolute()
