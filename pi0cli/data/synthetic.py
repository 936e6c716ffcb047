"""Small, deterministic LeRobot datasets for any embodiment, written by lerobot's own writer.

Used by tests and benchmarks. Images are stored as video (AV1 mp4, as lerobot writes them); their content is
a smooth gradient that moves with the frame (video codecs keep it well), state is a seeded random walk and
each action is the next state plus noise, so delta actions are small and chunks differ frame to frame.
The dataset is built in a hidden sibling directory and renamed into place when finalised
(:class:`pi0cli.data.writer.DatasetWriter`), so a reader never sees a half-written dataset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pi0cli.embodiment import Embodiment

DEFAULT_TASKS = ("pick up the cube", "fold_the towel", "open the drawer\nslowly")


def synthetic_frames(embodiment: Embodiment, length: int, rng: np.random.Generator,
                     image_size: tuple[int, int], cameras: Sequence[Any]) -> list[dict[str, np.ndarray]]:
    """One episode of dataset rows (column -> array) for ``embodiment``."""
    state_dim, action_dim = embodiment.state_dim, embodiment.action_dim
    steps = rng.normal(scale=0.05, size=(length + 1, max(state_dim, action_dim))).astype(np.float32)
    walk = np.cumsum(steps, axis=0) + rng.uniform(-0.5, 0.5, size=steps.shape[1]).astype(np.float32)
    height, width = image_size
    ys, xs = np.mgrid[0:height, 0:width]
    phase = rng.integers(0, 256, size=(len(cameras), 3))
    rows = []
    for t in range(length):
        row: dict[str, np.ndarray] = {}
        for c, cam in enumerate(cameras):
            r = (xs * 3 + 4 * t + phase[c, 0]) % 256
            g = (ys * 3 + 2 * t + phase[c, 1]) % 256
            b = np.full_like(xs, phase[c, 2])
            row[embodiment.dataset_keys[cam.key]] = np.stack([r, g, b], axis=-1).astype(np.uint8)
        state = walk[t, :state_dim]
        start = 0
        for field in embodiment.state:
            row[embodiment.dataset_keys[field.key]] = state[start : start + field.dim].astype(np.float32)
            start += field.dim
        noise = rng.normal(scale=0.01, size=action_dim).astype(np.float32)
        row[embodiment.action_key] = (walk[t + 1, :action_dim] + noise).astype(np.float32)
        rows.append(row)
    return rows


def write_synthetic_dataset(
    root: str | Path,
    embodiment: Embodiment,
    *,
    episodes: int = 3,
    frames: int | Sequence[int] = 12,
    image_size: tuple[int, int] = (32, 32),
    seed: int = 0,
    tasks: Sequence[str] = DEFAULT_TASKS,
    fps: float | None = None,
    optional_cameras: bool = True,
    repo_id: str | None = None,
    overwrite: bool = False,
    feature_overrides: Mapping[str, dict] | None = None,
) -> Path:
    """Write ``episodes`` episodes of synthetic data for ``embodiment`` to ``root``; returns ``root``.

    ``frames`` is the length of every episode, or one length per episode. Episode ``e`` gets task
    ``tasks[e % len(tasks)]``. Every camera with a dataset column is written (``optional_cameras=False``
    leaves out cameras that are not required). The content depends only on ``seed`` and the arguments.
    """
    from pi0cli.data.writer import DatasetWriter, embodiment_features

    lengths = [int(frames)] * episodes if isinstance(frames, int) else [int(n) for n in frames]
    if len(lengths) != episodes or any(n <= 0 for n in lengths):
        raise ValueError(f"frames must be a positive length or one per episode ({episodes}), got {frames!r}")
    cameras = [c for c in embodiment.cameras if c.key in embodiment.dataset_keys and (optional_cameras or c.required)]
    shapes = {c.key: image_size for c in cameras}
    features = embodiment_features(embodiment, shapes)
    dropped = {embodiment.dataset_keys[c.key] for c in embodiment.cameras
               if c.key in embodiment.dataset_keys and c not in cameras}
    features = {k: v for k, v in features.items() if k not in dropped}
    if feature_overrides:
        features.update(feature_overrides)
    rng = np.random.default_rng(seed)
    with DatasetWriter(Path(root), fps=fps or embodiment.control_hz, features=features, repo_id=repo_id,
                       robot_type=embodiment.name, overwrite=overwrite, keep_on_interrupt=False) as writer:
        for episode, length in enumerate(lengths):
            task = tasks[episode % len(tasks)]
            for row in synthetic_frames(embodiment, length, rng, image_size, cameras):
                writer.add_frame(row, task=task)
            writer.save_episode()
    return Path(root)
