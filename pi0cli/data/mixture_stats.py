"""Norm stats of a mixture: one set per embodiment, over every dataset of the mixture that robot appears in.

Datasets of one embodiment are joined end to end (episodes kept apart, so no action chunk crosses from one
dataset into the next) and go through the same exact two-pass statistics as ``pi0 norm-stats EMBODIMENT``.
Weights do not enter: the stats describe the robot's data, whatever share of the batches it gets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from pi0cli.data.mixture import DatasetSource, MixtureSpec
from pi0cli.errors import Pi0Error

if TYPE_CHECKING:
    from pi0cli.data.stats import DatasetColumns
    from pi0cli.embodiment import Embodiment
    from pi0cli.normstats import NormStats


@dataclasses.dataclass(frozen=True)
class EmbodimentStats:
    """The stats of one embodiment of a mixture and the entries they were computed over."""

    embodiment: Embodiment
    sources: tuple[DatasetSource, ...]
    stats: dict[str, NormStats]
    frames: int
    episodes: int


def join_columns(parts: Sequence[DatasetColumns]) -> DatasetColumns:
    """Several datasets of one embodiment as one (row and episode numbers shifted past the previous parts)."""
    if len(parts) == 1:
        return parts[0]
    columns: dict[str, list[np.ndarray]] = {}
    ends, rows, episodes = [], 0, 0
    for part in parts:
        for key, values in part.columns.items():
            if key == "episode_index":
                values = values - values.min() + episodes
            columns.setdefault(key, []).append(values)
        ends.append(part.episode_end + rows)
        rows += part.num_frames
        episodes = int(columns["episode_index"][-1].max()) + 1
    joined = {key: np.concatenate(values) for key, values in columns.items()}
    return dataclasses.replace(parts[0], columns=joined, episode_end=np.concatenate(ends))


def mixture_norm_stats(spec: MixtureSpec, embodiments: Mapping[int, Embodiment], *, horizon: int,
                       progress: Callable[[int], None] | None = None) -> list[EmbodimentStats]:
    """Exact stats per embodiment of ``spec`` (first appearance order); a bad entry's error names it."""
    from pi0cli.data.stats import compute_norm_stats, load_columns

    groups: dict[str, list[DatasetSource]] = {}
    for source in spec.sources:
        groups.setdefault(embodiments[source.index].name, []).append(source)
    out = []
    for sources in groups.values():
        embodiment = embodiments[sources[0].index]
        parts = []
        for source in sources:
            try:
                parts.append(load_columns(embodiment, source.dataset))
            except Pi0Error as exc:
                raise spec.error(source, str(exc)) from None
        data = join_columns(parts)
        stats = compute_norm_stats(embodiment, "", horizon=horizon, progress=progress, data=data)
        out.append(EmbodimentStats(embodiment, tuple(sources), stats, data.num_frames, data.num_episodes))
    return out
