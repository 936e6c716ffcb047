"""Norm stats of a LeRobot dataset for an embodiment, from the numeric parquet columns alone (no video).

What is measured is what the model is trained on, before padding: each frame's state and its action chunk
of ``horizon`` steps (the episode's last action repeated past its end, as lerobot's delta timestamps pad),
after the embodiment's input transform and delta actions. The transform runs on whole blocks of frames with
1x1 placeholder images, so no video is decoded. Statistics are exact (:class:`pi0cli.normstats.ExactStats`):
two vectorised passes over the in-memory columns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pi0cli.data.lerobot import DatasetError, check_dataset_fits, read_info, read_numeric, resolve_dataset
from pi0cli.normstats import ExactStats, NormStats
from pi0cli.transforms import NORM_EPS, DeltaActions, KeepKeys, Normalize, compose

if TYPE_CHECKING:
    from pi0cli.embodiment import Embodiment
    from pi0cli.models.fast_tokenizer import FastActionTokenizer, FitReport

BLOCK_FRAMES = 4096


@dataclasses.dataclass
class DatasetColumns:
    """The numeric columns an embodiment needs, checked against its contract."""

    root: Path
    embodiment: Embodiment
    columns: dict[str, np.ndarray]
    episode_end: np.ndarray  # per row: index one past the last row of its episode

    @property
    def num_frames(self) -> int:
        return int(self.episode_end.shape[0])

    @property
    def num_episodes(self) -> int:
        return int(len(np.unique(self.columns["episode_index"])))


def load_columns(embodiment: Embodiment, source: str | Path) -> DatasetColumns:
    """Read and validate the state and action columns of ``embodiment`` (one clear error per problem)."""
    _, root = resolve_dataset(source)
    if not root.is_dir():
        raise DatasetError(f"dataset {str(source)!r} is not on this machine (looked in {root}); download it first")
    info = read_info(root)
    check_dataset_fits(embodiment, info, root, cameras=False)
    wanted: dict[str, int] = {embodiment.dataset_keys[f.key]: f.dim for f in embodiment.state}
    wanted[embodiment.action_key] = embodiment.action_dim
    if int(info.get("total_frames", 0)) == 0:
        raise DatasetError(f"dataset {root} is empty (0 frames); record or convert some episodes first")
    data = read_numeric(root, list(wanted))
    n = len(data["index"])
    if n == 0:
        raise DatasetError(f"dataset {root} is empty (0 frames); record or convert some episodes first")
    for column, dim in wanted.items():
        values = data[column]
        if values.ndim == 1:  # lerobot stores shape-[1] features as plain scalars
            values = data[column] = values[:, None]
        if values.ndim != 2 or values.shape[1] != dim:
            raise DatasetError(f"column {column!r} of {root} holds vectors of {values.shape[1:]} but embodiment "
                               f"{embodiment.name!r} expects {dim}")
        finite = np.isfinite(values).all(axis=1)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            episode, frame = int(data["episode_index"][row]), int(data["frame_index"][row])
            bad = int((~finite).sum())
            raise DatasetError(
                f"column {column!r} holds NaN or infinity in episode {episode} (frame {frame}; {bad} bad frame(s) "
                f"in all); fix or drop that episode"
            )
    episodes = data["episode_index"]
    starts = np.flatnonzero(np.r_[True, episodes[1:] != episodes[:-1]])
    ends = np.r_[starts[1:], n]
    if len(np.unique(episodes)) != len(starts):
        raise DatasetError(f"dataset {root}: the frames of an episode are not contiguous in index order")
    episode_end = np.repeat(ends, ends - starts)
    return DatasetColumns(root, embodiment, data, episode_end)


@dataclasses.dataclass(frozen=True)
class RobotBlocks:
    """Blocks of model-space ``state [m, S]`` and ``actions [m, H, A]`` (embodiment inputs + delta actions)."""

    data: DatasetColumns
    horizon: int
    delta_action_mask: tuple[bool, ...] | None = None
    block_frames: int = BLOCK_FRAMES

    def transform(self):
        emb = self.data.embodiment
        mask = emb.delta_action_mask if self.delta_action_mask is None else (tuple(self.delta_action_mask) or None)
        return compose(KeepKeys(emb.inputs, ()), DeltaActions(mask))

    def __iter__(self):
        emb = self.data.embodiment
        cols = self.data.columns
        n = self.data.num_frames
        transform = self.transform()
        steps = np.arange(self.horizon)
        cameras = [c for c in emb.cameras if c.key in emb.dataset_keys]
        for start in range(0, n, self.block_frames):
            rows = np.arange(start, min(start + self.block_frames, n))
            m = len(rows)
            chunk = np.minimum(rows[:, None] + steps[None, :], self.data.episode_end[rows, None] - 1)
            row: dict[str, Any] = {emb.dataset_keys[f.key]: cols[emb.dataset_keys[f.key]][rows] for f in emb.state}
            row[emb.action_key] = cols[emb.action_key][chunk]
            for cam in cameras:
                row[emb.dataset_keys[cam.key]] = np.zeros((m, 1, 1, 3), dtype=np.uint8)
            out = transform(emb.repack(row))
            state = np.asarray(out["state"], dtype=np.float32)
            actions = np.asarray(out["actions"], dtype=np.float32)
            if state.shape != (m, emb.state_dim) or actions.shape != (m, self.horizon, emb.action_dim):
                raise DatasetError(
                    f"embodiment {emb.name!r}'s input transform gave state {state.shape} and actions {actions.shape}; "
                    f"its contract says state [{emb.state_dim}] and actions [{emb.action_dim}]"
                )
            yield state, actions


def compute_norm_stats(embodiment: Embodiment, source: str | Path, *, horizon: int,
                       delta_action_mask: tuple[bool, ...] | None = None,
                       progress: Callable[[int], None] | None = None,
                       data: DatasetColumns | None = None) -> dict[str, NormStats]:
    """Exact ``{"state", "actions"}`` norm stats of a dataset (two passes; ``progress(frames)`` after each block)."""
    if horizon <= 0:
        raise DatasetError(f"--horizon must be positive, got {horizon}")
    data = data or load_columns(embodiment, source)
    blocks = RobotBlocks(data, horizon, delta_action_mask)
    state = ExactStats(embodiment.state_dim)
    actions = ExactStats(embodiment.action_dim)
    for s, a in blocks:
        state.update(s)
        actions.update(a)
        if progress:
            progress(len(s))
    for s, a in blocks:
        state.refine(s)
        actions.refine(a)
        if progress:
            progress(len(s))
    return {"state": state.result(), "actions": actions.result()}


@dataclasses.dataclass
class DimReport:
    key: str
    dim: int
    clip_rate: float
    near_constant: bool
    drift: float  # |mean_data - mean_stats| / std_stats

    @property
    def drifted(self) -> bool:
        return self.drift > 1.0


def check_norm_stats(embodiment: Embodiment, source: str | Path, stats: Mapping[str, NormStats], *, horizon: int,
                     delta_action_mask: tuple[bool, ...] | None = None,
                     progress: Callable[[int], None] | None = None,
                     near_constant_range: float = 1e-3,
                     data: DatasetColumns | None = None) -> tuple[list[DimReport], dict[str, NormStats]]:
    """How well existing ``stats`` fit a dataset, per dimension of ``state`` and ``actions``.

    - clip rate: the share of values that quantile normalisation maps outside [-1, 1];
    - near-constant: the stats' ``q99 - q01`` (or, without quantiles, ``std``) is below
      ``near_constant_range``, or the dataset's own std is: normalisation then amplifies noise;
    - drift: ``|dataset mean - stats mean| / stats std`` (flagged above 1).
    """
    data = data or load_columns(embodiment, source)
    for key, dim in (("state", embodiment.state_dim), ("actions", embodiment.action_dim)):
        if key not in stats:
            raise DatasetError(f"the norm stats have no {key!r} entry; recompute them with `pi0 norm-stats`")
        if stats[key].dim != dim:
            raise DatasetError(
                f"norm stats {key!r} have {stats[key].dim} dims but embodiment {embodiment.name!r} has {dim}; "
                "these stats belong to another robot"
            )
    fresh = compute_norm_stats(embodiment, source, horizon=horizon, delta_action_mask=delta_action_mask,
                               progress=progress, data=data)
    outside = {"state": np.zeros(embodiment.state_dim, np.int64), "actions": np.zeros(embodiment.action_dim, np.int64)}
    counts = {"state": 0, "actions": 0}
    for s, a in RobotBlocks(data, horizon, delta_action_mask):
        for key, values in (("state", s), ("actions", a.reshape(-1, a.shape[-1]))):
            st = stats[key]
            if st.q01 is None or st.q99 is None:
                continue
            q01, q99 = np.asarray(st.q01, np.float64), np.asarray(st.q99, np.float64)
            y = (values.astype(np.float64) - q01) / (q99 - q01 + NORM_EPS) * 2.0 - 1.0
            outside[key] += (np.abs(y) > 1.0).sum(axis=0)
            counts[key] += len(values)
    reports = []
    for key in ("state", "actions"):
        st, new = stats[key], fresh[key]
        has_quantiles = st.q01 is not None and st.q99 is not None
        spread = (np.asarray(st.q99) - np.asarray(st.q01)) if has_quantiles else np.asarray(st.std)
        std = np.asarray(st.std, np.float64)
        for d in range(st.dim):
            drift = abs(float(new.mean[d]) - float(st.mean[d])) / max(float(std[d]), NORM_EPS)
            reports.append(DimReport(
                key=key, dim=d,
                clip_rate=float(outside[key][d] / counts[key]) if counts[key] else float("nan"),
                near_constant=bool(abs(float(spread[d])) < near_constant_range
                                   or float(new.std[d]) < near_constant_range),
                drift=drift,
            ))
    return reports, fresh


def summarize(reports: Sequence[DimReport]) -> dict[str, Any]:
    return {
        "max_clip_rate": max((r.clip_rate for r in reports if r.clip_rate == r.clip_rate), default=0.0),
        "near_constant": [f"{r.key}[{r.dim}]" for r in reports if r.near_constant],
        "drifted": [f"{r.key}[{r.dim}]" for r in reports if r.drifted],
    }


def fit_fast_tokenizer(embodiment: Embodiment, source: str | Path, norm_stats: Mapping[str, NormStats], *,
                       horizon: int, delta_action_mask: tuple[bool, ...] | None = None, scale: float = 10.0,
                       vocab_size: int = 1024,
                       max_chunks: int | None = 200_000) -> tuple[FastActionTokenizer, FitReport]:
    """Fit pi0-FAST's action tokenizer on a LeRobot dataset's action chunks as the model sees them: the
    embodiment's inputs and delta actions, then quantile normalisation with ``norm_stats``. Reads the numeric
    parquet columns only (no video). Lives here, not beside the tokenizer, so the model layer reads no dataset."""
    from pi0cli.models.fast_tokenizer import FastTokenizerError, fit_from_blocks

    if "actions" not in norm_stats:
        raise FastTokenizerError("the norm stats have no 'actions' entry; compute them first (pi0 norm-stats)")
    normalize = Normalize({"actions": norm_stats["actions"]}, use_quantiles=True)
    blocks = RobotBlocks(load_columns(embodiment, Path(source)), horizon, delta_action_mask)
    return fit_from_blocks(
        (actions for _, actions in blocks),
        normalize=lambda a: np.asarray(normalize({"actions": a})["actions"]),
        scale=scale, vocab_size=vocab_size, max_chunks=max_chunks,
    )
