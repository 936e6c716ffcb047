"""``pi0 serve --record DIR``: every served request and its reply, saved as ``.npz`` files (no pickle).

One file per request, ``DIR/request_<N>.npz`` (N zero-padded, in serving order), holding ``/``-joined key
paths: ``inputs/<observation path>`` and ``outputs/<reply path>`` (``outputs/actions``,
``outputs/policy_timing/infer_ms``, ``outputs/server_timing/...``). A ``/`` or ``%`` *inside* a key is escaped
(``%2F``, ``%25``), so a flat key ``"a/b"`` and a nested ``{"a": {"b": ...}}`` are stored apart and read back
as they were sent. Strings (the prompt) are stored as numpy unicode scalars, numbers as 0-d arrays, so
``np.load(..., allow_pickle=False)`` reads everything.

Keys the embodiment does not know (anything but its cameras, state fields and the prompt) are recorded only
up to ``max_unknown_key_bytes`` each; a larger one is left out and its size noted under
``omitted/inputs/<path>``. Files are written by a background thread (the event loop never waits on the disk)
into a temporary name and renamed, so a reader never sees half a file; a failed write removes its temporary
file. The queue is bounded in bytes: when the disk cannot keep up, records are dropped rather than slowing
the robots down. Drops and failures are counted (``/metrics``) and each distinct reason is logged once.

Read recordings with :func:`load_record` (one file) or :func:`load_records` (a directory, in order)::

    from pi0cli.serving.recording import load_records
    for rec in load_records("recordings/"):
        rec["inputs"]["images"]["cam_high"], rec["outputs"]["actions"]
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np

from pi0cli.errors import Pi0Error
from pi0cli.observation_types import Array, Observation, ObservationValue, Reply

if TYPE_CHECKING:
    from pi0cli.embodiment import Embodiment

log = logging.getLogger("pi0.serve.record")

PREFIX = "request_"
_INDEX = re.compile(rf"{PREFIX}(\d+)\.npz")
_ESCAPES = {"%": "%25", "/": "%2F"}
_NEEDS_ESCAPE = re.compile(r"[%/\x00-\x1f\x7f]")
_ESCAPED = re.compile(r"%([0-9A-F]{2})")
#: Reasons of failed writes remembered (each logged once); more distinct reasons are counted only.
_MAX_REASONS = 16


class RecordError(Pi0Error):
    """The record directory cannot be used."""


def escape_key(key: str) -> str:
    """A map key as one path component: ``/``, ``%`` and control characters become ``%XX``."""
    return _NEEDS_ESCAPE.sub(lambda m: _ESCAPES.get(m.group(), f"%{ord(m.group()):02X}"), key)


def unescape_key(part: str) -> str:
    """Inverse of :func:`escape_key`."""
    return _ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), part)


class Record(TypedDict, total=False):
    """One recording read back: the request, the reply, and (if any) the sizes of keys left out."""

    inputs: Observation
    outputs: Reply
    omitted: dict[str, int]


def _leaves(tree: Mapping[str, object]) -> Iterator[tuple[str, str, object]]:
    """``(escaped path, plain path, leaf)`` of every leaf, walking with an explicit stack (no recursive
    closure: a closure that refers to itself is a reference cycle, which would keep every recorded request
    alive until the cycle collector runs)."""
    stack: list[tuple[str, str, object]] = [("", "", tree)]
    while stack:
        escaped, plain, node = stack.pop()
        if isinstance(node, Mapping):
            for key, value in reversed(list(node.items())):
                key = str(key)
                stack.append((f"{escaped}/{escape_key(key)}" if escaped else escape_key(key),
                              f"{plain}/{key}" if plain else key, value))
        else:
            yield escaped, plain, node


def _to_array(value: object) -> Array:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, bytes):
        return np.frombuffer(value, dtype=np.uint8)
    if value is None:
        return np.asarray(np.nan)
    if isinstance(value, (list, tuple)):
        try:
            arr = np.asarray(value)
        except (ValueError, OverflowError):
            return np.asarray(repr(value))
        return arr if arr.dtype.kind in "biufU" else np.asarray(repr(value))
    try:
        arr = np.asarray(value)
    except OverflowError:
        return np.asarray(str(value))
    return arr if arr.dtype.kind in "biufU" else np.asarray(str(value))


def to_record(request: Mapping[str, object], reply: Mapping[str, object], *, known: Iterable[str] | None = None,
              max_unknown_key_bytes: int | None = None) -> dict[str, Array]:
    """The flat ``{key: array}`` mapping saved for one request. With ``known`` (the request keys the
    embodiment reads) and ``max_unknown_key_bytes``, larger leaves under other keys are replaced by their size
    under ``omitted/inputs/<path>``."""
    known_set = frozenset(known) if known is not None else None
    flat: dict[str, Array] = {}
    for escaped, plain, leaf in _leaves(request):
        arr = _to_array(leaf)
        if (max_unknown_key_bytes is not None and known_set is not None and plain not in known_set
                and arr.nbytes > max_unknown_key_bytes):
            flat[f"omitted/inputs/{escaped}"] = np.asarray(arr.nbytes, np.int64)
            continue
        flat[f"inputs/{escaped}"] = arr
    for escaped, _, leaf in _leaves(reply):
        flat[f"outputs/{escaped}"] = _to_array(leaf)
    return flat


def save_record(path: str | os.PathLike[str], request: Mapping[str, object], reply: Mapping[str, object], *,
                known: Iterable[str] | None = None, max_unknown_key_bytes: int | None = None) -> Path:
    """Write one record atomically (see :func:`to_record` for the keys)."""
    path = Path(path)
    _savez_atomic(path, to_record(request, reply, known=known, max_unknown_key_bytes=max_unknown_key_bytes))
    return path


def _savez_atomic(path: Path, arrays: Mapping[str, Array]) -> None:
    """``np.savez`` into a temporary name renamed into place; the temporary file is removed if anything fails."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as handle:
            # Keys start inputs/ or outputs/, never a savez parameter (numpy's stub types **kwds like allow_pickle).
            np.savez(handle, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def load_record(path: str | os.PathLike[str]) -> Record:
    """One recording as ``{"inputs": nested observation, "outputs": nested reply}`` (strings back to ``str``),
    plus ``"omitted": {request key path: size in bytes}`` when keys were left out."""
    tree: dict[str, ObservationValue] = {"inputs": {}, "outputs": {}}
    omitted: dict[str, int] = {}
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            parts = [unescape_key(p) for p in key.split("/")]
            if parts[:2] == ["omitted", "inputs"]:
                omitted["/".join(parts[2:])] = int(data[key])
                continue
            node = tree
            for part in parts[:-1]:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise ValueError(f"{path}: key {key!r} runs through a leaf")
                node = child
            node[parts[-1]] = _from_array(data[key])
    record = Record(inputs=_branch(tree, "inputs"), outputs=_branch(tree, "outputs"))
    if omitted:
        record["omitted"] = omitted
    return record


def _branch(tree: dict[str, ObservationValue], name: str) -> dict[str, ObservationValue]:
    value = tree[name]
    return value if isinstance(value, dict) else {}


def _from_array(arr: Array) -> ObservationValue:
    if arr.ndim == 0 and arr.dtype.kind == "U":
        return str(arr)
    if arr.ndim == 0:
        value: ObservationValue = arr.item()
        return value
    return arr


def record_files(directory: str | os.PathLike[str]) -> list[Path]:
    """The record files of a directory, in serving order."""
    return sorted(p for p in Path(directory).glob(f"{PREFIX}*.npz") if _INDEX.fullmatch(p.name))


def load_records(directory: str | os.PathLike[str]) -> Iterator[Record]:
    """Every recording in ``directory``, in serving order (see :func:`load_record`)."""
    for file in record_files(directory):
        yield load_record(file)


def _nbytes(tree: object) -> int:
    """About how many bytes a request or reply holds (arrays, bytes and strings; containers count 64)."""
    total, stack = 0, [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, np.ndarray):
            total += node.nbytes
        elif isinstance(node, (bytes, str)):
            total += len(node)
        elif isinstance(node, Mapping):
            stack.extend(node.values())
            total += 64
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
            total += 64
        else:
            total += 16
    return total


class Recorder:
    """Saves (request, reply) pairs from the server on a background thread.

    ``max_queue_bytes`` bounds what waits to be written (records beyond it are dropped and counted);
    ``known``/``max_unknown_key_bytes``: see :func:`to_record` (``Recorder.for_embodiment`` fills ``known``).
    A directory that cannot be created or written raises :class:`RecordError` here, before serving starts.
    """

    def __init__(self, directory: str | os.PathLike[str], *, max_queue_bytes: int = 256 * 2**20,
                 known: Iterable[str] | None = None, max_unknown_key_bytes: int | None = 2**20):
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / f".probe-{os.getpid()}.tmp"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise RecordError(f"cannot record to {self.directory}: {exc.strerror or exc}; "
                              "pass a writable directory to --record") from None
        for stale in self.directory.glob(f".{PREFIX}*.npz.tmp"):  # left by a process that was killed
            with contextlib.suppress(OSError):
                stale.unlink()
        existing = record_files(self.directory)
        match = _INDEX.fullmatch(existing[-1].name) if existing else None
        self._next = int(match.group(1)) + 1 if match else 0
        self.max_queue_bytes = int(max_queue_bytes)
        self.known = frozenset(known) if known is not None else None
        self.max_unknown_key_bytes = max_unknown_key_bytes
        self._queue: queue.Queue[tuple[int, Mapping[str, object], Mapping[str, object], int] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._queue_bytes = 0
        self.saved = 0
        self.dropped_queue_full = 0
        self.failed_writes = 0
        self.omitted_keys = 0
        self.failure_reasons: list[str] = []
        self._thread = threading.Thread(target=self._run, name="pi0-recorder", daemon=True)
        self._thread.start()

    @classmethod
    def for_embodiment(cls, directory: str | os.PathLike[str], embodiment: Embodiment, *,
                       max_queue_bytes: int = 256 * 2**20, max_unknown_key_bytes: int | None = 2**20) -> Recorder:
        """A recorder that caps the keys ``embodiment``'s contract does not read."""
        return cls(directory, known=embodiment.observation_keys, max_queue_bytes=max_queue_bytes,
                   max_unknown_key_bytes=max_unknown_key_bytes)

    @property
    def dropped(self) -> int:
        return self.dropped_queue_full + self.failed_writes

    def stats(self) -> dict[str, int]:
        return {"saved": self.saved, "queue_full": self.dropped_queue_full, "write_failed": self.failed_writes,
                "omitted_keys": self.omitted_keys, "queue_bytes": self._queue_bytes}

    def record(self, request: Mapping[str, object], reply: Mapping[str, object], nbytes: int | None = None) -> bool:
        """Queue one pair (``nbytes``: its size if known, e.g. the frame lengths); False if it was dropped."""
        size = int(nbytes) if nbytes is not None else _nbytes(request) + _nbytes(reply)
        first = False
        with self._lock:
            if self._queue_bytes + size > self.max_queue_bytes and self._queue_bytes > 0:
                self.dropped_queue_full += 1
                first = self.dropped_queue_full == 1
                accepted = False
            else:
                self._queue_bytes += size
                index, self._next = self._next, self._next + 1
                accepted = True
        if not accepted:
            if first:
                log.warning("--record: the disk does not keep up (%d MiB queued); dropping records, counted in "
                            "/metrics as pi0_record_dropped_total{reason=\"queue_full\"}", self.max_queue_bytes >> 20)
            return False
        self._queue.put((index, request, reply, size))
        return True

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            index, request, reply, size = item
            del item
            try:
                self._write(index, request, reply)
            except Exception as exc:  # noqa: BLE001 - a full disk must not stop serving
                self._failed(f"{type(exc).__name__}: {exc}")
            finally:
                # Nothing of the request outlives its write: not even this loop's variables.
                del request, reply
                with self._lock:
                    self._queue_bytes -= size
                self._queue.task_done()

    def _write(self, index: int, request: Mapping[str, object], reply: Mapping[str, object]) -> None:
        flat = to_record(request, reply, known=self.known, max_unknown_key_bytes=self.max_unknown_key_bytes)
        omitted = [k for k in flat if k.startswith("omitted/")]
        if omitted:
            self.omitted_keys += len(omitted)
            if self.omitted_keys == len(omitted):
                log.warning("--record: left %s out of request %d (over the %d-byte cap for keys the embodiment "
                            "does not know); counted in /metrics as pi0_record_omitted_keys_total",
                            omitted[0].removeprefix("omitted/inputs/"), index, self.max_unknown_key_bytes)
        _savez_atomic(self.directory / f"{PREFIX}{index:08d}.npz", flat)
        self.saved += 1

    def _failed(self, reason: str) -> None:
        self.failed_writes += 1
        if reason not in self.failure_reasons and len(self.failure_reasons) < _MAX_REASONS:
            self.failure_reasons.append(reason)
            log.error("--record: cannot write to %s (%s); the request was served but not recorded. Further "
                      "failures are counted in /metrics as pi0_record_dropped_total{reason=\"write_failed\"}",
                      self.directory, reason[:300])

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything queued so far is written (or dropped); False on timeout."""
        done = threading.Event()

        def wait() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        return done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)
