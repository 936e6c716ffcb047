"""Opening LeRobot datasets (format v3.0: parquet + mp4) by local root or by repo id from the local cache.

Two ways in:

- :class:`LeRobotFrames`: frames as lerobot's ``LeRobotDataset`` gives them (videos decoded with PyAV, uint8),
  the action column as chunks of the model's horizon via delta timestamps: at an episode's end lerobot repeats
  the last frame and ``<action>_is_pad`` marks the repeats. Each item is a flat dict of numpy arrays, uint8 CHW
  images and ``prompt`` (the episode's task). Picklable: worker processes reopen the dataset lazily.
- :func:`read_numeric` reads numeric parquet columns straight with pyarrow (no lerobot import, no video),
  which is what ``pi0 norm-stats`` uses.

:class:`LeRobotFrames` reads a local v3.0 dataset through :class:`pi0cli.data.direct.DirectFrames` when it can:
numeric columns loaded once into numpy, and video containers kept open per thread and seeked to the frame,
instead of lerobot's per-item HF ``datasets`` row, tensor copies and fresh ``av.open`` of every camera's mp4
(most of the cost of an item). The items are the same, key for key and bit for bit (tests/data compares every
item of lerobot-written datasets). Whatever that reader does not reproduce exactly (a dataset that is not
local yet, another format version, images stored as images, depth or language columns, another video backend,
metadata that does not agree with the rows...) goes through ``LeRobotDataset`` as before: it is the reference,
the direct reader only a faster way to the same items. ``backend`` says which one is in use and
``fallback_reason`` why not the direct one.

``source`` is a dataset directory (anything holding ``meta/info.json``), or a repo id looked up under
``$HF_LEROBOT_HOME/<repo_id>`` (default ``$HF_HOME/lerobot``, ``~/.cache/huggingface/lerobot``). With
``PI0_OFFLINE`` or ``HF_HUB_OFFLINE`` set and nothing in the cache, one :class:`DatasetError` names every place
looked at;
online, lerobot downloads the dataset into its cache.

lerobot, torch, PyAV and pyarrow are imported inside functions only.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pi0cli.data.direct import INDEX_COLUMNS  # columns lerobot adds to every dataset (numpy-only import)
from pi0cli.downloads import hf_home, offline
from pi0cli.errors import Pi0Error

if TYPE_CHECKING:
    from pi0cli.data.direct import DirectFrames
    from pi0cli.embodiment import Embodiment

log = logging.getLogger(__name__)



class DatasetError(Pi0Error):
    """A dataset that cannot be found, read, or does not fit the embodiment."""


def lerobot_home(environ: Mapping[str, str] | None = None) -> Path:
    """Where lerobot keeps datasets by repo id (``$HF_LEROBOT_HOME``, else ``$HF_HOME/lerobot``)."""
    env = os.environ if environ is None else environ
    if env.get("HF_LEROBOT_HOME"):
        return Path(env["HF_LEROBOT_HOME"]).expanduser()
    return hf_home(env) / "lerobot"


def resolve_dataset(source: str | os.PathLike[str]) -> tuple[str, Path]:
    """``(repo_id, root)`` of a dataset given by directory or repo id (see the module docstring).

    An online lookup that is not in the cache returns the cache path it will be downloaded to.
    """
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "meta" / "info.json").is_file():
            raise DatasetError(f"{path} is not a LeRobot dataset (no meta/info.json); pass a dataset root or a repo id")
        return f"local/{path.absolute().name}", path.absolute()
    is_repo_id = not text.startswith((".", "/", "~")) and text.count("/") == 1
    cached = lerobot_home() / text
    if is_repo_id and (cached / "meta" / "info.json").is_file():
        return text, cached
    # A path is never looked up in the cache (joining an absolute path to it would name the path twice).
    looked = f"{path.absolute()} (no such directory)" + (f" and the local cache {cached}" if is_repo_id else "")
    if offline() or not is_repo_id:
        raise DatasetError(
            f"dataset {text!r} not found: looked in {looked}"
            + ("; offline (PI0_OFFLINE or HF_HUB_OFFLINE is set)" if offline() else "")
            + ". Pass a local dataset root, or set HF_LEROBOT_HOME to the cache holding it"
        )
    return text, cached


def read_info(root: Path) -> dict[str, Any]:
    try:
        info = json.loads((Path(root) / "meta" / "info.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read {root}/meta/info.json ({exc}); is this a LeRobot dataset?") from None
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise DatasetError(
            f"{root} is a LeRobot {version or 'unknown-version'} dataset; pi0 reads format v3.0 "
            "(convert it with lerobot's convert_dataset_v21_to_v30)"
        )
    return info


def check_dataset_fits(embodiment: Embodiment, info: Mapping[str, Any], where: str | os.PathLike[str], *,
                       cameras: bool = True) -> None:
    """Fail early, naming the columns, when a dataset was recorded for another robot (or another key map):
    every column the embodiment reads (required cameras too, unless ``cameras`` is False) must exist, and
    vector columns must have the embodiment's dims."""
    features = info.get("features", {})
    keys = embodiment.dataset_keys
    needed: dict[str, int | None] = {}
    if cameras:
        needed.update({keys[c.key]: None for c in embodiment.cameras if c.required})
    needed.update({keys[f.key]: f.dim for f in embodiment.state})
    needed[embodiment.action_key] = embodiment.action_dim
    missing = [column for column in needed if column not in features]
    if missing:
        have = ", ".join(k for k in features if k not in INDEX_COLUMNS) or "none"
        raise DatasetError(
            f"dataset {where} has no column {', '.join(repr(c) for c in missing)} that embodiment "
            f"{embodiment.name!r} reads; it has {have}. Pick the embodiment the dataset was recorded with, or fix "
            "the embodiment's dataset_keys"
        )
    for column, dim in needed.items():
        shape = tuple(features[column].get("shape") or ())
        if dim is not None and shape and shape[-1] != dim:
            raise DatasetError(
                f"column {column!r} of dataset {where} has {shape[-1]} dims but embodiment {embodiment.name!r} "
                f"expects {dim}; the dataset was recorded for another robot or key map"
            )


def data_files(root: Path) -> list[Path]:
    files = sorted((Path(root) / "data").glob("chunk-*/file-*.parquet"))
    return files


def read_tasks(root: Path) -> list[str]:
    """Task strings by task index."""
    import pyarrow.parquet as pq

    table = pq.read_table(Path(root) / "meta" / "tasks.parquet")
    names = table.column("__index_level_0__").to_pylist() if "__index_level_0__" in table.column_names else \
        table.column("task").to_pylist()
    indices = table.column("task_index").to_pylist()
    tasks = [""] * (max(indices) + 1 if indices else 0)
    for name, index in zip(names, indices, strict=True):
        tasks[int(index)] = str(name)
    return tasks


def _column_to_numpy(column: Any, name: str, file: Path) -> np.ndarray:
    import pyarrow as pa

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    kind = column.type
    if pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind):
        if column.null_count:
            raise DatasetError(f"column {name!r} in {file} has missing rows; the dataset is incomplete")
        if pa.types.is_fixed_size_list(kind):
            width = kind.list_size
        else:
            lengths = np.diff(np.asarray(column.offsets))
            if len(lengths) and (lengths != lengths[0]).any():
                raise DatasetError(f"column {name!r} in {file} has rows of different lengths "
                                   f"{sorted(set(lengths))[:5]}")
            width = int(lengths[0]) if len(lengths) else 0
        values = column.flatten().to_numpy(zero_copy_only=False)
        return values.reshape(len(column), width)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        return column.to_numpy(zero_copy_only=False)
    raise DatasetError(f"column {name!r} in {file} is {kind}, not numeric; name a numeric column")


def read_numeric(root: Path, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Numeric parquet columns of the whole dataset, rows in ``index`` order, plus ``episode_index``,
    ``frame_index``, ``index`` and ``task_index``. Vectors come back ``[N, dim]``. No video is touched."""
    import pyarrow.parquet as pq

    root = Path(root)
    files = data_files(root)
    if not files:
        raise DatasetError(f"{root} has no data files (data/chunk-*/file-*.parquet); the dataset is empty")
    wanted = list(dict.fromkeys([*columns, "episode_index", "frame_index", "index", "task_index"]))
    parts: dict[str, list[np.ndarray]] = {c: [] for c in wanted}
    for file in files:
        schema = pq.read_schema(file)
        missing = [c for c in wanted if c not in schema.names]
        if missing:
            numeric = [n for n in schema.names if n not in INDEX_COLUMNS]
            raise DatasetError(
                f"column {missing[0]!r} is missing from {file}; the dataset has {', '.join(numeric) or 'none'}. "
                "Fix the embodiment's dataset_keys or the dataset"
            )
        table = pq.read_table(file, columns=wanted)
        for c in wanted:
            parts[c].append(_column_to_numpy(table.column(c), c, file))
    out = {c: np.concatenate(v) if len(v) > 1 else v[0] for c, v in parts.items()}
    order = np.argsort(out["index"], kind="stable")
    if not (order == np.arange(len(order))).all():
        out = {c: v[order] for c, v in out.items()}
    return out


def hub_error(source: str, cache: Path, exc: BaseException) -> DatasetError:
    """One line for a repo id that is neither in the local cache nor fetchable from the hub, with the ways out."""
    why = " ".join(str(exc).split())[:200]
    if type(exc).__name__ in ("RepositoryNotFoundError", "RevisionNotFoundError", "GatedRepoError"):
        why = f"the hub has no dataset {source!r} this machine may read ({type(exc).__name__})"
    else:
        why = f"the Hugging Face hub could not be reached or refused it ({type(exc).__name__}: {why})"
    return DatasetError(
        f"dataset {source!r} is not in the local cache ({cache}) and could not be downloaded: {why}. Record one "
        "with `pi0 record`, pass --dataset PATH to a local LeRobot dataset, or go online and check the repo id"
    )


def quiet_lerobot_import() -> None:
    """Call before importing lerobot: without system FFmpeg it logs a long torchcodec traceback at import,
    irrelevant here because pi0 decodes and encodes video through PyAV."""
    logging.getLogger("lerobot.utils.import_utils").setLevel(logging.ERROR)


def _to_numpy(value: Any) -> Any:
    if hasattr(value, "numpy") and hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return value


class LeRobotFrames:
    """Frames of a LeRobot dataset as flat dicts of numpy arrays (see the module docstring).

    ``action_horizon`` > 0 turns ``action_key`` into ``[H, dim]`` chunks with ``<action_key>_is_pad``;
    ``None`` gives single actions. ``episodes`` restricts to some episodes. ``direct=False`` always reads
    through ``LeRobotDataset`` (the reference the direct reader is tested against).
    """

    def __init__(self, source: str | os.PathLike[str], *, action_key: str = "actions",
                 action_horizon: int | None = None, episodes: Sequence[int] | None = None, video_backend: str = "pyav",
                 direct: bool = True):
        self.source = str(source)
        self.repo_id, self.root = resolve_dataset(source)
        self.action_key = action_key
        self.action_horizon = action_horizon
        self.episodes = None if episodes is None else [int(e) for e in episodes]
        self.video_backend = video_backend
        self.direct = direct
        self._dataset = None
        self._direct: DirectFrames | None = None
        self._direct_checked = False
        #: Why items come from ``LeRobotDataset`` rather than the direct reader (None: not decided yet, or direct).
        self.fallback_reason: str | None = None
        self._lock = threading.Lock()
        self.info: dict[str, Any] | None = None  # read on first use when the dataset is still to download
        if self.root.is_dir():
            self.info = read_info(self.root)
            if action_key not in self.info.get("features", {}):
                raise DatasetError(
                    f"dataset {self.root} has no action column {action_key!r}; it has "
                    f"{', '.join(k for k in self.info['features'] if k not in INDEX_COLUMNS)}"
                )

    @property
    def dataset(self):
        """The underlying ``LeRobotDataset``, opened on first use (once, even with several loader threads)."""
        if self._dataset is None:
            with self._lock:
                if self._dataset is None:
                    self._dataset = self._open()
        return self._dataset

    def _open(self):
        quiet_lerobot_import()
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        local = self.root.is_dir()
        try:
            fps = self.info["fps"] if self.info is not None else None
            delta = None
            if self.action_horizon:
                if fps is None:
                    from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata

                    fps = LeRobotDatasetMetadata(self.repo_id).fps
                delta = {self.action_key: [t / fps for t in range(self.action_horizon)]}
            dataset = LeRobotDataset(
                self.repo_id, root=self.root if local else None, episodes=self.episodes,
                delta_timestamps=delta, video_backend=self.video_backend, return_uint8=True,
            )
        except Pi0Error:
            raise
        except Exception as exc:
            if not local:
                raise hub_error(self.source, self.root, exc) from None
            raise DatasetError(
                f"cannot open dataset {self.source!r} at {self.root}: {type(exc).__name__}: {exc}") from None
        if self.info is None:
            self.root = Path(dataset.root)
            self.info = read_info(self.root)
        return dataset

    def _direct_reader(self) -> DirectFrames | None:
        """The direct reader when this dataset can use it (decided once, on first use; see the module)."""
        if not self._direct_checked:
            with self._lock:
                if not self._direct_checked:
                    self._direct, self.fallback_reason = self._open_direct()
                    self._direct_checked = True
                    if self.fallback_reason is not None:
                        log.debug("reading %s through LeRobotDataset: %s", self.source, self.fallback_reason)
        return self._direct

    def _open_direct(self) -> tuple[DirectFrames | None, str | None]:
        from pi0cli.data.direct import DirectFrames, Unsupported

        if not self.direct:
            return None, "direct reading turned off"
        if self.video_backend != "pyav":
            return None, f"video backend {self.video_backend!r} (the direct reader decodes as lerobot's pyav does)"
        if self.info is None or not self.root.is_dir():
            return None, "the dataset is not on this machine (lerobot downloads it)"
        try:
            reader = DirectFrames(self.root, self.info, action_key=self.action_key,
                                  action_horizon=self.action_horizon, episodes=self.episodes)
        except Unsupported as exc:
            return None, f"unsupported by the direct reader: {exc}"
        except Exception as exc:  # lerobot reports what is wrong with the dataset, if anything
            return None, f"the direct reader failed to open it: {type(exc).__name__}: {exc}"
        return reader, None

    @property
    def backend(self) -> str:
        """``"direct"`` or ``"lerobot"``: which reader items come from (decides it if not yet decided)."""
        return "direct" if self._direct_reader() is not None else "lerobot"

    def __len__(self) -> int:
        if self._dataset is None and self.episodes is None and self.info is not None:
            return int(self.info["total_frames"])
        direct = self._direct_reader()
        if direct is not None:
            return len(direct)
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        direct = self._direct_reader()
        if direct is not None:
            return direct[int(index)]
        item = self.dataset[int(index)]
        out: dict[str, Any] = {}
        for key, value in item.items():
            if key == "task":
                out["prompt"] = str(value)
            else:
                out[key] = _to_numpy(value)
        return out

    def fetch(self) -> LeRobotFrames:
        """Make sure the dataset is on this machine (a repo id not in the cache is downloaded now, or fails with
        one :class:`DatasetError` saying what to do); ``info`` is set afterwards."""
        if self.info is None:
            _ = self.dataset  # opening it downloads it and reads its info
        return self

    @property
    def tasks(self) -> list[str]:
        return read_tasks(self.fetch().root)  # the task table is only there once the dataset is

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_dataset"] = None
        state["_direct"] = None  # reopened (and decided again) in the worker: arrays and open videos stay here
        state["_direct_checked"] = False
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
