"""Writing LeRobot datasets (format v3: parquet + AV1 video) with lerobot's own writer, safely.

A dataset is built in a hidden sibling directory and moved into place only when it is finalised, so a crash
or Ctrl-C never leaves a corrupt dataset at the destination: the episodes completed before an interruption are
finalised and kept, the episode in progress is dropped. Used by ``pi0 record``, ``pi0 convert dataset`` and
the test fixtures.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from pi0cli.errors import Pi0Error
from pi0cli.scheduling import keep_scheduling
from pi0cli.transforms import lookup, to_uint8_hwc

if TYPE_CHECKING:
    from pi0cli.embodiment import Embodiment


class DatasetWriteError(Pi0Error):
    """A dataset that cannot be written where or as asked."""


def embodiment_features(embodiment: Embodiment,
                        image_shapes: Mapping[str, tuple[int, int]] | None = None) -> dict[str, dict]:
    """LeRobot feature specs for an embodiment's dataset columns (cameras as video, state fields and actions
    as float32 vectors). ``image_shapes`` overrides a camera's native ``(height, width)``, by camera key."""
    features: dict[str, dict] = {}
    for cam in embodiment.cameras:
        column = embodiment.dataset_keys.get(cam.key)
        if column is None:
            continue
        height, width = (image_shapes or {}).get(cam.key, (cam.height, cam.width))
        features[column] = {"dtype": "video", "shape": (height, width, 3), "names": ["height", "width", "channels"]}
    for field in embodiment.state:
        features[embodiment.dataset_keys[field.key]] = {"dtype": "float32", "shape": (field.dim,), "names": None}
    features[embodiment.action_key] = {"dtype": "float32", "shape": (embodiment.action_dim,), "names": None}
    return features


def frame_from_observation(embodiment: Embodiment, obs: Mapping[str, Any], action: np.ndarray) -> dict[str, np.ndarray]:
    """One dataset row from a robot observation and the action taken (columns named by the key map)."""
    frame: dict[str, np.ndarray] = {}
    for cam in embodiment.cameras:
        column = embodiment.dataset_keys.get(cam.key)
        if column is not None:
            frame[column] = to_uint8_hwc(lookup(obs, cam.key))
    for field in embodiment.state:
        value = np.asarray(lookup(obs, field.key), dtype=np.float32)
        frame[embodiment.dataset_keys[field.key]] = value.reshape(field.dim)
    frame[embodiment.action_key] = np.asarray(action, dtype=np.float32).reshape(embodiment.action_dim)
    return frame


class DatasetWriter:
    """Episodes in, a finalised LeRobot dataset at ``root`` out (see the module docstring)."""

    def __init__(self, root: Path, *, fps: float, features: Mapping[str, dict], repo_id: str | None = None,
                 robot_type: str | None = None, use_videos: bool = True, overwrite: bool = False,
                 keep_on_interrupt: bool = True):
        from pi0cli.data.lerobot import quiet_lerobot_import

        quiet_lerobot_import()
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        self.root = Path(root).absolute()
        if self.root.exists():
            if not overwrite:
                raise DatasetWriteError(f"{self.root} already exists; choose another --out or pass --overwrite")
        self.overwrite = overwrite
        self.keep_on_interrupt = keep_on_interrupt
        self.staging = self.root.with_name(f".{self.root.name}.partial-{os.getpid()}")
        shutil.rmtree(self.staging, ignore_errors=True)
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.episodes = 0
        self._open_frames = 0
        self._dataset = LeRobotDataset.create(
            repo_id or f"local/{self.root.name}", fps=int(round(fps)), features=dict(features), root=self.staging,
            robot_type=robot_type, use_videos=use_videos,
        )

    def add_frame(self, frame: Mapping[str, Any], task: str) -> None:
        self._dataset.add_frame({**frame, "task": task})
        self._open_frames += 1

    def save_episode(self) -> int:
        """Close the current episode; returns its index."""
        if self._open_frames == 0:
            raise DatasetWriteError("an episode needs at least one frame")
        with keep_scheduling():  # SVT-AV1 makes the encoding thread real-time when it can (see the module)
            self._dataset.save_episode()
        self._open_frames = 0
        self.episodes += 1
        return self.episodes - 1

    def discard_episode(self) -> None:
        if self._open_frames:
            self._dataset.clear_episode_buffer()
            self._open_frames = 0

    def close(self) -> Path | None:
        """Finalise and publish the dataset; with no complete episode nothing is published (returns None)."""
        self.discard_episode()
        with keep_scheduling():
            self._dataset.finalize()
        if self.episodes == 0:
            shutil.rmtree(self.staging, ignore_errors=True)
            return None
        if self.root.exists() and self.overwrite:
            shutil.rmtree(self.root)
        os.replace(self.staging, self.root)
        return self.root

    def abort(self) -> None:
        """Drop everything written so far."""
        shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        if exc_type is None or (interrupted and self.keep_on_interrupt):
            self.close()  # an interrupted recording keeps its completed episodes
        else:
            self.abort()
