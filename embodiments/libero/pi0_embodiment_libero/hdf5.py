"""LIBERO demonstration files (robomimic layout) into a LeRobot dataset for the ``libero`` robot.

Each file holds ``data/demo_<i>/obs/{agentview_rgb, eye_in_hand_rgb, ee_pos, ee_ori, gripper_states}`` and
``data/demo_<i>/actions``; the task comes from ``data.attrs["problem_info"]`` (JSON with
``language_instruction``) or else from the file name (``KITCHEN_SCENE3_turn_on_the_stove_demo.hdf5`` ->
"turn on the stove"). Images are rotated by 180 degrees (LIBERO renders upside down) and padded to 256x256
as the reference LIBERO datasets; state is ``[ee_pos 3, ee_ori 3, gripper 2]``, actions 7.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pi0cli.convert.datasets import ConverterOption, DatasetConverter, Progress, write_episodes
from pi0cli.errors import ConversionError
from pi0cli.transforms import resize_with_pad

IMAGE_SIZE = 256
STATE_PARTS = (("ee_pos", 3), ("ee_ori", 3), ("gripper_states", 2))
ACTION_DIM = 7


@dataclass(frozen=True)
class Demo:
    path: Path
    name: str
    length: int
    task: str


def task_from(path: Path, attrs: dict) -> str:
    info = attrs.get("problem_info")
    if info is not None:
        try:
            text = json.loads(info if isinstance(info, str) else info.decode()).get("language_instruction")
        except (ValueError, AttributeError):
            text = None
        if text:
            return " ".join(str(text).split())
    stem = re.sub(r"_demo$", "", path.stem)
    stem = re.sub(r"^([A-Z0-9]+_)*SCENE\d+_", "", stem)
    return stem.replace("_", " ").strip()


def inspect_file(path: Path) -> list[Demo]:
    """Validate one file; raise :class:`ConversionError` naming the file, demo and key on the first problem."""
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise ConversionError(f"{path.name}: not a readable HDF5 file ({exc})") from None
    with handle as f:
        if "data" not in f:
            raise ConversionError(f"{path.name}: missing group 'data' (expected data/demo_<i>/...)")
        task = task_from(path, dict(f["data"].attrs))
        demos = []
        names = sorted((k for k in f["data"] if k.startswith("demo_")), key=lambda k: int(k.split("_")[1]))
        if not names:
            raise ConversionError(f"{path.name}: no data/demo_<i> groups")
        for name in names:
            group = f["data"][name]
            where = f"{path.name} data/{name}"
            if "actions" not in group:
                raise ConversionError(f"{where}: missing 'actions'")
            actions = group["actions"]
            length = actions.shape[0]
            if actions.ndim != 2 or actions.shape[1] != ACTION_DIM:
                raise ConversionError(f"{where}: 'actions' has shape {actions.shape}; expected [T, {ACTION_DIM}]")
            for key, dim in STATE_PARTS:
                full = f"obs/{key}"
                if full not in group:
                    raise ConversionError(f"{where}: missing '{full}'")
                if group[full].shape != (length, dim):
                    raise ConversionError(
                        f"{where}: '{full}' has shape {group[full].shape}; expected ({length}, {dim})")
            for key in ("agentview_rgb", "eye_in_hand_rgb"):
                full = f"obs/{key}"
                if full not in group:
                    raise ConversionError(f"{where}: missing '{full}'")
                shape = group[full].shape
                if len(shape) != 4 or shape[0] != length or shape[-1] != 3:
                    raise ConversionError(f"{where}: '{full}' has shape {shape}; expected ({length}, H, W, 3)")
            if not np.isfinite(actions[()]).all():
                raise ConversionError(f"{where}: 'actions' holds NaN or infinity")
            demos.append(Demo(path, name, length, task))
        return demos


def iter_frames(demo: Demo) -> Iterator[dict[str, np.ndarray]]:
    import h5py

    def image(raw: np.ndarray) -> np.ndarray:
        return resize_with_pad(np.ascontiguousarray(np.asarray(raw, np.uint8)[::-1, ::-1]), IMAGE_SIZE, IMAGE_SIZE)

    with h5py.File(demo.path, "r") as f:
        group = f["data"][demo.name]
        for t in range(demo.length):
            state = np.concatenate([np.asarray(group[f"obs/{key}"][t], np.float32) for key, _ in STATE_PARTS])
            yield {
                "image": image(group["obs/agentview_rgb"][t]),
                "wrist_image": image(group["obs/eye_in_hand_rgb"][t]),
                "state": state,
                "actions": np.asarray(group["actions"][t], np.float32),
            }


def convert(src: Path, out: Path, *, fps: float = 10.0, overwrite: bool = False,
            progress: Progress | None = None) -> Path:
    """Convert one file or every ``*.hdf5`` in a directory; nothing is written unless all validate."""
    src = Path(src)
    files = [src] if src.is_file() else sorted(src.glob("*.hdf5"))
    if not files:
        raise ConversionError(f"no .hdf5 files at {src}")
    demos = [demo for path in files for demo in inspect_file(path)]
    video = {"dtype": "video", "shape": (IMAGE_SIZE, IMAGE_SIZE, 3), "names": ["height", "width", "channels"]}
    features: dict[str, dict[str, Any]] = {
        "image": video,
        "wrist_image": video,
        "state": {"dtype": "float32", "shape": (8,), "names": None},
        "actions": {"dtype": "float32", "shape": (ACTION_DIM,), "names": None},
    }
    return write_episodes(out, ((demo.task, iter_frames(demo)) for demo in demos),
                          total=sum(d.length for d in demos), fps=fps, features=features, robot_type="panda",
                          overwrite=overwrite, progress=progress)


CONVERTER = DatasetConverter(
    name="libero-hdf5",
    embodiment="libero",
    summary="LIBERO demonstrations into a LeRobot dataset for the [bold]libero[/bold] robot.",
    source_help="A LIBERO demonstration .hdf5 file or a folder of them.",
    convert=convert,
    options=(ConverterOption("fps", float, 10.0, "Recording rate.", minimum=1.0),),
    examples=("pi0 convert dataset libero-hdf5 libero_raw/ --out libero_dataset",),
)
