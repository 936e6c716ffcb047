"""Raw ALOHA recordings (one ``episode_*.hdf5`` per episode) into a LeRobot dataset for the ``aloha`` robot.

Each file holds ``/observations/qpos`` ``[T, 14]``, ``/observations/qvel`` ``[T, 14]``, optionally
``/observations/effort`` ``[T, 14]``, ``/observations/images/<cam>`` (``[T, H, W, 3]`` uint8, or JPEG bytes
padded to a fixed length per frame when the file's ``compress`` attribute is set) and ``/action`` ``[T, 14]``.
Every file is validated before anything is written; frames are streamed one at a time (bounded memory).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pi0cli.convert.datasets import ConverterOption, DatasetConverter, Progress, write_episodes
from pi0cli.errors import ConversionError

DIM = 14
CAMERAS = ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")


@dataclass(frozen=True)
class EpisodeInfo:
    path: Path
    length: int
    cameras: tuple[str, ...]
    image_shape: tuple[int, int]
    compressed: bool
    has_effort: bool


def find_episodes(src: Path) -> list[Path]:
    files = sorted(Path(src).glob("*.hdf5")) + sorted(Path(src).glob("*.h5"))
    if not files:
        raise ConversionError(f"no .hdf5 episode files in {src}; point SRC_DIR at the folder of episode_*.hdf5 files")
    return files


def inspect_episode(path: Path) -> EpisodeInfo:
    """Check one file's layout; raise :class:`ConversionError` naming the file and key on the first problem."""
    import h5py

    def fail(problem: str) -> ConversionError:
        return ConversionError(f"{path.name}: {problem}")

    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise fail(f"not a readable HDF5 file ({exc})") from None
    with handle as f:
        for key in ("/observations/qpos", "/action", "/observations/images"):
            if key not in f:
                raise fail(f"missing {key!r}")
        qpos, action = f["/observations/qpos"], f["/action"]
        length = qpos.shape[0]
        for key in ("/observations/qpos", "/observations/qvel", "/observations/effort", "/action"):
            if key in f:
                shape = f[key].shape
                if len(shape) != 2 or shape[1] != DIM:
                    raise fail(f"{key!r} has shape {shape}; expected [T, {DIM}]")
                if shape[0] != length:
                    raise fail(f"{key!r} has {shape[0]} frames but /observations/qpos has {length}")
        if length == 0:
            raise fail("the episode has no frames")
        if not np.isfinite(qpos[()]).all() or not np.isfinite(action[()]).all():
            raise fail("qpos or action holds NaN or infinity")
        images = f["/observations/images"]
        cameras = tuple(c for c in CAMERAS if c in images)
        if "cam_high" not in cameras:
            raise fail("missing '/observations/images/cam_high' (the base camera the aloha robot needs)")
        unknown = sorted(set(images) - set(CAMERAS))
        if unknown:
            raise fail(f"unknown camera(s) {unknown}; ALOHA cameras are {', '.join(CAMERAS)}")
        compressed = bool(f.attrs.get("compress", False))
        shapes = set()
        for cam in cameras:
            data = images[cam]
            if data.shape[0] != length:
                raise fail(f"'/observations/images/{cam}' has {data.shape[0]} frames but qpos has {length}")
            if compressed:
                shapes.add(_decode(data[0], path, cam).shape[:2])
            elif len(data.shape) != 4 or data.shape[-1] != 3 or data.dtype != np.uint8:
                raise fail(f"'/observations/images/{cam}' is {data.dtype} {data.shape}; expected uint8 [T, H, W, 3] "
                           "(or JPEG bytes with the file attribute compress=True)")
            else:
                shapes.add(tuple(data.shape[1:3]))
        if len(shapes) != 1:
            raise fail(f"cameras have different image sizes {sorted(shapes)}")
        return EpisodeInfo(path, length, cameras, shapes.pop(), compressed, "/observations/effort" in f)


def _decode(buffer: np.ndarray, path: Path, cam: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(np.asarray(buffer, dtype=np.uint8).tobytes())) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as exc:
        raise ConversionError(
            f"{path.name}: '/observations/images/{cam}' holds a frame that is not a JPEG ({exc})") from None


def iter_frames(info: EpisodeInfo) -> Iterator[dict[str, np.ndarray]]:
    """The episode's frames as dataset rows (``observation.images.<cam>``, ``observation.state``, ...)."""
    import h5py

    with h5py.File(info.path, "r") as f:
        images = f["/observations/images"]
        for t in range(info.length):
            frame = {
                "observation.state": np.asarray(f["/observations/qpos"][t], np.float32),
                "action": np.asarray(f["/action"][t], np.float32),
            }
            if "/observations/qvel" in f:
                frame["observation.velocity"] = np.asarray(f["/observations/qvel"][t], np.float32)
            if info.has_effort:
                frame["observation.effort"] = np.asarray(f["/observations/effort"][t], np.float32)
            for cam in info.cameras:
                raw = images[cam][t]
                image = _decode(raw, info.path, cam) if info.compressed else np.asarray(raw)
                frame[f"observation.images.{cam}"] = image
            yield frame


def convert(src: Path, out: Path, *, fps: float = 50.0, task: str | None = None, overwrite: bool = False,
            progress: Progress | None = None) -> Path:
    """Convert every episode in ``src``; nothing is written unless every file validates. ``task`` (the prompt
    of every episode) defaults to the folder's name with spaces for underscores (``fold_towel``: "fold towel")."""
    if task is None:
        task = Path(src).absolute().name.replace("_", " ")
    infos = [inspect_episode(path) for path in find_episodes(Path(src))]
    cameras = sorted({c for info in infos for c in info.cameras}, key=CAMERAS.index)
    missing = [(info.path.name, c) for info in infos for c in cameras if c not in info.cameras]
    if missing:
        name, cam = missing[0]
        raise ConversionError(
            f"{name}: missing camera {cam!r} that other episodes have; every episode needs the same cameras")
    height, width = infos[0].image_shape
    if any(info.image_shape != (height, width) for info in infos):
        bad = next(info for info in infos if info.image_shape != (height, width))
        raise ConversionError(f"{bad.path.name}: images are {bad.image_shape}, other episodes {height, width}")
    features: dict[str, dict[str, Any]] = {
        f"observation.images.{c}": {"dtype": "video", "shape": (height, width, 3),
                                    "names": ["height", "width", "channels"]} for c in cameras}
    for key in ("observation.state", "observation.velocity", "action"):
        features[key] = {"dtype": "float32", "shape": (DIM,), "names": None}
    if any(info.has_effort for info in infos):
        if not all(info.has_effort for info in infos):
            raise ConversionError("some episodes have /observations/effort and some do not")
        features["observation.effort"] = {"dtype": "float32", "shape": (DIM,), "names": None}
    zero_velocity = {"observation.velocity": np.zeros(DIM, np.float32)}  # episodes recorded without it
    episodes = ((task, (zero_velocity | frame for frame in iter_frames(info))) for info in infos)
    return write_episodes(out, episodes, total=sum(info.length for info in infos), fps=fps, features=features,
                          robot_type="aloha", overwrite=overwrite, progress=progress)


CONVERTER = DatasetConverter(
    name="aloha-hdf5",
    embodiment="aloha",
    summary="Raw ALOHA episodes into a LeRobot dataset for the [bold]aloha[/bold] robot.",
    source_help="Folder of episode_*.hdf5 files (ALOHA recorder layout).",
    convert=convert,
    examples=("pi0 convert dataset aloha-hdf5 raw_episodes/ --out my_dataset",),
    options=(
        ConverterOption("fps", float, 50.0, "Recording rate.", minimum=1.0),
        ConverterOption("task", str, None, "Task prompt of every episode (default: the folder name)."),
    ),
)
