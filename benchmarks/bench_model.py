"""Model benchmark: full-size pi0 compiled memory and FLOPs (abstract, nothing allocated) and tiny-model latency.

Usage: python benchmarks/bench_model.py [--skip-full] [--skip-flops] [--repeats N] [--json PATH]

1. Full-size pi0 (gemma_2b + gemma_300m + SigLIP So400m/14), bfloat16 weights and compute, batch 1, 3 cameras:
   ``sample_actions`` is lowered and compiled from ``jax.ShapeDtypeStruct`` inputs; XLA's memory analysis is
   reported. FLOPs per chunk come from XLA's cost analysis of the prefix pass plus ``num_steps`` times one
   denoising step, each compiled with the layers unrolled (cost analysis counts a loop body once, so the
   scanned/while-looped program would undercount).
2. Tiny config on this CPU: latency of ``sample_actions`` with the prefix KV cache, against the same Euler
   integration without the cache (full prefix+suffix forward per step) measured in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pi0cli.models import config as C  # noqa: E402
from pi0cli.models.observation import Observation  # noqa: E402
from pi0cli.models.params import count_params  # noqa: E402
from pi0cli.models.pi0 import Pi0  # noqa: E402

GiB = 1024**3


def abstract_obs(cfg: C.Pi0Config, batch: int) -> Observation:
    h, w = cfg.image_resolution
    f32, b = jnp.float32, jnp.bool_
    return Observation(
        images={k: jax.ShapeDtypeStruct((batch, h, w, 3), f32) for k in cfg.image_keys},
        image_masks={k: jax.ShapeDtypeStruct((batch,), b) for k in cfg.image_keys},
        state=jax.ShapeDtypeStruct((batch, cfg.action_dim), f32),
        tokenized_prompt=jax.ShapeDtypeStruct((batch, cfg.token_len), jnp.int32),
        tokenized_prompt_mask=jax.ShapeDtypeStruct((batch, cfg.token_len), b),
    )


def abstract_model(cfg: C.Pi0Config):
    model = nnx.eval_shape(lambda: Pi0(cfg, nnx.Rngs(0)))
    return nnx.split(model)


def _flops(compiled) -> float:
    ca = compiled.cost_analysis()
    if isinstance(ca, list):  # older JAX returned one dict per computation
        ca = ca[0]
    return float(ca.get("flops", float("nan")))


def full_size(num_steps: int, do_flops: bool) -> dict:
    out: dict = {}
    cfg = C.preset("pi0", dtype="bfloat16", param_dtype="bfloat16", remat=False)
    graphdef, state = abstract_model(cfg)
    out["params"] = count_params(state)
    out["param_bytes_GiB"] = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)) / GiB
    obs = abstract_obs(cfg, 1)
    noise = jax.ShapeDtypeStruct((1, cfg.action_horizon, cfg.action_dim), jnp.float32)

    def sample(st, o, n):
        return nnx.merge(graphdef, st).sample_actions(None, o, num_steps=num_steps, noise=n)

    t0 = time.perf_counter()
    compiled = jax.jit(sample).lower(state, obs, noise).compile()
    out["compile_s_sample_actions"] = round(time.perf_counter() - t0, 1)
    mem = compiled.memory_analysis()
    out["memory_GiB"] = {
        name: getattr(mem, f"{name}_size_in_bytes") / GiB
        for name in ("argument", "output", "temp", "alias", "generated_code")
        if hasattr(mem, f"{name}_size_in_bytes")
    }
    out["memory_GiB"]["peak_estimate(argument+output+temp-alias)"] = (
        mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes - mem.alias_size_in_bytes
    ) / GiB
    out["flops_sample_actions_as_compiled(loops counted once)"] = _flops(compiled)
    del compiled

    if do_flops:
        ucfg = dataclasses.replace(cfg, scan=False)
        ugraph, ustate = abstract_model(ucfg)

        def prefill(st, o):
            m = nnx.merge(ugraph, st)
            return m.prefill(m.preprocess(None, o, False))

        t0 = time.perf_counter()
        pc = jax.jit(prefill).lower(ustate, obs).compile()
        prefix_mask, cache = jax.eval_shape(prefill, ustate, obs)
        f_prefix = _flops(pc)
        del pc

        def one_step(st, o, pm, kv, x):
            m = nnx.merge(ugraph, st)
            return m._velocity_cached(m.preprocess(None, o, False), pm, kv, x, jnp.float32(1.0))

        sc = jax.jit(one_step).lower(ustate, obs, prefix_mask, cache, noise).compile()
        f_step = _flops(sc)
        out["compile_s_flops_programs"] = round(time.perf_counter() - t0, 1)
        out["flops_prefix"] = f_prefix
        out["flops_denoise_step"] = f_step
        out["flops_per_chunk"] = f_prefix + num_steps * f_step
        out["kv_cache_GiB"] = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache)) / GiB
    return out


def _time(fn, *args, repeats: int) -> dict:
    jax.block_until_ready(fn(*args))  # compile + warm up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return {"median_ms": statistics.median(ts) * 1e3, "min_ms": min(ts) * 1e3}


def interleaved(fns: dict, repeats: int) -> dict:
    """Median/min wall time of each zero-argument fn, calls interleaved so load changes hit all alike."""
    for fn in fns.values():
        jax.block_until_ready(fn())  # compile + warm up
    ts = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            ts[k].append(time.perf_counter() - t0)
    return {k: {"median_ms": statistics.median(v) * 1e3, "min_ms": min(v) * 1e3} for k, v in ts.items()}


def tiny_latency(repeats: int, num_steps: int, resolution: tuple[int, int]) -> dict:
    cfg = C.preset("pi0_tiny", image_resolution=resolution)
    model = Pi0(cfg, nnx.Rngs(0))
    h, w = cfg.image_resolution
    obs = Observation(
        images={k: jnp.zeros((1, h, w, 3)) for k in cfg.image_keys},
        image_masks={k: jnp.ones(1, bool) for k in cfg.image_keys},
        state=jnp.zeros((1, cfg.action_dim)),
        tokenized_prompt=jnp.ones((1, cfg.token_len), jnp.int32),
        tokenized_prompt_mask=jnp.ones((1, cfg.token_len), bool),
    )
    noise = jnp.ones((1, cfg.action_horizon, cfg.action_dim))
    cached = nnx.jit(lambda m, o, n: m.sample_actions(None, o, num_steps=num_steps, noise=n))
    full = nnx.jit(lambda m, o, n: m.sample_actions(None, o, num_steps=num_steps, noise=n, use_kv_cache=False))
    res = {"config": f"pi0_tiny @ {h}x{w}", "num_steps": num_steps, "prefix_tokens": cfg.prefix_len,
           "suffix_tokens": cfg.suffix_len}
    res.update(interleaved({"cached": lambda: cached(model, obs, noise),
                             "uncached_baseline": lambda: full(model, obs, noise)}, repeats))
    res["speedup_cached_vs_uncached(median)"] = res["uncached_baseline"]["median_ms"] / res["cached"]["median_ms"]
    res["speedup_cached_vs_uncached(min)"] = res["uncached_baseline"]["min_ms"] / res["cached"]["min_ms"]
    a, b = cached(model, obs, noise), full(model, obs, noise)
    res["max_abs_diff_cached_vs_uncached"] = float(jnp.abs(a - b).max())
    return res


def tiny_train_step(repeats: int, batch: int = 8) -> dict:
    """One AdamW step (loss, grads, update) of the tiny pi0 at batch 8, jitted."""
    import optax

    cfg = C.preset("pi0_tiny")
    model = Pi0(cfg, nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adamw(1e-4), wrt=nnx.Param)
    h, w = cfg.image_resolution
    obs = Observation(
        images={k: jnp.zeros((batch, h, w, 3)) for k in cfg.image_keys},
        image_masks={k: jnp.ones(batch, bool) for k in cfg.image_keys},
        state=jnp.zeros((batch, cfg.action_dim)),
        tokenized_prompt=jnp.ones((batch, cfg.token_len), jnp.int32),
        tokenized_prompt_mask=jnp.ones((batch, cfg.token_len), bool),
    )
    actions = jnp.ones((batch, cfg.action_horizon, cfg.action_dim))

    @nnx.jit
    def step(model, opt, obs, actions, key):
        loss, grads = nnx.value_and_grad(lambda m: m.compute_loss(key, obs, actions, train=True).mean())(model)
        opt.update(model, grads)
        return loss

    return {"config": "pi0_tiny", "batch": batch,
            **_time(lambda k: step(model, opt, obs, actions, k), jax.random.key(0), repeats=repeats)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-full", action="store_true", help="skip the full-size compile (minutes on CPU)")
    ap.add_argument("--skip-flops", action="store_true", help="skip the unrolled FLOPs programs")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--num-steps", type=int, default=10)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    results = {"jax": jax.__version__, "backend": jax.default_backend(), "devices": str(jax.devices())}
    results["tiny"] = tiny_latency(args.repeats, args.num_steps, (32, 32))
    # the same tiny network on 96x96 images: a longer prefix (3 * 144 image tokens), where caching matters
    results["tiny_96px"] = tiny_latency(args.repeats, args.num_steps, (96, 96))
    results["tiny_train_step"] = tiny_train_step(args.repeats)
    print(json.dumps({k: results[k] for k in ("tiny", "tiny_96px", "tiny_train_step")}, indent=2), flush=True)
    if not args.skip_full:
        results["full_pi0_bf16"] = full_size(args.num_steps, not args.skip_flops)
        print(json.dumps({"full_pi0_bf16": results["full_pi0_bf16"]}, indent=2), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
