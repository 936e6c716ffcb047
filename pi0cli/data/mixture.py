"""Weighted mixtures of datasets for training: the mixture file, its checks, the batch order and the frames.

A mixture file (TOML) lists datasets, each with its own robot::

    [[dataset]]
    path = "demos/aloha"          # a local root, or repo_id = "user/name" (the local LeRobot cache)
    embodiment = "aloha_sim"
    weight = 2.0                   # relative; need not sum to one
    prompt = "transfer the cube"   # optional: replaces every episode's task
    name = "aloha"                 # optional: the label in the training log (default: the embodiment)

Order. Each position of global batch ``s`` picks its source with ``default_rng([seed, s, SOURCE_KEY])`` in
proportion to the weights, so the sources of a step depend only on ``(seed, s)``. Within source ``k`` the
example at stream position ``p = s * B + j`` is element ``p mod N_k`` of the permutation
``default_rng([seed, k, p // N_k])`` of its ``N_k`` frames: no frame repeats within a window of ``N_k``
positions, and the batch of any step is computed without replaying earlier ones, which is what makes
``--resume`` bit-exact.

Each example carries ``action_mask`` (``[action_dim]`` bool, true for the robot's own action dims; the loss
ignores the rest) and ``source`` (int32 index into the mixture, for the per-dataset loss).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pi0cli.data.loader import BatchOrder, LoaderError, Shard
from pi0cli.errors import Pi0Error

#: salt of the source draw, so it never shares a stream with a permutation
SOURCE_KEY = 0x6D6978


class MixtureError(Pi0Error, ValueError):
    """A mixture file or one of its entries that cannot be trained on."""


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    """One ``[[dataset]]`` entry; ``index`` is its 1-based position in the file (for messages)."""

    index: int
    dataset: str
    embodiment: str
    weight: float
    prompt: str | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        return f"dataset #{self.index} ({self.dataset})"


@dataclasses.dataclass(frozen=True)
class MixtureSpec:
    """The datasets of a mixture and where they were read from."""

    path: Path
    sources: tuple[DatasetSource, ...]

    @property
    def probabilities(self) -> np.ndarray:
        weights = np.asarray([s.weight for s in self.sources], dtype=np.float64)
        return weights / weights.sum()

    @property
    def names(self) -> tuple[str, ...]:
        """Log labels: the entry's name, else its embodiment (``#index`` added where one repeats)."""
        base = [s.name or s.embodiment for s in self.sources]
        return tuple(b if base.count(b) == 1 else f"{b}#{s.index}" for b, s in zip(base, self.sources, strict=True))

    def error(self, source: DatasetSource, problem: str) -> MixtureError:
        return MixtureError(f"{self.path} {source.label}: {problem}")


_KEYS = {"path", "repo_id", "embodiment", "weight", "prompt", "name"}


def read_mixture(path: str | os.PathLike[str]) -> MixtureSpec:
    """Parse and check the shape of a mixture file (names are resolved later: :func:`resolve_embodiments`)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise MixtureError(f"mixture file {path} not found; pass the path of a TOML file with [[dataset]] "
                           "entries") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise MixtureError(f"mixture file {path} cannot be read: {exc}; fix the TOML") from None
    entries = data.get("dataset")
    if not isinstance(entries, list) or not entries:
        raise MixtureError(f"mixture file {path} has no [[dataset]] entries; add one per dataset (path or repo_id, "
                           "embodiment, weight)")
    sources = [_source(path, i, entry) for i, entry in enumerate(entries, start=1)]
    if sum(s.weight for s in sources) <= 0:
        raise MixtureError(f"mixture file {path}: every weight is zero; give at least one dataset a positive weight")
    return MixtureSpec(path, tuple(sources))


def _source(path: Path, index: int, entry: Any) -> DatasetSource:
    where = f"{path} dataset #{index}"
    if not isinstance(entry, dict):
        raise MixtureError(f"{where}: expected a table ([[dataset]]), got {entry!r}")
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise MixtureError(f"{where}: unknown key {', '.join(map(repr, unknown))}; the keys are "
                           f"{', '.join(sorted(_KEYS))}")
    if ("path" in entry) == ("repo_id" in entry):
        raise MixtureError(f"{where}: give exactly one of path (a local dataset root) or repo_id")
    dataset = str(entry.get("path") or entry.get("repo_id") or "")
    if "path" in entry and not Path(dataset).expanduser().is_absolute():
        dataset = str(path.parent / Path(dataset).expanduser())  # relative to the mixture file, like an include
    where = f"{path} dataset #{index} ({dataset})"
    embodiment = entry.get("embodiment")
    if not isinstance(embodiment, str) or not embodiment:
        raise MixtureError(f"{where}: no embodiment; add embodiment = \"NAME\" (see `pi0 embodiments`)")
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not np.isfinite(weight):
        raise MixtureError(f"{where}: weight must be a number, got {weight!r}")
    if weight < 0:
        raise MixtureError(f"{where}: weight {weight} is negative; use a weight >= 0 (0 leaves the dataset out)")
    for key in ("prompt", "name"):
        if key in entry and (not isinstance(entry[key], str) or not entry[key].strip()):
            raise MixtureError(f"{where}: {key} must be a non-empty string, got {entry[key]!r}")
    return DatasetSource(index, dataset, embodiment, float(weight), entry.get("prompt"), entry.get("name"))


def resolve_embodiments(spec: MixtureSpec, lookup: Callable[[str], Any]) -> dict[int, Any]:
    """``{source.index: lookup(source.embodiment)}``; an unknown name becomes one error naming its entry
    (``lookup``'s message, with its did-you-mean, follows)."""
    out = {}
    for source in spec.sources:
        try:
            out[source.index] = lookup(source.embodiment)
        except Pi0Error as exc:
            raise spec.error(source, f"{exc}; fix its embodiment") from None
    return out


class MixtureOrder(BatchOrder):
    """Flat sample indices (offsets into the concatenated sources) of every step; see the module docstring.

    A :class:`BatchOrder` (its checks of batch size and shards, its process slice) with weighted sources."""

    def __init__(self, sizes: Sequence[int], probabilities: Sequence[float], batch_size: int, seed: int,
                 shard: Shard = Shard()):
        super().__init__(max(1, sum(sizes)), batch_size, seed, shard)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.p = np.asarray(probabilities, dtype=np.float64)
        if len(self.sizes) != len(self.p) or np.any((self.p > 0) & (self.sizes == 0)):
            raise LoaderError("every source with a positive weight needs at least one frame")
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self._source_perms: dict[tuple[int, int], np.ndarray] = {}

    def source_permutation(self, k: int, epoch: int) -> np.ndarray:
        perm = self._source_perms.get((k, epoch))
        if perm is None:
            perm = np.random.default_rng([self.seed, k, epoch]).permutation(self.sizes[k])
            self._source_perms[(k, epoch)] = perm
            while len(self._source_perms) > 2 * len(self.sizes):  # a batch spans at most two epochs per source
                del self._source_perms[next(iter(self._source_perms))]
        return perm

    def sources(self, step: int) -> np.ndarray:
        """The source of each position of global batch ``step``."""
        rng = np.random.default_rng([self.seed, step, SOURCE_KEY])
        return rng.choice(len(self.p), size=self.batch_size, p=self.p)

    def global_indices(self, step: int) -> np.ndarray:
        sources = self.sources(step)
        positions = step * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
        out = np.empty(self.batch_size, dtype=np.int64)
        for k in np.unique(sources):
            sel = sources == k
            epochs, offsets = np.divmod(positions[sel], self.sizes[k])
            local = np.empty(len(offsets), dtype=np.int64)
            for epoch in np.unique(epochs):
                at = epochs == epoch
                local[at] = self.source_permutation(int(k), int(epoch))[offsets[at]]
            out[sel] = self.offsets[k] + local
        return out


@dataclasses.dataclass(frozen=True)
class MixturePart:
    """One source's frames and the transform that turns a frame into a model example."""

    frames: Any  # anything with __len__ / __getitem__ (LeRobotFrames)
    transform: Callable[[dict[str, Any]], dict[str, Any]]
    action_dim: int  # the robot's action dims (the model pads to more)
    model_action_dim: int
    prompt: str | None = None


class MixtureFrames:
    """The sources end to end: flat index -> that source's model example, with ``action_mask`` and ``source``.

    Picklable when its parts are (process workers)."""

    def __init__(self, parts: Sequence[MixturePart]):
        self.parts = list(parts)
        self.sizes = [len(p.frames) for p in self.parts]
        self._ends = np.cumsum(self.sizes)

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getitem__(self, index: int) -> dict[str, Any]:
        k = int(np.searchsorted(self._ends, index, side="right"))
        part = self.parts[k]
        row = part.frames[int(index) - (int(self._ends[k - 1]) if k else 0)]
        if part.prompt is not None:
            row["prompt"] = part.prompt  # the override beats the episode's task
        example = part.transform(row)
        example["action_mask"] = np.arange(part.model_action_dim) < part.action_dim
        example["source"] = np.int32(k)
        return example


def source_counts(spec: MixtureSpec, order: MixtureOrder, steps: int) -> Mapping[str, int]:
    """How many examples of each source ``steps`` batches draw (the sampling test and the benchmark)."""
    counts = np.zeros(len(spec.sources), dtype=np.int64)
    for step in range(steps):
        counts += np.bincount(order.sources(step), minlength=len(spec.sources))
    return dict(zip(spec.names, counts.tolist(), strict=True))
