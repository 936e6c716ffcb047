"""``pi0 serve --record DIR``: every served request and its reply, saved as ``.npz`` files (no pickle).

One file per request, ``DIR/request_<N>.npz`` (N zero-padded, in serving order), holding ``/``-flattened keys:
``inputs/<observation path>`` and ``outputs/<reply path>`` (``outputs/actions``, ``outputs/policy_timing/infer_ms``,
``outputs/server_timing/...``). Strings (the prompt) are stored as numpy unicode scalars, numbers as 0-d
arrays, so ``np.load(..., allow_pickle=False)`` reads everything. Files are written by a background thread
(the event loop never waits on the disk) into a temporary name and renamed, so a reader never sees half a file.

Read recordings with :func:`load_record` (one file) or :func:`load_records` (a directory, in order)::

    from pi0cli.serving.recording import load_records
    for rec in load_records("recordings/"):
        rec["inputs"]["images"]["cam_high"], rec["outputs"]["actions"]
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pi0cli.transforms import flatten, unflatten

PREFIX = "request_"


def _to_array(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, bytes):
        return np.frombuffer(value, dtype=np.uint8)
    if value is None:
        return np.asarray(np.nan)
    if isinstance(value, (list, tuple)):
        try:
            arr = np.asarray(value)
        except ValueError:
            return np.asarray(repr(value))
        return arr if arr.dtype.kind in "biufU" else np.asarray(repr(value))
    arr = np.asarray(value)
    return arr if arr.dtype.kind in "biufU" else np.asarray(str(value))


def to_record(request: Mapping[str, Any], reply: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The flat ``{key: array}`` mapping saved for one request."""
    flat = {f"inputs/{k}": _to_array(v) for k, v in flatten(request).items()}
    flat.update({f"outputs/{k}": _to_array(v) for k, v in flatten(reply).items()})
    return flat


def save_record(path: str | os.PathLike[str], request: Mapping[str, Any], reply: Mapping[str, Any]) -> Path:
    """Write one record atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        np.savez(handle, **to_record(request, reply))
    os.replace(tmp, path)
    return path


def load_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """One recording as ``{"inputs": nested observation, "outputs": nested reply}`` (strings back to ``str``)."""
    with np.load(path, allow_pickle=False) as data:
        flat = {key: _from_array(data[key]) for key in data.files}
    nested = unflatten(flat)
    return {"inputs": nested.get("inputs", {}), "outputs": nested.get("outputs", {})}


def _from_array(arr: np.ndarray) -> Any:
    if arr.ndim == 0 and arr.dtype.kind == "U":
        return str(arr)
    if arr.ndim == 0:
        return arr.item()
    return arr


def record_files(directory: str | os.PathLike[str]) -> list[Path]:
    """The record files of a directory, in serving order."""
    return sorted(Path(directory).glob(f"{PREFIX}*.npz"))


def load_records(directory: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Every recording in ``directory``, in serving order (see :func:`load_record`)."""
    for file in record_files(directory):
        yield load_record(file)


class Recorder:
    """Saves (request, reply) pairs from the server on a background thread.

    The queue is bounded: if the disk cannot keep up, records are dropped (and counted in ``dropped``) rather
    than slowing the robots down.
    """

    def __init__(self, directory: str | os.PathLike[str], max_pending: int = 256):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        existing = record_files(self.directory)
        self._next = int(existing[-1].stem.removeprefix(PREFIX)) + 1 if existing else 0
        self._queue: queue.Queue = queue.Queue(max_pending)
        self.saved = 0
        self.dropped = 0
        self.failed: str | None = None
        self._thread = threading.Thread(target=self._run, name="pi0-recorder", daemon=True)
        self._thread.start()

    def record(self, request: Mapping[str, Any], reply: Mapping[str, Any]) -> None:
        try:
            self._queue.put_nowait((self._next, request, reply))
            self._next += 1
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            index, request, reply = item
            try:
                save_record(self.directory / f"{PREFIX}{index:08d}.npz", request, reply)
                self.saved += 1
            except Exception as exc:  # noqa: BLE001 - a full disk must not stop serving
                self.failed = f"{type(exc).__name__}: {exc}"
                self.dropped += 1

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)
