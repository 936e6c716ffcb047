"""Batches for training: shuffled, deterministic in (seed, step), sharded, decoded off the main thread.

Order. The loader sees the dataset as an endless stream of epochs; epoch ``e`` is the permutation
``default_rng([seed, e]).permutation(N)``. Global batch ``s`` is stream positions ``[s*B, (s+1)*B)`` (a
batch may straddle two epochs; nothing is dropped). So the batch of step ``s`` depends only on
``(seed, s)``: a run resumed at step ``k`` with ``batches(k)`` sees exactly what it would have seen.

Sharding. Process ``p`` of ``P`` takes the ``p``-th contiguous ``B/P`` slice of each global batch, which
must split evenly over its local devices (what ``jax.make_array_from_process_local_data`` expects).

Workers. Examples are read and transformed (video decoding included) by a pool of threads or spawned
processes; at most ``prefetch`` batches are in flight, and batches come back in step order, so memory is
bounded by ``prefetch`` batches whatever the dataset size. Process workers receive the dataset and the
transform by pickling (:class:`pi0cli.data.lerobot.LeRobotFrames` reopens itself lazily in each worker).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import multiprocessing
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from pi0cli.errors import Pi0Error
from pi0cli.transforms import stack_trees

Batch = dict[str, Any]


class LoaderError(Pi0Error, ValueError):
    """A loader configuration that cannot work (batch sizes, shards, empty dataset)."""


@dataclasses.dataclass(frozen=True)
class Shard:
    """Which part of each global batch this process loads."""

    process_index: int = 0
    process_count: int = 1
    local_devices: int = 1

    @classmethod
    def from_jax(cls) -> Shard:
        import jax

        return cls(jax.process_index(), jax.process_count(), jax.local_device_count())


class BatchOrder:
    """Global sample indices of every step (see the module docstring); cheap to query for any step."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, shard: Shard = Shard()):
        if num_samples <= 0:
            raise LoaderError("the dataset has no samples; check the dataset and its episodes")
        if batch_size <= 0:
            raise LoaderError(f"batch size must be positive, got {batch_size}")
        if not 0 <= shard.process_index < shard.process_count:
            raise LoaderError(f"process index {shard.process_index} is not in [0, {shard.process_count})")
        if batch_size % shard.process_count:
            raise LoaderError(f"batch size {batch_size} does not split over {shard.process_count} processes")
        local = batch_size // shard.process_count
        if local % shard.local_devices:
            raise LoaderError(
                f"each process loads {local} examples, which do not split over its {shard.local_devices} devices; "
                "use a batch size that is a multiple of the device count"
            )
        self.num_samples, self.batch_size, self.seed, self.shard = num_samples, batch_size, seed, shard
        self.local_batch_size = local
        self._perms: OrderedDict[int, np.ndarray] = OrderedDict()

    def permutation(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
            self._perms[epoch] = perm
            while len(self._perms) > 2:  # a batch spans at most two epochs (when B <= N)
                self._perms.popitem(last=False)
        return perm

    def global_indices(self, step: int) -> np.ndarray:
        positions = step * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
        epochs, offsets = np.divmod(positions, self.num_samples)
        out = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            out[sel] = self.permutation(int(epoch))[offsets[sel]]
        return out

    def local_indices(self, step: int) -> np.ndarray:
        start = self.shard.process_index * self.local_batch_size
        return self.global_indices(step)[start : start + self.local_batch_size]


# Worker-side state of process pools (set by the initializer, once per worker).
_WORKER: dict[str, Any] = {}


def _init_worker(dataset: Any, transform: Callable | None) -> None:
    _WORKER["dataset"], _WORKER["transform"] = dataset, transform


def _load(dataset: Any, transform: Callable | None, indices: Sequence[int] | np.ndarray) -> Batch:
    examples = []
    for i in indices:
        example = dataset[int(i)]
        examples.append(transform(example) if transform is not None else example)
    return stack_trees(examples)


def _load_in_worker(indices: Sequence[int]) -> Batch:
    return _load(_WORKER["dataset"], _WORKER["transform"], indices)


class DataLoader:
    """``batches(start_step)`` yields this process's numpy share of every global batch from ``start_step`` on.

    ``dataset`` is anything with ``__len__`` and ``__getitem__`` (e.g. :class:`LeRobotFrames`); ``transform``
    turns one item into one model example (e.g. ``Pipeline.training_inputs()``). ``workers="thread"`` (default;
    PyAV decodes with the GIL released) or ``"process"`` (spawned processes; needs picklable dataset and
    transform); ``num_workers=0`` loads in the calling thread. ``order`` replaces the shuffled epochs (a
    weighted mixture's :class:`pi0cli.data.mixture.MixtureOrder`).
    """

    def __init__(self, dataset: Any, transform: Callable | None, *, batch_size: int, seed: int = 0,
                 shard: Shard = Shard(), num_workers: int = 2, prefetch: int | None = None,
                 workers: str = "thread", split: int | None = None, order: BatchOrder | None = None):
        if workers not in ("thread", "process"):
            raise LoaderError(f"workers must be 'thread' or 'process', got {workers!r}")
        self.dataset, self.transform = dataset, transform
        self.order = order if order is not None else BatchOrder(len(dataset), batch_size, seed, shard)
        self.num_workers = max(0, int(num_workers))
        self.workers = workers
        self.prefetch = max(1, prefetch if prefetch is not None else self.num_workers + 1)
        # Thread workers share each batch (finer tasks keep every thread busy); processes take whole batches.
        local = self.order.local_batch_size
        self.split = split or (min(self.num_workers, local) if workers == "thread" and self.num_workers else 1)

    @property
    def local_batch_size(self) -> int:
        return self.order.local_batch_size

    def _tasks(self, step: int) -> list[np.ndarray]:
        return [part for part in np.array_split(self.order.local_indices(step), self.split) if len(part)]

    def batches(self, start_step: int = 0, num_steps: int | None = None) -> Iterator[Batch]:
        end = None if num_steps is None else start_step + num_steps
        if self.num_workers == 0:
            step = start_step
            while end is None or step < end:
                yield _load(self.dataset, self.transform, self.order.local_indices(step))
                step += 1
            return
        if self.workers == "thread":
            pool: cf.Executor = cf.ThreadPoolExecutor(self.num_workers, thread_name_prefix="pi0-loader")
            submit = lambda idx: pool.submit(_load, self.dataset, self.transform, idx)  # noqa: E731
        else:
            pool = cf.ProcessPoolExecutor(self.num_workers, mp_context=multiprocessing.get_context("spawn"),
                                          initializer=_init_worker, initargs=(self.dataset, self.transform))
            submit = lambda idx: pool.submit(_load_in_worker, idx)  # noqa: E731
        pending: deque[list[cf.Future]] = deque()
        next_step = start_step
        try:
            while True:
                while len(pending) < self.prefetch and (end is None or next_step < end):
                    pending.append([submit(idx) for idx in self._tasks(next_step)])
                    next_step += 1
                if not pending:
                    return
                parts = [future.result() for future in pending.popleft()]
                yield parts[0] if len(parts) == 1 else stack_trees(parts, concatenate=True)
        finally:
            for futures in pending:
                for future in futures:
                    future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def __iter__(self) -> Iterator[Batch]:
        return self.batches(0)

