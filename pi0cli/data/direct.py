"""A direct reader of local LeRobot v3.0 datasets (parquet + mp4) that gives the items ``LeRobotDataset`` gives.

:class:`DirectFrames` is the fast path of :class:`pi0cli.data.lerobot.LeRobotFrames`. What lerobot does per item
(a parquet row through HF ``datasets``, copies, torch tensors, and a fresh ``av.open`` of every camera's mp4)
costs more than the decoding itself; here

- the numeric columns are read once with pyarrow into numpy arrays, converted to the dtypes lerobot's items
  have (a float column comes back float32, an integer column int64, as ``torch.tensor`` of a Python number
  makes them; a shape ``(1,)`` column is a scalar per row, a vector column ``[dim]``);
- the action chunk of horizon ``H`` is rows ``index + 0..H-1`` clamped to the episode, with
  ``<action>_is_pad`` marking the clamped ones (lerobot's delta-timestamp semantics);
- every thread keeps its own PyAV containers open, one per mp4 (a bounded LRU, one decoder thread each), and
  per item seeks to the keyframe at or before ``t`` and decodes forward until a frame at or past ``t``, where
  ``t`` is the frame's timestamp plus its episode's ``from_timestamp`` in the file. Of the frames decoded it
  keeps the one lerobot's PyAV decoder picks: the nearest to ``t`` in float32 (the first of equals), within
  lerobot's 1e-4 s tolerance, converted with the same ``to_ndarray("rgb24")``. lerobot seeks one tick
  earlier, which on a keyframe lands a keyframe earlier and decodes those frames too; the reader takes the
  shorter way only when the extra frames are provably farther from ``t`` (see ``DirectFrames._nearest``) and
  otherwise seeks exactly as lerobot does. (A frame decodes to the same pixels from either keyframe: mp4 sync
  samples are random-access points, which lerobot's own seek relies on too.)

Items have lerobot's keys in lerobot's order (cameras first, then the parquet columns, then
``<action>_is_pad``, then ``prompt``, the task string at position ``task_index`` of ``meta/tasks.parquet``), and
``episodes`` selects rows the way lerobot's filter does: the selected episodes' rows in file order.

Anything this reader does not reproduce exactly raises :class:`Unsupported` at construction and the caller
falls back to lerobot: another format version, images stored as images, depth or language columns,
non-numeric or multi-dimensional columns, columns whose stored type differs from the declared one, parquet
rows whose ``index`` is not their position, episode metadata that does not agree with the rows, missing files,
a non-float32 torch default dtype. The tests compare every item with lerobot's.

Not pickled (``__getstate__`` refuses): :class:`pi0cli.data.lerobot.LeRobotFrames` leaves it out of its pickled
state and opens a new one in each worker process; within a process, threads share the arrays and each has its own
open videos.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pi0cli.errors import Pi0Error

#: Columns every LeRobot dataset has (lerobot's item needs them all; ``pi0cli.data.lerobot`` uses this one).
INDEX_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
#: lerobot's default timestamp tolerance (seconds) between a queried time and the decoded frame's.
TOLERANCE_S = 1e-4
#: Open video containers kept per thread (least recently used closed first).
MAX_OPEN_VIDEOS = 64
#: Decoder threads per open video. The loader already decodes in several threads or processes, and for the
#: small frames of robot datasets one decoder thread is as fast or faster (2x at 96 px) than FFmpeg's
#: one-per-core, which would also start cores x open videos x loader threads threads. The decoded pixels do not
#: depend on it.
DECODER_THREADS = 1
#: Seek to the keyframe at or before the target's tick rather than lerobot's one tick earlier, where that
#: provably picks the same frame (see ``DirectFrames._nearest``): for a frame on a keyframe it decodes one frame,
#: not three (lerobot writes a keyframe every 2 frames).
SHORT_SEEK = True


class Unsupported(Exception):
    """The dataset has something the direct reader does not reproduce exactly; use lerobot instead."""


class FrameDecodeError(Pi0Error):
    """No decodable frame within the tolerance of the queried timestamp (where lerobot raises its
    ``FrameTimestampError``)."""


def _numpy_dtype(dtype: str) -> np.dtype:
    """The dtype lerobot's item has for a column declared ``dtype``: ``torch.tensor`` of a Python number."""
    if dtype == "bool":
        return np.dtype(np.bool_)
    if dtype in ("float16", "float32", "float64"):
        return np.dtype(np.float32)
    if dtype in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32"):
        return np.dtype(np.int64)
    raise Unsupported(f"a column of dtype {dtype!r}")


def _read_column(column: Any, name: str, shape: tuple[int, ...], declared: str) -> np.ndarray:
    """One parquet column as numpy in lerobot's item dtype: ``[rows]`` for shape ``(1,)``, ``[rows, n]`` for
    ``(n,)``. The stored type must be the declared one (lerobot would cast otherwise)."""
    import pyarrow as pa

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    want = pa.type_for_alias(declared)
    kind = column.type
    if column.null_count:
        raise Unsupported(f"column {name!r} has missing values")
    if shape == (1,):
        if kind != want:
            raise Unsupported(f"column {name!r} is stored as {kind}, declared {declared}")
        values = column.to_numpy(zero_copy_only=False)
        return values.astype(_numpy_dtype(declared))
    if len(shape) != 1:
        raise Unsupported(f"column {name!r} has shape {shape}")
    width = shape[0]
    if pa.types.is_fixed_size_list(kind):
        if kind.list_size != width:
            raise Unsupported(f"column {name!r} holds {kind.list_size} values a row, declared {width}")
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
        lengths = np.diff(np.asarray(column.offsets))
        if (lengths != width).any():
            raise Unsupported(f"column {name!r} has rows of other lengths than {width}")
    else:
        raise Unsupported(f"column {name!r} is stored as {kind}, declared a vector")
    if kind.value_type != want:
        raise Unsupported(f"column {name!r} holds {kind.value_type}, declared {declared}")
    flat = column.flatten()
    if flat.null_count:
        raise Unsupported(f"column {name!r} has missing values")
    values = flat.to_numpy(zero_copy_only=False)
    return values.reshape(len(column), width).astype(_numpy_dtype(declared))


def _read_parquets(files: Sequence[Path], columns: Sequence[str]) -> dict[str, list[Any]]:
    """Plain columns of small metadata parquet files (concatenated in file order) as Python lists."""
    import pyarrow.parquet as pq

    out: dict[str, list[Any]] = {c: [] for c in columns}
    for file in files:
        table = pq.read_table(file, columns=list(columns))
        for c in columns:
            out[c].extend(table.column(c).to_pylist())
    return out


class DirectFrames:
    """Items of a local LeRobot v3.0 dataset, equal to ``LeRobotDataset(..., return_uint8=True)``'s (after
    conversion to numpy and ``task`` to ``prompt``). Raises :class:`Unsupported` when it cannot promise that."""

    def __init__(self, root: str | os.PathLike[str], info: dict[str, Any], *, action_key: str,
                 action_horizon: int | None = None, episodes: Sequence[int] | None = None):
        self.root = Path(root)
        self.action_key = action_key
        self.action_horizon = action_horizon
        self.episodes = None if episodes is None else [int(e) for e in episodes]
        self._local = threading.local()
        self._load(info)

    # ── loading and checking (once) ────────────────────────────────────────────────────────────────────────

    def _load(self, info: dict[str, Any]) -> None:
        if str(info.get("codebase_version")) != "v3.0":
            raise Unsupported(f"format {info.get('codebase_version')!r}, not v3.0")
        torch = sys.modules.get("torch")
        if torch is not None and torch.get_default_dtype() != torch.float32:
            raise Unsupported("torch's default dtype is not float32")
        features: dict[str, dict[str, Any]] = info.get("features") or {}
        self.video_keys: list[str] = []
        self.columns: list[str] = []
        shapes: dict[str, tuple[int, ...]] = {}
        for key, feature in features.items():
            dtype = feature.get("dtype")
            feature_info = feature.get("info") or {}
            if dtype == "video":
                video_info = feature.get("video_info") or {}
                if feature_info.get("is_depth_map") or feature_info.get("video.is_depth_map") or \
                        video_info.get("video.is_depth_map"):
                    raise Unsupported(f"depth video {key!r}")
                self.video_keys.append(key)
                continue
            if key.startswith("language_") or not isinstance(dtype, str):
                raise Unsupported(f"column {key!r} of dtype {dtype!r}")
            _numpy_dtype(dtype)  # raises for images, strings and anything else not a number
            shapes[key] = tuple(int(n) for n in feature.get("shape") or ())
            if not (shapes[key] == (1,) or len(shapes[key]) == 1):
                raise Unsupported(f"column {key!r} has shape {shapes[key]}")
            self.columns.append(key)
        missing = [c for c in INDEX_COLUMNS if c not in self.columns]
        if missing:
            raise Unsupported(f"no column {missing[0]!r}")
        if self.action_key not in self.columns:
            raise Unsupported(f"action column {self.action_key!r} is not a numeric column")
        if self.action_horizon is not None and self.action_horizon < 0:
            raise Unsupported(f"action horizon {self.action_horizon}")
        if self.episodes is not None and not self.episodes:
            raise Unsupported("an empty episode list")  # lerobot finds no rows and tries to download them
        fps = info.get("fps")
        if self.action_horizon and not isinstance(fps, int | float):
            raise Unsupported(f"fps {fps!r}")
        # lerobot turns the delta timestamps t / fps back into frame offsets by round(delta * fps).
        self.deltas = (np.array([round(t / fps * fps) for t in range(self.action_horizon)], dtype=np.int64)
                       if self.action_horizon and fps else None)

        self._load_rows(info, features, shapes)
        self._load_episodes(info)
        self._load_tasks()

    def _load_rows(self, info: dict[str, Any], features: dict[str, dict[str, Any]],
                   shapes: dict[str, tuple[int, ...]]) -> None:
        import pyarrow.parquet as pq

        files = sorted((self.root / "data").glob("*/*.parquet"))  # the files, in the order lerobot reads them
        if not files:
            raise Unsupported("no data files")
        parts: dict[str, list[np.ndarray]] = {c: [] for c in self.columns}
        for file in files:
            names = pq.read_schema(file).names
            if sorted(names) != sorted(self.columns):
                raise Unsupported(f"{file} has columns {names}, info.json declares {self.columns}")
            table = pq.read_table(file, columns=self.columns)
            for c in self.columns:
                parts[c].append(_read_column(table.column(c), c, shapes[c], features[c]["dtype"]))
        self.data = {c: np.concatenate(v) if len(v) > 1 else v[0] for c, v in parts.items()}
        total = len(self.data["index"])
        if total != int(info.get("total_frames", -1)):
            raise Unsupported(f"{total} rows, info.json says {info.get('total_frames')} frames")
        if not np.array_equal(self.data["index"], np.arange(total)):
            raise Unsupported("the rows' index column is not their position")
        self.timestamps = self.data["timestamp"]

    def _load_episodes(self, info: dict[str, Any]) -> None:
        files = sorted((self.root / "meta" / "episodes").glob("*/*.parquet"))
        if not files:
            raise Unsupported("no episode metadata")
        video_columns = [f"videos/{key}/{part}" for key in self.video_keys
                         for part in ("chunk_index", "file_index", "from_timestamp")]
        meta = _read_parquets(files, ["episode_index", "dataset_from_index", "dataset_to_index", *video_columns])
        count = len(meta["episode_index"])
        if meta["episode_index"] != list(range(count)) or count != int(info.get("total_episodes", -1)):
            raise Unsupported("episode metadata rows are not episodes 0..total_episodes-1 in order")
        self.ep_from = np.asarray(meta["dataset_from_index"], dtype=np.int64)
        self.ep_to = np.asarray(meta["dataset_to_index"], dtype=np.int64)
        row_episode = self.data["episode_index"]
        if len(row_episode) and (row_episode.min() < 0 or row_episode.max() >= count):
            raise Unsupported("rows of episodes the metadata does not list")
        positions = np.arange(len(row_episode))
        inside = (self.ep_from[row_episode] <= positions) & (positions < self.ep_to[row_episode])
        rows_per_episode = np.bincount(row_episode, minlength=count)
        if not inside.all() or not np.array_equal(rows_per_episode, self.ep_to - self.ep_from):
            raise Unsupported("episode metadata does not match the rows' episode_index")

        wanted = range(count) if self.episodes is None else self.episodes
        if any(not 0 <= e < count or rows_per_episode[e] == 0 for e in wanted):
            raise Unsupported(f"episodes {self.episodes} are not all in the dataset")  # lerobot would download
        self.rows: np.ndarray
        if self.episodes is None:
            self.rows = positions
        else:
            self.rows = np.flatnonzero(np.isin(row_episode, np.asarray(self.episodes, dtype=np.int64)))

        template = info.get("video_path")
        if self.video_keys and not isinstance(template, str):
            raise Unsupported("no video_path in info.json")
        self.video_files: list[str] = []
        file_ids: dict[str, int] = {}
        self.ep_video: dict[str, np.ndarray] = {}
        self.ep_offset: dict[str, list[float]] = {}
        for key in self.video_keys:
            ids = np.zeros(count, dtype=np.int64)
            for e in wanted:
                chunk, file = meta[f"videos/{key}/chunk_index"][e], meta[f"videos/{key}/file_index"][e]
                path = str(self.root / str(template).format(video_key=key, chunk_index=chunk, file_index=file))
                if path not in file_ids:
                    if not os.path.isfile(path):
                        raise Unsupported(f"video {path} is missing")  # lerobot would download
                    file_ids[path] = len(self.video_files)
                    self.video_files.append(path)
                ids[e] = file_ids[path]
            self.ep_video[key] = ids
            offsets = meta[f"videos/{key}/from_timestamp"]
            if any(not isinstance(offsets[e], float) for e in wanted):
                raise Unsupported(f"episodes without a from_timestamp for {key!r}")
            self.ep_offset[key] = offsets

    def _load_tasks(self) -> None:
        import pyarrow.parquet as pq

        # lerobot reads the table with pandas and names an item's task by the row at position task_index.
        frame = pq.read_table(self.root / "meta" / "tasks.parquet").to_pandas()
        self.tasks = [str(name) for name in frame.index]
        task_index = self.data["task_index"][self.rows]
        if len(task_index) and (task_index.min() < 0 or task_index.max() >= len(self.tasks)):
            raise Unsupported("rows with a task_index the task table does not have")

    # ── items ──────────────────────────────────────────────────────────────────────────────────────────────

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.rows)
        i = int(index)
        if i < -n or i >= n:
            raise IndexError(f"index {index} out of range for {n} frames")
        row = int(self.rows[i])
        episode = int(self.data["episode_index"][row])
        out: dict[str, Any] = {}
        timestamp = float(self.timestamps[row])
        for key in self.video_keys:
            path = self.video_files[self.ep_video[key][episode]]
            out[key] = self._decode(path, self.ep_offset[key][episode] + timestamp)
        for column in self.columns:
            out[column] = np.array(self.data[column][row])
        if self.deltas is not None:
            start, stop = self.ep_from[episode], self.ep_to[episode]
            wanted = row + self.deltas  # the index column is the row position (checked at load)
            out[self.action_key] = self.data[self.action_key][np.clip(wanted, start, stop - 1)]
            out[f"{self.action_key}_is_pad"] = (wanted < start) | (wanted >= stop)
        out["prompt"] = self.tasks[int(self.data["task_index"][row])]
        return out

    # ── video ──────────────────────────────────────────────────────────────────────────────────────────────

    def _containers(self) -> OrderedDict[str, Any]:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # new thread, or a forked child (not its parent's files)
            local.pid = os.getpid()
            local.open = OrderedDict()
        return local.open

    def _decode(self, path: str, t: float) -> np.ndarray:
        """The frame lerobot's PyAV decoder returns for time ``t`` (seconds in the file), uint8 CHW."""
        import av

        containers = self._containers()
        entry = containers.get(path)
        if entry is None:
            container = av.open(path)
            stream = container.streams.video[0]
            stream.codec_context.thread_count = DECODER_THREADS
            time_base = stream.time_base
            if time_base is None:
                container.close()
                raise FrameDecodeError(f"{path} has no time base")
            entry = (container, stream, time_base)
            containers[path] = entry
            while len(containers) > MAX_OPEN_VIDEOS:
                containers.popitem(last=False)[1][0].close()
        else:
            containers.move_to_end(path)
        container, stream, time_base = entry
        num, den = time_base.numerator, time_base.denominator
        tick = round(t / time_base)  # lerobot's seek target is this minus one tick
        try:
            found = self._nearest(container, stream, num, den, t, tick, short=True) if SHORT_SEEK else None
            if found is None:
                found = self._nearest(container, stream, num, den, t, tick - 1, short=False)
        except BaseException:
            containers.pop(path, None)
            container.close()
            raise
        best, distance = found if found is not None else (None, np.float32(np.inf))
        if best is None or not distance < np.float32(TOLERANCE_S):
            raise FrameDecodeError(
                f"no frame of {path} within {TOLERANCE_S} s of {t} s"
                + ("" if best is None else f" (the nearest is {float(distance):.6f} s away)")
            )
        return np.ascontiguousarray(best.to_ndarray(format="rgb24").transpose(2, 0, 1))

    @staticmethod
    def _nearest(container: Any, stream: Any, num: int, den: int, t: float, seek: int, *,
                 short: bool) -> tuple[Any, Any] | None:
        """Seek to the keyframe at or before tick ``seek``, decode forward to the first frame at or past ``t``
        and return the nearest of the decoded frames (float32 distances, the first of equals) and its distance.

        lerobot seeks to one tick before ``t``'s (``short=False``: the frames decoded are lerobot's, the answer
        is returned as is); on a keyframe that lands a keyframe earlier and decodes its frames too. Seeking to
        ``t``'s tick (``short=True``) gives the same answer when every frame lerobot decodes in addition is
        provably farther from ``t`` than the nearest found: they all come before the first frame decoded here,
        distances shrink towards ``t``, so that holds when the nearest is not that first frame, or when it is and
        the tick before it is already strictly farther. Otherwise (or when frame times do not increase) it
        returns None and the caller seeks as lerobot does. A frame's time is ``pts * time_base`` correctly
        rounded, which is what ``float(Fraction)`` gives."""
        target = np.float32(t)
        best, best_distance = None, np.float32(np.inf)
        first_pts: int | None = None
        last_pts: int | None = None
        container.seek(seek, backward=True, any_frame=False, stream=stream)
        frames = container.decode(stream)
        try:
            for frame in frames:
                pts = frame.pts
                if pts is None:
                    continue
                if short and last_pts is not None and pts <= last_pts:
                    return None
                if first_pts is None:
                    first_pts = pts
                last_pts = pts
                at = pts * num / den
                distance = abs(target - np.float32(at))
                if distance < best_distance:
                    best, best_distance = frame, distance
                if at >= t:
                    break
        finally:
            frames.close()
        if best is None:
            return None if short else (None, best_distance)
        if short and first_pts is not None and best.pts == first_pts:
            before = np.float32((first_pts - 1) * num / den)  # no frame lerobot decodes in addition comes later
            if not (before < target and abs(target - before) > best_distance):
                return None
        return best, best_distance

    def close(self) -> None:
        """Close this thread's open videos (other threads' close when the threads end)."""
        containers = self._containers()
        while containers:
            containers.popitem()[1][0].close()

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("DirectFrames is not pickled; LeRobotFrames reopens it in the worker")
