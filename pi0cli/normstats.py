"""Normalisation statistics and the reference ``norm_stats.json`` format.

The file is ``{"norm_stats": {"state": {"mean", "std", "q01", "q99"}, "actions": {...}}}`` (indent 2,
q01/q99 may be null), exactly as the reference writes and reads it, stored under
``assets/<asset_id>/norm_stats.json`` of a checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pi0cli.errors import NormStatsError, read_json

NORM_STATS_FILENAME = "norm_stats.json"


@dataclasses.dataclass(frozen=True, eq=False)
class NormStats:
    """Per-dimension statistics of one data key (vectors of the robot's raw dims)."""

    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray | None = None
    q99: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("mean", "std", "q01", "q99"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, np.asarray(value, dtype=np.float64 if _is_f64(value) else np.float32))
        shapes = {name: getattr(self, name).shape for name in ("mean", "std", "q01", "q99")
                  if getattr(self, name) is not None}
        if len(set(shapes.values())) != 1:
            raise NormStatsError(f"norm stats vectors differ in shape: {shapes}; every vector needs one value per dim")

    @property
    def dim(self) -> int:
        return int(self.mean.shape[-1])

    def to_json(self) -> dict[str, list[float] | None]:
        return {
            name: None if getattr(self, name) is None else [float(v) for v in np.asarray(getattr(self, name)).ravel()]
            for name in ("mean", "std", "q01", "q99")
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object], *, where: str = "norm stats") -> NormStats:
        if not isinstance(data, Mapping) or "mean" not in data or "std" not in data:
            raise NormStatsError(f"{where}: expected an object with 'mean' and 'std' (and optional 'q01', 'q99')")
        values: dict[str, Any] = {}
        for name in ("mean", "std", "q01", "q99"):
            raw = data.get(name)
            if raw is None:
                values[name] = None
                continue
            if not isinstance(raw, list) or not all(isinstance(v, (int, float)) for v in raw):
                raise NormStatsError(f"{where}: {name!r} must be a list of numbers")
            if not all(math.isfinite(v) for v in raw):
                raise NormStatsError(f"{where}: {name!r} holds NaN or infinity; recompute the stats")
            values[name] = np.asarray(raw, dtype=np.float32)
        return cls(**values)


def _is_f64(value: object) -> bool:
    return isinstance(value, np.ndarray) and value.dtype == np.float64


def norm_stats_path(path: str | os.PathLike[str]) -> Path:
    """``path`` itself if it is a file, else ``path/norm_stats.json``."""
    path = Path(path)
    return path if path.suffix == ".json" else path / NORM_STATS_FILENAME


def load_norm_stats(path: str | os.PathLike[str]) -> dict[str, NormStats]:
    """Read a reference ``norm_stats.json`` (a file, or a directory holding one)."""
    file = norm_stats_path(path)
    if not file.is_file():
        raise NormStatsError(f"no norm stats at {file}; compute them with `pi0 norm-stats` or pass the right path")
    raw = read_json(file, NormStatsError, "recompute it with `pi0 norm-stats`")
    if not isinstance(raw, Mapping) or not isinstance(raw.get("norm_stats"), Mapping):
        raise NormStatsError(f"{file}: expected a top-level 'norm_stats' object as the reference writes")
    return {key: NormStats.from_json(value, where=f"{file} [{key}]") for key, value in raw["norm_stats"].items()}


#: Top-level key of norm_stats.json saying what the stats were computed for (embodiment, horizon, dataset).
#: The reference reads only ``norm_stats`` (a pydantic model, extra keys ignored), so the file stays its format.
COMPUTED_FOR_KEY = "computed_for"


def save_norm_stats(stats: Mapping[str, NormStats], path: str | os.PathLike[str], *,
                    computed_for: Mapping[str, object] | None = None) -> Path:
    """Write ``stats`` in the reference format, atomically (a reader never sees a half-written file);
    ``computed_for`` (JSON values) is stored beside them under :data:`COMPUTED_FOR_KEY`."""
    file = norm_stats_path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    content: dict[str, object] = {"norm_stats": {key: value.to_json() for key, value in stats.items()}}
    if computed_for:
        content[COMPUTED_FOR_KEY] = dict(computed_for)
    text = json.dumps(content, indent=2)
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return file


def read_computed_for(path: str | os.PathLike[str]) -> dict[str, object] | None:
    """What a norm_stats.json says it was computed for (``None`` for reference files and unreadable ones)."""
    try:
        raw = json.loads(norm_stats_path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    value = raw.get(COMPUTED_FOR_KEY) if isinstance(raw, Mapping) else None
    return dict(value) if isinstance(value, Mapping) else None


# ------------------------------------------------------------------------------------ exact statistics

#: Quantiles stored in norm_stats.json.
QUANTILES = (0.01, 0.99)
_RADIX = 16  # bits per radix-select pass over float32 keys
_BINS = 1 << _RADIX


def _sortable_keys(values: np.ndarray) -> np.ndarray:
    """float32 -> uint32 keys whose unsigned order is the numeric order (negatives reversed)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    negative = (bits >> np.uint32(31)).astype(bool)
    return np.where(negative, ~bits, bits | np.uint32(0x80000000))


def _key_to_float(key: int) -> float:
    key = int(key) & 0xFFFFFFFF
    bits = key & 0x7FFFFFFF if key & 0x80000000 else (~key) & 0xFFFFFFFF
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])


def _numpy_linear_positions(n: int, q: float) -> tuple[int, int, float]:
    """numpy's default ("linear") quantile method: neighbouring order statistics and the weight between them."""
    virtual = n * q + (1.0 + q * (1.0 - 1.0 - 1.0)) - 1.0  # alpha = beta = 1, as numpy writes it
    lo = int(np.floor(virtual))
    lo = min(max(lo, 0), n - 1)
    hi = min(lo + 1, n - 1)
    return lo, hi, float(virtual - np.floor(virtual))


def _lerp(a: float, b: float, t: float) -> float:
    # numpy's formulation, which is exact at both ends.
    diff = b - a
    return b - diff * (1.0 - t) if t >= 0.5 else a + diff * t


class ExactStats:
    """Mean, std and **exact** quantiles of a stream of float32 vectors, in bounded memory.

    The values are fed twice (the same blocks in any order): :meth:`update` in the first pass (count,
    mean and variance merged in float64 by Chan's formula; a histogram of the top 16 bits of each value's
    sortable float32 key), :meth:`refine` in the second (for the few top-16-bit bins that hold a wanted order
    statistic, a histogram of the low 16 bits). Together they pin down each wanted order statistic exactly,
    whatever the distribution, with ``2 * 65536`` counters per dimension.

    Definition of "exact quantile": numpy's default ``np.quantile(x, q)`` (method ``"linear"``: the order
    statistics at ``floor(q * (n - 1))`` and the next one, linearly interpolated in float64) over every float32
    value of the dimension. ``std`` is the population standard deviation (``ddof=0``, as the reference).
    """

    def __init__(self, dim: int, quantiles: tuple[float, ...] = QUANTILES):
        self.dim = int(dim)
        self.quantiles = tuple(quantiles)
        self.count = 0
        self._mean = np.zeros(self.dim)
        self._m2 = np.zeros(self.dim)
        self._top = np.zeros(self.dim * _BINS, dtype=np.int64)
        self._targets: list[tuple[int, int]] | None = None  # (dim, top prefix) pairs refined in pass two
        self._low: dict[tuple[int, int], np.ndarray] = {}

    @staticmethod
    def _as_rows(values: np.ndarray, dim: int) -> np.ndarray:
        values = np.asarray(values, dtype=np.float32)
        if values.shape[-1] != dim:
            raise NormStatsError(f"values have {values.shape[-1]} dims, these stats {dim}")
        return values.reshape(-1, dim)

    def update(self, values: np.ndarray) -> None:
        """First pass: a block ``[..., dim]`` of values."""
        if self._targets is not None:
            raise RuntimeError("update() after refine() started")
        rows = self._as_rows(values, self.dim)
        n = rows.shape[0]
        if n == 0:
            return
        block = rows.astype(np.float64)
        mean = block.mean(axis=0)
        m2 = ((block - mean) ** 2).sum(axis=0)
        total = self.count + n
        delta = mean - self._mean
        self._mean = self._mean + delta * (n / total)
        self._m2 = self._m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total
        top = (_sortable_keys(rows) >> np.uint32(_RADIX)).astype(np.int64)
        top += np.arange(self.dim, dtype=np.int64) << _RADIX
        self._top += np.bincount(top.ravel(), minlength=self.dim * _BINS)

    def _ranks(self) -> list[int]:
        ranks: list[int] = []
        for q in self.quantiles:
            lo, hi, _ = _numpy_linear_positions(self.count, q)
            ranks += [lo, hi]
        return ranks

    def _locate(self, d: int, rank: int) -> tuple[int, int]:
        """(top prefix, rank inside that bin) of the order statistic ``rank`` of dim ``d``."""
        cumulative = np.cumsum(self._top[d * _BINS : (d + 1) * _BINS])
        prefix = int(np.searchsorted(cumulative, rank, side="right"))
        before = int(cumulative[prefix - 1]) if prefix else 0
        return prefix, rank - before

    def _start_refine(self) -> None:
        if self.count == 0:
            raise NormStatsError("no values to compute statistics over; the dataset is empty")
        targets = {(d, self._locate(d, r)[0]) for d in range(self.dim) for r in self._ranks()}
        self._targets = sorted(targets)
        self._low = {t: np.zeros(_BINS, dtype=np.int64) for t in self._targets}

    def refine(self, values: np.ndarray) -> None:
        """Second pass: the same values again, in blocks."""
        if self._targets is None:
            self._start_refine()
        rows = self._as_rows(values, self.dim)
        if rows.shape[0] == 0:
            return
        keys = _sortable_keys(rows)
        top = keys >> np.uint32(_RADIX)
        low = (keys & np.uint32(_BINS - 1)).astype(np.int64)
        assert self._targets is not None  # refine() set them before pass two
        for d, prefix in self._targets:
            hit = top[:, d] == prefix
            if hit.any():
                self._low[(d, prefix)] += np.bincount(low[hit, d], minlength=_BINS)

    def _order_statistic(self, d: int, rank: int) -> float:
        prefix, inside = self._locate(d, rank)
        cumulative = np.cumsum(self._low[(d, prefix)])
        if cumulative[-1] == 0:
            raise RuntimeError("refine() did not see the values update() saw")
        low = int(np.searchsorted(cumulative, inside, side="right"))
        return _key_to_float((prefix << _RADIX) | low)

    @property
    def mean(self) -> np.ndarray:
        return self._mean.copy()

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.maximum(self._m2 / max(self.count, 1), 0.0))

    def quantile_values(self) -> dict[float, np.ndarray]:
        if self._targets is None:
            self._start_refine()
        out = {}
        for q in self.quantiles:
            lo, hi, t = _numpy_linear_positions(self.count, q)
            out[q] = np.array([_lerp(self._order_statistic(d, lo), self._order_statistic(d, hi), t)
                               for d in range(self.dim)])
        return out

    def result(self) -> NormStats:
        """The statistics (float64 vectors) after both passes."""
        if self.count == 0:
            raise NormStatsError("no values to compute statistics over; the dataset is empty")
        q = self.quantile_values()
        return NormStats(mean=self.mean, std=self.std, q01=q[QUANTILES[0]], q99=q[QUANTILES[1]])
