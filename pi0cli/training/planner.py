"""The memory planner: the cheapest way to run a train config inside a memory budget, from compiled analyses.

A plan is a set of memory-for-compute trades: FSDP over the devices present, bfloat16 EMA and Adam moments,
gradient accumulation (exact: the same step in micro-batches), token-chunked MLPs, remat per module (none,
dots, nothing) and, only when the user allows it because they change the recipe, a frozen vision tower and
no EMA. The trades are tried as a ladder, each rung keeping every trade below it and adding the next one
(so compute only rises along it, and memory falls up to the accumulation rungs, which come last because
they keep a second gradient buffer); the planner compiles rungs (abstractly: nothing is allocated),
binary-searches the monotone part for the first that fits and walks the accumulation rungs after it. Each
rung's extra FLOPs come from an analytic count of the model's matmuls (the compiled cost analysis does not
see inside ``lax.scan``).

With ``measure_steps`` the planner also times a few fitting variants (layers unrolled, remat everywhere) on
this machine and keeps the fastest: on a CPU, a smaller working set can beat fewer FLOPs.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Sequence
from typing import Literal

from pi0cli.errors import Pi0Error
from pi0cli.models.config import Pi0Config, RematPolicy
from pi0cli.training.config import TrainConfig
from pi0cli.training.peaks import format_bytes

GiB = 2**30
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
          "g": GiB, "gb": 10**9, "gib": GiB, "t": 2**40, "tb": 10**12, "tib": 2**40}
#: tokens per MLP chunk when the planner chunks MLPs.
MLP_CHUNK = 256

DTypeName = Literal["float32", "bfloat16"]



class PlanError(Pi0Error):
    """No plan fits the memory budget (or the budget cannot be read)."""


def parse_bytes(text: str) -> int:
    """``"24GiB"``, ``"24 GB"``, ``"16g"``, ``"512MiB"`` -> bytes (``g``/``GiB`` are powers of two, ``GB`` of ten)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise PlanError(f"memory budget {text!r} is not a size; write it like 24GiB, 16GB or 512MiB")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


@dataclasses.dataclass(frozen=True)
class Plan:
    """The memory-relevant knobs of a train config."""

    remat_llm: RematPolicy = "none"
    remat_vision: RematPolicy = "none"
    mlp_chunk: int | None = None
    scan: bool = True
    grad_accum_steps: int = 1
    moment_dtype: DTypeName = "float32"
    ema_dtype: DTypeName = "float32"
    ema: bool = True
    freeze_vision: bool = False
    fsdp_devices: int = 1

    @classmethod
    def of(cls, config: TrainConfig) -> Plan:
        m = config.model
        return cls(remat_llm=m.llm_remat, remat_vision=m.vision_remat, mlp_chunk=m.mlp_chunk, scan=m.scan,
                   grad_accum_steps=config.grad_accum_steps, moment_dtype=config.moment_dtype,
                   ema_dtype=config.ema_dtype, ema=config.ema_decay is not None, freeze_vision=config.freeze_vision,
                   fsdp_devices=config.fsdp_devices)

    def apply(self, config: TrainConfig) -> TrainConfig:
        """``config`` with this plan's knobs."""
        model = dataclasses.replace(config.model, remat_llm=self.remat_llm, remat_vision=self.remat_vision,
                                    mlp_chunk=self.mlp_chunk, scan=self.scan)
        return dataclasses.replace(
            config, model=model, grad_accum_steps=self.grad_accum_steps, moment_dtype=self.moment_dtype,
            ema_dtype=self.ema_dtype, ema_decay=config.ema_decay if self.ema else None,
            freeze_vision=self.freeze_vision, fsdp_devices=self.fsdp_devices,
        )

    def describe(self) -> list[tuple[str, str]]:
        """(knob, setting) rows for printing."""
        return [
            ("remat (language model / vision)", f"{self.remat_llm} / {self.remat_vision}"),
            ("MLP token chunks", "off" if self.mlp_chunk is None else f"{self.mlp_chunk} tokens"),
            ("layers", "lax.scan" if self.scan else "unrolled"),
            ("gradient accumulation", f"{self.grad_accum_steps} micro-batch(es)"),
            ("Adam moments", self.moment_dtype),
            ("EMA", self.ema_dtype if self.ema else "off"),
            ("vision tower", "frozen" if self.freeze_vision else "trained"),
            ("FSDP devices", str(self.fsdp_devices)),
        ]


@dataclasses.dataclass(frozen=True)
class PlanResult:
    """The chosen plan, the config it gives, and the compiled evidence."""

    plan: Plan
    config: TrainConfig
    budget_bytes: int
    peak_bytes: int
    #: extra FLOPs per step relative to the same config without any remat or chunking (negative: fewer)
    extra_flops: float
    backend: str
    backend_note: str
    #: every plan compiled on the way, with its peak per device
    compiled: tuple[tuple[Plan, int], ...]
    #: steps/s of the measured variants, when measured
    measured: tuple[tuple[Plan, float], ...] = ()

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.budget_bytes


# --------------------------------------------------------------------------------------------------- FLOPs
def _module_flops(model: Pi0Config, batch: int) -> dict[str, float]:
    """Forward matmul FLOPs per step: vision, language model (all of it), its MLPs, and its attention."""
    v = model.siglip
    n_img = len(model.image_keys) * batch
    t_img = model.tokens_per_image
    vision_attention = n_img * v.depth * 4 * t_img**2 * v.width
    vision = n_img * v.depth * 2 * t_img * (4 * v.width**2 + 2 * v.width * v.mlp_dim) + vision_attention
    total = model.prefix_len + model.suffix_len
    mlp = attn_proj = 0.0
    for cfg, tokens in ((model.vlm, model.prefix_len), (model.expert, model.suffix_len)):
        heads = cfg.num_heads * cfg.head_dim
        attn_proj += 2 * batch * tokens * cfg.depth * cfg.width * (2 * heads + 2 * cfg.num_kv_heads * cfg.head_dim)
        mlp += 2 * batch * tokens * cfg.depth * 3 * cfg.width * cfg.mlp_dim
    vlm = model.vlm
    attention = 4 * batch * total * total * vlm.num_heads * vlm.head_dim * vlm.depth
    return {"vision": float(vision), "vision_attention": float(vision_attention), "llm": mlp + attn_proj + attention,
            "mlp": mlp, "attention": float(attention)}


def step_flops(config: TrainConfig) -> float:
    """Matmul FLOPs of one train step without remat: forward, and a backward of twice the forward through
    trained modules (once through the frozen LLM of a LoRA run: input gradients only)."""
    f = _module_flops(config.model, config.batch_size)
    vision_back = 0.0 if config.freeze_vision else 2.0
    llm_back = 2.0 if config.freeze == "full" else 1.0
    return f["vision"] * (1 + vision_back) + f["llm"] * (1 + llm_back)


def extra_flops(config: TrainConfig, plan: Plan) -> float:
    """Extra FLOPs of ``plan`` as a fraction of ``config``'s step without remat or chunking."""
    base = step_flops(config)
    f = _module_flops(config.model, config.batch_size)
    planned = step_flops(dataclasses.replace(config, freeze_vision=plan.freeze_vision))
    vision_trains = not plan.freeze_vision
    recompute = {"none": 0.0, "dots": f["attention"], "nothing": f["llm"]}[plan.remat_llm]
    if vision_trains:
        recompute += {"none": 0.0, "dots": f["vision_attention"], "nothing": f["vision"]}[plan.remat_vision]
    if plan.mlp_chunk is not None:
        recompute += f["mlp"]
    return (planned + recompute - base) / base


# ---------------------------------------------------------------------------------------------------- ladder
def ladder(
    config: TrainConfig, *, devices: int, allow_freeze_vision: bool = False, allow_drop_ema: bool = False
) -> list[Plan]:
    """The rungs from the fastest plan to the leanest; each adds one trade to the one before.

    The first rung is ``config``'s own plan (a preset's token-chunked MLPs, micro-batches, bfloat16 moments and
    EMA, frozen vision tower, devices are its recipe and stay) with remat off: remat is what the ladder
    chooses. Later rungs only add trades: finer chunks or fewer micro-batches are never proposed."""
    plan = dataclasses.replace(Plan.of(config), remat_llm="none", remat_vision="none")
    rungs = [plan]

    def add(**changes: object) -> None:
        nonlocal plan
        new = dataclasses.replace(plan, **changes)  # type: ignore[arg-type]
        if new != plan:
            plan = new
            rungs.append(plan)

    if devices > 1 and config.fsdp_devices == 1:
        add(fsdp_devices=devices)
    if plan.ema:
        add(ema_dtype="bfloat16")
    add(moment_dtype="bfloat16")
    if allow_freeze_vision:
        add(freeze_vision=True)
    if allow_drop_ema and plan.ema:
        add(ema=False)
    if plan.mlp_chunk is None:
        add(mlp_chunk=MLP_CHUNK)
    if not plan.freeze_vision:
        add(remat_vision="dots")
        add(remat_vision="nothing")
    # No "dots" rung for the language model: saving its projections (the 16k-wide MLP ones included) took
    # more memory than saving everything did (full pi0 at batch 32: 89.5 vs 84.6 GiB).
    add(remat_llm="nothing")
    # Accumulation comes last: it keeps a second gradient buffer (a whole model's worth in a full fine-tune),
    # so it saves memory only once the activations outweigh the gradients.
    for n in (2, 4, 8, 16, 32, 64):
        if n > plan.grad_accum_steps and config.batch_size % (n * devices) == 0:
            add(grad_accum_steps=n)
    return rungs


def _compile_peak(config: TrainConfig) -> tuple[int, str, str]:
    from pi0cli.training.dryrun import dry_run

    report = dry_run(config)
    return report.peak_bytes, report.backend, report.backend_note


def plan_memory(
    config: TrainConfig,
    budget_bytes: int,
    *,
    allow_freeze_vision: bool = False,
    allow_drop_ema: bool = False,
    measure_steps: int = 0,
    on_compile: Callable[[Plan, int], None] | None = None,
    compile_peak: Callable[[TrainConfig], tuple[int, str, str]] = _compile_peak,
) -> PlanResult:
    """The first rung of ``ladder(config)`` whose compiled peak per device fits ``budget_bytes``.

    ``on_compile(plan, peak)`` reports each compilation (they take a while for full-size models). Raises
    PlanError, naming the leanest peak, when even the last rung does not fit. With ``measure_steps > 0`` the
    fitting plan and a few fitting variants are trained for that many steps on random data and the fastest wins
    (allocates: for models this machine can run).
    """
    import jax

    rungs = ladder(config, devices=jax.device_count(), allow_freeze_vision=allow_freeze_vision,
                   allow_drop_ema=allow_drop_ema)
    peaks: dict[int, int] = {}
    backend = note = ""

    def peak(i: int) -> int:
        nonlocal backend, note
        if i not in peaks:
            peaks[i], backend, note = compile_peak(rungs[i].apply(config))
            if on_compile is not None:
                on_compile(rungs[i], peaks[i])
        return peaks[i]

    # Memory falls monotonically up to the first rung that adds accumulation: binary search there, then walk the
    # rest (the first rung may already accumulate: a preset's own micro-batches).
    monotone = next((i for i, r in enumerate(rungs) if r.grad_accum_steps > rungs[0].grad_accum_steps),
                    len(rungs)) - 1
    chosen = -1
    if peak(0) <= budget_bytes:
        chosen = 0
    elif peak(monotone) <= budget_bytes:
        lo, hi = 0, monotone  # peak(lo) > budget >= peak(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if peak(mid) <= budget_bytes:
                hi = mid
            else:
                lo = mid
        chosen = hi
    else:
        chosen = next((i for i in range(monotone + 1, len(rungs)) if peak(i) <= budget_bytes), -1)
    if chosen < 0:
        hints = [] if allow_freeze_vision or config.freeze_vision else ["--allow-freeze-vision"]
        hints += [] if allow_drop_ema or config.ema_decay is None else ["--allow-no-ema"]
        leanest = min(peaks.values())
        raise PlanError(
            f"{config.name}: no plan fits {format_bytes(budget_bytes)} per device; the leanest of {len(peaks)} "
            f"compiled needs {format_bytes(leanest)}. Use a smaller --batch-size, more devices"
            + (f", or allow {' / '.join(hints)}" if hints else "")
        )
    plan = rungs[chosen]
    measured: tuple[tuple[Plan, float], ...] = ()
    if measure_steps > 0:
        candidates = [plan, dataclasses.replace(plan, scan=False)]
        if plan.remat_llm != "nothing" or plan.remat_vision != "nothing":
            lean = dataclasses.replace(plan, remat_llm="nothing", remat_vision="nothing")
            candidates += [lean, dataclasses.replace(lean, scan=False)]
        fitting = []
        for candidate in candidates:
            p = peaks[chosen] if candidate == plan else compile_peak(candidate.apply(config))[0]
            if p <= budget_bytes:
                fitting.append((candidate, p))
        measured = tuple((c, measure_speed(c.apply(config), measure_steps)) for c, _ in fitting)
        plan, _ = max(measured, key=lambda item: item[1])
        peaks_by_plan = dict(fitting)
        chosen_peak = peaks_by_plan[plan]
    else:
        chosen_peak = peaks[chosen]
    return PlanResult(
        plan=plan, config=plan.apply(config), budget_bytes=budget_bytes, peak_bytes=chosen_peak,
        extra_flops=extra_flops(config, plan), backend=backend, backend_note=note,
        compiled=tuple((rungs[i], p) for i, p in sorted(peaks.items())), measured=measured,
    )


def measure_speed(config: TrainConfig, steps: int, *, repeats: int = 3) -> float:
    """Steps per second of ``config``'s train step on random data (best of ``repeats`` runs of ``steps``)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from pi0cli.training import trainer
    from pi0cli.training.dryrun import abstract_batch

    model = trainer.build_model(config.model, config.seed)
    static, state, tx = trainer.init_train_state(config, model)
    step = jax.jit(trainer.make_train_step(static, tx, config.ema_decay, grad_accum_steps=config.grad_accum_steps),
                   donate_argnums=0)
    rng = np.random.default_rng(0)

    def random(spec: jax.ShapeDtypeStruct) -> jax.Array:
        if spec.dtype == jnp.bool_:
            return jnp.ones(spec.shape, bool)
        if jnp.issubdtype(spec.dtype, jnp.integer):
            return jnp.asarray(rng.integers(0, 100, spec.shape), spec.dtype)
        return jnp.asarray(rng.normal(size=spec.shape), spec.dtype)

    batch = jax.tree.map(random, abstract_batch(config, config.batch_size))
    state, metrics = step(state, batch)  # compile
    jax.block_until_ready(metrics)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        best = max(best, steps / (time.perf_counter() - start))
    return best


def plan_rows(result: PlanResult) -> Sequence[tuple[str, str]]:
    """What ``pi0 train --memory-budget`` prints."""
    rows = [("budget / device", format_bytes(result.budget_bytes)),
            ("peak / device", format_bytes(result.peak_bytes)),
            ("extra FLOPs", f"{result.extra_flops:+.0%} of a step without remat"),
            ("backend", result.backend_note)]
    rows += result.plan.describe()
    rows.append(("plans compiled", str(len(result.compiled))))
    return rows
