"""The training loop: state, one jitted step (loss, grads, clipped AdamW, EMA), checkpoints, metrics.

Reproducibility: the step's rng is ``fold_in(seed key, step)`` and the data loader's batches depend only on
(seed, step), so a run stopped at step k and resumed sees exactly what an uninterrupted run sees.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from pi0cli.errors import Pi0Error
from pi0cli.models.config import Pi0Config
from pi0cli.models.freeze import trainable_filter
from pi0cli.models.observation import Observation
from pi0cli.models.pi0 import Pi0
from pi0cli.training import sharding
from pi0cli.training.checkpoints import Assets, CheckpointManager
from pi0cli.training.config import TrainConfig
from pi0cli.training.optimizer import make_optimizer

Batch = dict[str, Any]
METRICS_FILENAME = "metrics.jsonl"


class TrainingError(Pi0Error):
    """A training run that cannot start or continue as asked."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything that changes during training (a pytree; saved as the ``train_state`` item)."""

    step: jax.Array
    params: nnx.State  # trained parameters
    frozen: nnx.State  # frozen parameters and any other model variables
    opt_state: Any
    #: EMA of ``params``; with ``Model.ema_offset`` stored as ``ema - params`` (a small number, fine in bfloat16).
    ema: nnx.State | None
    rng: jax.Array


@dataclasses.dataclass(frozen=True)
class Model:
    """The static half of a model (its graph) and how its variables are split for training."""

    graphdef: nnx.GraphDef
    config: Pi0Config
    #: the train state's ``ema`` holds ``ema - params`` (bfloat16 EMA) rather than the average itself.
    ema_offset: bool = False

    def merge(self, params: nnx.State, frozen: nnx.State) -> Pi0:
        return nnx.merge(self.graphdef, params, frozen)

    def ema_params(self, state: TrainState) -> nnx.State | None:
        """The EMA weights (float32, like the parameters), or None without an EMA."""
        if state.ema is None:
            return None
        if not self.ema_offset:
            return state.ema
        return jax.tree.map(lambda p, d: p + d.astype(p.dtype), state.params, state.ema)


def build_model(config: Pi0Config, seed: int) -> Pi0:
    """The model ``config.model_type`` calls for: ``Pi0``, or ``Pi0FAST`` (it trains through the same
    ``compute_loss(rng, obs, actions, train=True, ...)``)."""
    from pi0cli.models import create_model

    return create_model(config, nnx.Rngs(seed))  # type: ignore[return-value]  # Pi0FAST trains alike


def split_model(model: Pi0, config: TrainConfig) -> tuple[Model, nnx.State, nnx.State]:
    trainable = trainable_filter(config.freeze, freeze_vision=config.freeze_vision)
    graphdef, params, frozen = nnx.split(model, trainable, ...)  # type: ignore[misc]
    if config.model.dtype == "bfloat16":
        # Frozen weights only feed bf16 computations: storing them in bf16 halves their memory, as the reference.
        frozen = jax.tree.map(lambda x: x.astype(jnp.bfloat16) if x.dtype == jnp.float32 else x, frozen)
    return Model(graphdef, config.model), params, frozen


def init_train_state(config: TrainConfig, model: Pi0) -> tuple[Model, TrainState, optax.GradientTransformation]:
    """A fresh train state around ``model`` (whose weights may already be loaded)."""
    static, params, frozen = split_model(model, config)
    offset = config.ema_decay is not None and config.ema_dtype != "float32"
    static = dataclasses.replace(static, ema_offset=offset)
    tx = make_optimizer(config.optimizer, config.lr_schedule, moment_dtype=config.moment_dtype)
    if config.ema_decay is None:
        ema = None
    elif offset:
        ema = jax.tree.map(lambda p: jnp.zeros(p.shape, config.ema_dtype), params)
    else:
        ema = jax.tree.map(jnp.copy, params)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        frozen=frozen,
        opt_state=tx.init(params),
        ema=ema,
        rng=jax.random.PRNGKey(config.seed),
    )
    return static, state, tx


def _micro_batches(tree: Any, n: int) -> Any:
    """Split every array's batch axis into ``n`` strided micro-batches, stacked first: micro-batch ``i`` holds
    examples ``i, i + n, ...``, so each device's share of a batch-sharded array stays on that device."""
    return jax.tree.map(lambda x: jnp.moveaxis(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 1, 0), tree)


def make_train_step(
    static: Model, tx: optax.GradientTransformation, ema_decay: float | None, *, grad_accum_steps: int = 1,
    source_names: tuple[str, ...] = (),
) -> Callable:
    """``train_step(state, batch) -> (state, metrics)``, pure (jit it).

    A batch with ``action_mask [B, A]`` (a mixture's) has its padded action dims left out of the loss; with
    ``source [B]`` and ``source_names``, the metrics add ``loss/<name>``, the mean loss of each source's examples
    in the batch (nan when it has none).

    With ``grad_accum_steps = n > 1`` the batch runs as ``n`` micro-batches under ``lax.scan`` whose gradients
    are averaged: the noise, flow times and augmentation are drawn for the whole batch first, so the step is
    the one-batch step up to float32 rounding, with ``1/n`` of its activation memory.
    """

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        rng = jax.random.fold_in(state.rng, state.step)
        obs = Observation.from_dict(batch)
        actions = batch["actions"]
        action_mask = batch.get("action_mask")

        def loss_fn(params: nnx.State, obs: Observation, actions: jax.Array, mask: jax.Array | None,
                    **draws: Any) -> tuple[jax.Array, jax.Array]:
            model = static.merge(params, state.frozen)
            if mask is not None:  # only then: a model without the keyword trains single datasets as before
                draws["action_mask"] = mask
            per_example = model.compute_loss(rng, obs, actions, train=True, **draws)
            per_example = per_example.reshape(per_example.shape[0], -1).mean(axis=-1)
            return jnp.mean(per_example), per_example

        if grad_accum_steps == 1:
            (loss, per_example), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, obs, actions,
                                                                                  action_mask)
        else:
            # The draws compute_loss would make for the whole batch, from the same keys.
            pre_rng, noise_rng, time_rng = jax.random.split(rng, 3)
            # The model's own preprocessing: pi0-FAST hides state tokens where pi0 zeroes the state.
            obs = static.merge(state.params, state.frozen).preprocess(pre_rng, obs, True)
            actions = actions.astype(jnp.float32)
            noise = jax.random.normal(noise_rng, actions.shape)
            times = jax.random.beta(time_rng, 1.5, 1.0, actions.shape[:-2]) * 0.999 + 0.001

            def micro(carry, xs):
                obs_i, actions_i, noise_i, time_i, mask_i = xs
                (loss_i, per_i), grads_i = jax.value_and_grad(loss_fn, has_aux=True)(
                    state.params, obs_i, actions_i, mask_i, noise=noise_i, time=time_i, preprocessed=True
                )
                return jax.tree.map(jnp.add, carry, (loss_i, grads_i)), per_i

            zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
            micro_batches = _micro_batches((obs, actions, noise, times, action_mask), grad_accum_steps)
            (loss, grads), per_micro = jax.lax.scan(micro, zeros, micro_batches)
            loss, grads = jax.tree.map(lambda x: x / grad_accum_steps, (loss, grads))
            per_example = per_micro.T.reshape(-1)  # micro-batch i held examples i, i + n, ...
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema
        if ema_decay is not None and static.ema_offset:
            # offset' = ema' - p' = d * (p + offset) + (1 - d) * p' - p' = d * (p - p' + offset), exact in float32.
            ema = jax.tree.map(lambda d, p_old, p: (ema_decay * (p_old - p + d.astype(p.dtype))).astype(d.dtype),
                               state.ema, state.params, params)
        elif ema_decay is not None:
            ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema, params)
        kernels = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
                   if "kernel" in jax.tree_util.keystr(path) or jax.tree_util.keystr(path).endswith("'w']")]
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(kernels)}
        if source_names and "source" in batch:
            for k, name in enumerate(source_names):
                sel = batch["source"] == k
                count = jnp.sum(sel)
                total = jnp.sum(jnp.where(sel, per_example, 0.0))
                metrics[f"loss/{name}"] = jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)
        return dataclasses.replace(state, step=state.step + 1, params=params, opt_state=opt_state, ema=ema), metrics

    return train_step


def check_micro_batch(config: TrainConfig) -> None:
    """The batch (and each micro-batch of it) must split evenly over the devices."""
    sharding.check_batch_size(config.batch_size)
    n, devices = config.grad_accum_steps, jax.device_count()
    if (config.batch_size // n) % devices:
        raise TrainingError(
            f"--batch-size {config.batch_size} in {n} micro-batches does not split over {devices} devices: "
            f"use a multiple of {n * devices} or fewer micro-batches"
        )


def export_checkpoint_params(static: Model, state: TrainState) -> dict[str, Any]:
    """The reference-named parameter tree a policy is served from (EMA weights when EMA is on)."""
    from pi0cli.models.params import export_params

    ema = static.ema_params(state)
    return export_params(static.merge(ema if ema is not None else state.params, state.frozen))


@dataclasses.dataclass
class RunResult:
    exp_dir: Path
    last_step: int
    losses: list[float]


def metrics_log(exp_dir: Path, start_step: int) -> Path:
    """The JSON-lines metrics file, with entries after ``start_step`` dropped (a resumed run rewrites them)."""
    path = exp_dir / METRICS_FILENAME
    if path.exists():
        lines = path.read_text().splitlines()
        kept = [line for line in lines if line and json.loads(line).get("step", 0) <= start_step]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)
    return path


def run(
    config: TrainConfig,
    *,
    exp_dir: Path,
    batches: Callable[[int], Iterator[Batch]],
    assets: Assets,
    init_params: Callable[[Pi0], None] | None = None,
    resume: bool = False,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    stop_after: int | None = None,
    source_names: tuple[str, ...] = (),
) -> RunResult:
    """Train ``config`` on ``batches(start_step)``, checkpointing into ``exp_dir``.

    ``batches`` yields this process's share of each global batch (numpy; all of it in a one-process run).

    ``init_params`` loads initial weights into a fresh model. ``resume`` continues from the latest complete
    checkpoint. ``stop_after`` ends the run early at that step (tests of resumption). ``source_names`` label a
    mixture's sources (batches carry ``source``): each logged row then has ``loss/<name>`` for the sources in
    its batch, and ``on_step`` gets each source's mean over the steps since the last report.
    """
    exp_dir = Path(exp_dir).absolute()
    mesh = sharding.make_mesh(config.fsdp_devices)
    check_micro_batch(config)
    checkpoints = CheckpointManager(exp_dir, max_to_keep=config.max_to_keep, keep_period=config.keep_period)
    with jax.sharding.use_mesh(mesh) if hasattr(jax.sharding, "use_mesh") else contextlib.nullcontext():
        model = build_model(config.model, config.seed)
        if init_params is not None:
            init_params(model)
        static, state, tx = init_train_state(config, model)
        del model
        state_shardings = sharding.fsdp_shardings(state, mesh, config.fsdp_min_bytes)
        state = jax.device_put(state, state_shardings)
        start = 0
        if resume:
            latest = checkpoints.latest_step()
            if latest is None:
                raise TrainingError(f"--resume: {exp_dir} has no complete checkpoint to resume from; drop --resume")
            target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state,
                                  state_shardings)
            state = checkpoints.restore_train_state(latest, target)
            start = int(state.step)
        step_fn = jax.jit(
            make_train_step(static, tx, config.ema_decay, grad_accum_steps=config.grad_accum_steps,
                            source_names=source_names),
            in_shardings=(state_shardings, sharding.data_sharding(mesh)),
            out_shardings=(state_shardings, sharding.replicated(mesh)),
            donate_argnums=0,
        )
        log_path = metrics_log(exp_dir, start)
        losses: list[float] = []
        end = config.num_train_steps if stop_after is None else min(stop_after, config.num_train_steps)
        data = batches(start)
        pending: list[tuple[int, dict[str, jax.Array]]] = []
        last_log = time.perf_counter()
        # closing: an interrupted run (Ctrl-C) still finishes the save in flight, so its step is complete.
        with log_path.open("a") as log, contextlib.closing(checkpoints):
            for step in range(start, end):
                batch = sharding.global_batch(next(data), mesh)
                state, metrics = step_fn(state, batch)
                pending.append((step, metrics))
                done = step + 1
                if done % config.log_interval == 0 or done == end:
                    now = time.perf_counter()
                    rate = len(pending) / max(now - last_log, 1e-9)
                    last_log = now
                    window: dict[str, list[float]] = {}
                    for logged_step, logged in jax.device_get(pending):
                        # A source absent from a batch has no loss there (nan): no entry rather than an invalid one.
                        row = {"step": logged_step + 1,
                               **{k: float(v) for k, v in logged.items() if math.isfinite(float(v)) or "/" not in k}}
                        for key, value in row.items():
                            if key.startswith("loss/"):
                                window.setdefault(key, []).append(value)
                        losses.append(row["loss"])
                        if jax.process_index() == 0:
                            log.write(json.dumps(row | {"steps_per_s": round(rate, 3)}) + "\n")
                    log.flush()
                    pending.clear()
                    if on_step is not None:
                        means = {key: sum(values) / len(values) for key, values in window.items()}
                        on_step(done, {"loss": losses[-1], "steps_per_s": rate, **row, **means})
                if (done % config.save_interval == 0 and done > start) or done == end:
                    checkpoints.save(done, params=export_checkpoint_params(static, state), train_state=state,
                                     assets=assets)
    return RunResult(exp_dir=exp_dir, last_step=end, losses=losses)
