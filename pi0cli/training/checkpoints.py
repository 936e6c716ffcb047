"""Training checkpoints with orbax, in the reference layout.

``<exp_dir>/<step>/`` holds three items, written into a temporary directory and renamed into place by orbax
only when all three are complete (so a killed save never looks like a checkpoint):

- ``params/``: ``{"params": <reference-named parameter tree>}`` (the EMA parameters when EMA is on), what the
  reference's and pi0's policy loaders read;
- ``train_state/``: everything needed to continue bit for bit (step, trainable parameters, optimiser state,
  EMA, rng);
- ``assets/``: ``<asset_id>/norm_stats.json`` (reference format) and ``pi0_config.json`` (the model and
  training config, so ``pi0 serve --checkpoint`` needs no other flag).

Saves are asynchronous: training continues while arrays are written.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp
from etils import epath

from pi0cli.checkpoint import CONFIG_FILENAME
from pi0cli.normstats import NormStats, load_norm_stats, save_norm_stats


@dataclasses.dataclass
class Assets:
    """The non-array contents of a checkpoint."""

    norm_stats: Mapping[str, Mapping[str, NormStats]]  # asset_id -> key -> stats
    config: Mapping[str, Any]
    #: extra files stored verbatim (e.g. ``tokenizer.model`` of a tiny model's own sentencepiece model)
    files: Mapping[str, bytes] = dataclasses.field(default_factory=dict)


class AssetsHandler(ocp.CheckpointHandler):
    """Writes and reads :class:`Assets` as plain files inside the step's ``assets/`` item."""

    def save(self, directory: epath.Path, args: AssetsSave) -> None:
        import jax

        if jax.process_index() != 0:
            return
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        for asset_id, stats in args.assets.norm_stats.items():
            save_norm_stats(stats, root / asset_id)
        (root / CONFIG_FILENAME).write_text(json.dumps(args.assets.config, indent=2, sort_keys=True))
        for name, data in args.assets.files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)  # e.g. <asset_id>/fast_tokenizer/
            (root / name).write_bytes(data)

    def restore(self, directory: epath.Path, args: AssetsRestore | None = None) -> Assets:
        return read_assets(Path(directory))


@ocp.args.register_with_handler(AssetsHandler, for_save=True)
@dataclasses.dataclass
class AssetsSave(ocp.args.CheckpointArgs):
    assets: Assets


@ocp.args.register_with_handler(AssetsHandler, for_restore=True)
@dataclasses.dataclass
class AssetsRestore(ocp.args.CheckpointArgs):
    pass


def read_assets(assets_dir: Path) -> Assets:
    """Norm stats of every asset id under ``assets_dir`` and the pi0 config (empty when absent)."""
    stats = {}
    for file in sorted(assets_dir.rglob("norm_stats.json")):
        stats[str(file.parent.relative_to(assets_dir))] = load_norm_stats(file)
    config_file = assets_dir / CONFIG_FILENAME
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    return Assets(norm_stats=stats, config=config)


class CheckpointManager:
    """Saves and restores the training checkpoints of one experiment directory."""

    def __init__(self, exp_dir: Path, *, max_to_keep: int = 1, keep_period: int | None = None,
                 async_save: bool = True):
        self.exp_dir = Path(exp_dir).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            keep_period=keep_period,
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=True,  # leftovers of a killed save are removed, never read
        )
        self._manager = ocp.CheckpointManager(
            self.exp_dir, options=options, item_names=("params", "train_state", "assets"),
            item_handlers={"assets": AssetsHandler()},
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, *, params: Any, train_state: Any, assets: Assets) -> None:
        """Start saving ``step`` (returns while arrays are still being written)."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.PyTreeSave({"params": params}),
                train_state=ocp.args.PyTreeSave(train_state),
                assets=AssetsSave(assets),
            ),
        )

    def restore_train_state(self, step: int, target: Any) -> Any:
        """The ``train_state`` item of ``step``, restored into the structure, dtypes and shardings of ``target``
        (an abstract pytree of ``jax.ShapeDtypeStruct`` with shardings)."""
        restored = self._manager.restore(
            step, args=ocp.args.Composite(train_state=ocp.args.PyTreeRestore(
                item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)))
        )
        return restored["train_state"]

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def wipe(exp_dir: Path) -> None:
    """Remove an experiment directory (``--overwrite``)."""
    if Path(exp_dir).exists():
        shutil.rmtree(exp_dir)
