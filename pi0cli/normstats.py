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

import numpy as np

from pi0cli.errors import NormStatsError

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
        shapes = {name: getattr(self, name).shape for name in ("mean", "std", "q01", "q99") if getattr(self, name) is not None}
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
        values = {}
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
    try:
        raw = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NormStatsError(f"{file} is not valid JSON ({exc}); recompute it with `pi0 norm-stats`") from None
    if not isinstance(raw, Mapping) or not isinstance(raw.get("norm_stats"), Mapping):
        raise NormStatsError(f"{file}: expected a top-level 'norm_stats' object as the reference writes")
    return {key: NormStats.from_json(value, where=f"{file} [{key}]") for key, value in raw["norm_stats"].items()}


def save_norm_stats(stats: Mapping[str, NormStats], path: str | os.PathLike[str]) -> Path:
    """Write ``stats`` in the reference format, atomically (a reader never sees a half-written file)."""
    file = norm_stats_path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"norm_stats": {key: value.to_json() for key, value in stats.items()}}, indent=2)
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
