"""Device meshes, FSDP sharding rules and multi-process start-up.

The mesh has axes ``("batch", "fsdp")`` of shape ``(devices / fsdp, fsdp)``. Batches are split over every
device (both axes). An array of at least 4 MiB is sharded over ``fsdp`` along its largest axis that the fsdp
size divides; smaller arrays are replicated (sharding them costs more in collectives than it saves).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pi0cli.errors import Pi0Error

BATCH_AXES = ("batch", "fsdp")
FSDP_MIN_BYTES = 4 * 2**20


class ShardingError(Pi0Error):
    """A device layout that cannot work (device counts, batch sizes)."""


def init_distributed(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> None:
    """Join a multi-process run through ``jax.distributed`` when asked to (flags, else ``PI0_COORDINATOR``,
    ``PI0_NUM_PROCESSES``, ``PI0_PROCESS_ID``); a single process needs nothing."""
    coordinator = coordinator or os.environ.get("PI0_COORDINATOR")
    if not coordinator:
        return
    num_processes = num_processes or int(os.environ.get("PI0_NUM_PROCESSES", "0")) or None
    process_id = process_id if process_id is not None else (
        int(os.environ["PI0_PROCESS_ID"]) if "PI0_PROCESS_ID" in os.environ else None)
    if num_processes is None or process_id is None:
        raise ShardingError(
            "a multi-process run needs the process count and this process's id: pass --num-processes and "
            "--process-id (or set PI0_NUM_PROCESSES and PI0_PROCESS_ID)"
        )
    # CPU devices need a collectives implementation to talk across processes (GPUs use NCCL regardless).
    # Asking for the backend here would initialise it too early, so set it unconditionally.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)


def make_mesh(fsdp_devices: int = 1) -> Mesh:
    devices = jax.devices()
    if fsdp_devices <= 0 or len(devices) % fsdp_devices:
        raise ShardingError(
            f"--fsdp-devices {fsdp_devices} must divide the {len(devices)} available devices"
        )
    grid = np.asarray(devices).reshape(len(devices) // fsdp_devices, fsdp_devices)
    return Mesh(grid, BATCH_AXES)


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def fsdp_spec(shape: tuple[int, ...], itemsize: int, fsdp: int, min_bytes: int = FSDP_MIN_BYTES) -> PartitionSpec:
    """Where one array goes: sharded over ``fsdp`` on its largest divisible axis if big enough."""
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) * itemsize < min_bytes:
        return PartitionSpec()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % fsdp == 0:
            spec: list[str | None] = [None] * len(shape)
            spec[axis] = "fsdp"
            return PartitionSpec(*spec)
    return PartitionSpec()


def fsdp_shardings(tree: Any, mesh: Mesh, min_bytes: int = FSDP_MIN_BYTES) -> Any:
    """A sharding for every array leaf of ``tree`` (abstract or concrete) by the FSDP rule."""
    fsdp = mesh.shape["fsdp"]

    def one(leaf: Any) -> NamedSharding:
        shape = tuple(getattr(leaf, "shape", ()))
        dtype = getattr(leaf, "dtype", np.float32)
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            return replicated(mesh)
        return NamedSharding(mesh, fsdp_spec(shape, np.dtype(dtype).itemsize, fsdp, min_bytes))

    return jax.tree.map(one, tree)


def global_batch(local: Any, mesh: Mesh) -> Any:
    """This process's share of a batch (numpy) as global arrays split over every device of the mesh."""
    sharding = data_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local)


def check_batch_size(batch_size: int) -> int:
    """The per-process batch size; the global batch must split evenly over processes and devices."""
    devices, processes = jax.device_count(), jax.process_count()
    if batch_size % devices:
        raise ShardingError(f"--batch-size {batch_size} must be a multiple of the {devices} devices")
    return batch_size // processes
