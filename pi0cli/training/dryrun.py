"""``pi0 train --dry-run``: parameter counts and XLA's memory estimate of one train step, without allocating.

The model and train state are built abstractly (``nnx.eval_shape`` / ``jax.eval_shape``) and one train step is
lowered and compiled for the current devices with the FSDP shardings of a real run, so the answer holds for
full-size models on a laptop: "will it fit on my GPU?". Compiled for the CPU, the estimate is for the CPU's
program, which computes bfloat16 work in float32 (upcast buffers): a GPU's peak is usually lower.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from pi0cli.models.params import count_params
from pi0cli.training import sharding
from pi0cli.training.config import TrainConfig
from pi0cli.training.trainer import (
    TrainState,
    build_model,
    check_micro_batch,
    init_train_state,
    make_train_step,
)


@dataclasses.dataclass(frozen=True)
class DryRunReport:
    total_params: int
    trainable_params: int
    optimizer_state_bytes: int
    devices: int
    batch_size: int
    #: the platform the step was compiled for ("cpu", "gpu", "tpu") and its device kind
    backend: str
    device_kind: str
    #: per device, from XLA's compiled memory analysis
    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int
    generated_code_bytes: int
    grad_accum_steps: int = 1

    @property
    def peak_bytes(self) -> int:
        """Arguments + outputs + temporaries, less the donated buffers reused for outputs."""
        return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes

    @property
    def backend_note(self) -> str:
        """Which program the numbers describe (the CPU's upcasts bfloat16 work to float32)."""
        if self.backend == "cpu":
            return "compiled for the CPU (an estimate: the CPU upcasts bfloat16 work to float32)"
        return f"compiled for {self.backend} ({self.device_kind})"


def abstract_batch(config: TrainConfig, batch_size: int) -> dict[str, Any]:
    """One training batch as ``jax.ShapeDtypeStruct``s: the model family's layout (pi0-FAST adds its token masks)."""
    return config.model.family.abstract_batch(config.model, batch_size)


def compile_train_step(config: TrainConfig) -> tuple[jax.stages.Compiled, TrainState]:
    """One train step of ``config`` compiled for the current devices, and the abstract train state it takes."""
    mesh = sharding.make_mesh(config.fsdp_devices)
    check_micro_batch(config)
    holder: dict[str, Any] = {}

    def init() -> TrainState:
        static, state, tx = init_train_state(config, build_model(config.model, config.seed))
        holder["static"], holder["tx"] = static, tx
        return state

    state = jax.eval_shape(init)
    static, tx = holder["static"], holder["tx"]
    shardings = sharding.fsdp_shardings(state, mesh, config.fsdp_min_bytes)
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
    data = sharding.data_sharding(mesh)
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=data),
                         abstract_batch(config, config.batch_size))
    step = jax.jit(make_train_step(static, tx, config.ema_decay, grad_accum_steps=config.grad_accum_steps),
                   in_shardings=(shardings, data), out_shardings=(shardings, sharding.replicated(mesh)),
                   donate_argnums=0)
    return step.lower(state, batch).compile(), state


def dry_run(config: TrainConfig) -> DryRunReport:
    """Count parameters and compile one train step abstractly for the configured devices."""
    compiled, state = compile_train_step(config)
    memory = compiled.memory_analysis()
    if memory is None:
        raise RuntimeError(f"XLA gives no memory analysis for the {jax.default_backend()} backend")
    trainable = count_params(state.params)
    device = jax.devices()[0]
    return DryRunReport(
        total_params=trainable + count_params(state.frozen),
        trainable_params=trainable,
        optimizer_state_bytes=int(sum(np.prod(x.shape, dtype=np.int64) * np.dtype(x.dtype).itemsize
                                      for x in jax.tree.leaves(state.opt_state))),
        devices=jax.device_count(),
        batch_size=config.batch_size,
        backend=device.platform,
        device_kind=device.device_kind,
        argument_bytes=int(memory.argument_size_in_bytes),
        output_bytes=int(memory.output_size_in_bytes),
        temp_bytes=int(memory.temp_size_in_bytes),
        alias_bytes=int(memory.alias_size_in_bytes),
        generated_code_bytes=int(memory.generated_code_size_in_bytes),
        grad_accum_steps=config.grad_accum_steps,
    )
