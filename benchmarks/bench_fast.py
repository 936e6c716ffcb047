"""pi0-FAST benchmark: KV-cached decoding against uncached decoding, tokens per chunk, full-size memory.

Usage: python benchmarks/bench_fast.py [--quick] [--skip-full] [--repeats N] [--json PATH]

1. Tiny pi0-FAST on this CPU, batch 1: latency of ``sample_actions`` (prefill once, one token per step from
   the KV cache) against the baseline measured in the same run: the same greedy decoding with a full
   uncached forward of the prompt and every token so far at each step (what decoding costs without a cache).
   Both decode the same number of tokens (EOS never stops them early: random weights) and must agree.
2. FAST tokens per chunk: a FAST tokenizer fitted on scripted ALOHA transfer-cube chunks (simulated, no
   rendering; skipped without the aloha plugin), against the raw DCT coefficients it compresses.
3. Constrained decoding (``fast_decode="constrained"``) against free decoding of the same tiny model, batch 1
   and 4, the same number of tokens: the constraint's cost per decode step as a ratio.
4. Full-size pi0-FAST (gemma_2b + SigLIP So400m/14, bfloat16, batch 1, 250 prompt tokens, 256 decoding
   steps): ``sample_actions`` lowered and compiled from abstract inputs; XLA's memory analysis (nothing
   allocated; on a CPU, an estimate of the CPU's program). Then one LoRA train step (pi0_fast_lora, batch 1)
   the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_model import interleaved  # noqa: E402  (same folder: scripts run as benchmarks/NAME.py)

from pi0cli.models import config as C  # noqa: E402
from pi0cli.models.observation import Observation  # noqa: E402
from pi0cli.models.params import count_params  # noqa: E402
from pi0cli.models.pi0_fast import Pi0FAST  # noqa: E402

GiB = 1024**3


def fast_obs(cfg: C.Pi0Config, batch: int, prompt_len: int, *, abstract: bool = False) -> Observation:
    h, w, length = *cfg.image_resolution, cfg.token_len
    if abstract:
        spec = jax.ShapeDtypeStruct
        return Observation(
            images={k: spec((batch, h, w, 3), jnp.float32) for k in cfg.image_keys},
            image_masks={k: spec((batch,), jnp.bool_) for k in cfg.image_keys},
            state=spec((batch, cfg.action_dim), jnp.float32),
            tokenized_prompt=spec((batch, length), jnp.int32), tokenized_prompt_mask=spec((batch, length), jnp.bool_),
            token_ar_mask=spec((batch, length), jnp.int32),
        )
    valid = jnp.arange(length)[None, :] < prompt_len
    return Observation(
        images={k: jnp.zeros((batch, h, w, 3)) for k in cfg.image_keys},
        image_masks={k: jnp.ones(batch, bool) for k in cfg.image_keys},
        state=jnp.zeros((batch, cfg.action_dim)),
        tokenized_prompt=jnp.broadcast_to(jnp.where(valid, 5, 0), (batch, length)).astype(jnp.int32),
        tokenized_prompt_mask=jnp.broadcast_to(valid, (batch, length)),
        token_ar_mask=jnp.zeros((batch, length), jnp.int32),
    )


def tiny_latency(repeats: int, steps: int, prompt_len: int) -> dict:
    cfg = C.preset("pi0_fast_tiny", max_token_len=prompt_len + steps)
    model = Pi0FAST(cfg, nnx.Rngs(0))
    obs = fast_obs(cfg, 1, prompt_len)

    cached = nnx.jit(lambda m, o: m.sample_actions(jax.random.key(0), o, max_decoding_steps=steps))

    @nnx.jit
    def uncached(m, o):
        # Greedy decoding without a cache: each step runs the whole sequence (prompt + tokens so far) again.
        def step(i, carry):
            tokens, mask, ar, out = carry
            logits = m.token_logits(None, Observation(o.images, o.image_masks, o.state, tokens, mask, ar))
            token = jnp.argmax(logits[:, prompt_len + i - 1], axis=-1).astype(jnp.int32)
            pos = prompt_len + i
            return (tokens.at[:, pos].set(token), mask.at[:, pos].set(True), ar.at[:, pos].set(1),
                    out.at[:, i].set(token))

        init = (o.tokenized_prompt, o.tokenized_prompt_mask, o.token_ar_mask, jnp.zeros((1, steps), jnp.int32))
        return jax.lax.fori_loop(0, steps, step, init)[3]

    res: dict = {"config": f"pi0_fast_tiny @ {cfg.image_resolution}", "prompt_tokens": prompt_len,
                 "decoded_tokens": steps, "prefix_tokens": len(cfg.image_keys) * cfg.tokens_per_image + prompt_len}
    res.update(interleaved({"cached": lambda: cached(model, obs), "uncached_baseline": lambda: uncached(model, obs)},
                            repeats))
    res["speedup_cached_vs_uncached(median)"] = res["uncached_baseline"]["median_ms"] / res["cached"]["median_ms"]
    res["same_tokens"] = bool(np.array_equal(np.asarray(cached(model, obs)), np.asarray(uncached(model, obs))))
    return res


def constrained_cost(repeats: int, batch: int, horizon: int = 10, dim: int = 7) -> dict:
    """Constrained decoding against free decoding of the same tiny model, same run, calls interleaved.

    The decoding budget is the grammar's fewest steps for a chunk, so the constrained loop runs every step (it
    must take the shortest chunk) and so does the free one (random weights never emit EOS): both decode the
    same number of tokens, and the ratio is the constraint's cost per decode step (prefill included in both)."""
    from pi0cli.models.fast_tokenizer import FastActionTokenizer
    from pi0cli.models.tokenizer import FAST_SKIP_TOKENS, FASTTokenizer, PaligemmaTokenizer
    from pi0cli.training.tiny_tokenizer import train_tiny_tokenizer

    chunks = np.clip(np.random.default_rng(0).normal(0, 0.4, (200, horizon, dim)), -1, 1)
    fast = FastActionTokenizer.fit(list(chunks), vocab_size=400)
    prompt_len = 16
    prompt = PaligemmaTokenizer(prompt_len, train_tiny_tokenizer())
    tok = FASTTokenizer(prompt, fast, max_len=prompt_len, vocab_size=1024)
    assert prompt.vocab_size + 1 + FAST_SKIP_TOKENS + fast.vocab_size <= 1024
    steps = tok.chunk_grammar(horizon, dim, 10_000).min_steps
    grammar = tok.chunk_grammar(horizon, dim, steps)
    cfg = C.preset("pi0_fast_tiny", max_token_len=prompt_len)
    model = Pi0FAST(cfg, nnx.Rngs(0))
    obs = fast_obs(cfg, batch, prompt_len)

    free = nnx.jit(lambda m, o: m.generate(jax.random.key(0), o, max_decoding_steps=steps))
    constrained = nnx.jit(lambda m, o: m.generate(jax.random.key(0), o, max_decoding_steps=steps, grammar=grammar))
    res: dict = {"config": f"pi0_fast_tiny @ {cfg.image_resolution}", "batch": batch,
                 "chunk": f"{horizon}x{dim}", "fast_vocab": fast.vocab_size, "decoded_tokens": steps}
    res["steps_run"] = {"free": int(free(model, obs).steps), "constrained": int(constrained(model, obs).steps)}
    res.update(interleaved({"free": lambda: free(model, obs).tokens,
                            "constrained": lambda: constrained(model, obs).tokens}, repeats))
    res["constrained_vs_free(median)"] = res["constrained"]["median_ms"] / res["free"]["median_ms"]
    out = np.asarray(constrained(model, obs).tokens)
    res["decode_failures"] = sum(not tok.extract_actions(row, horizon, dim)[1] for row in out)
    return res


def tokens_per_chunk(episodes: int, horizon: int) -> dict:
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        from pi0_embodiment_aloha.sim.scripted import run_script
    except ImportError as exc:
        return {"skipped": f"aloha plugin unavailable ({exc})"}
    from pi0cli.models.fast_tokenizer import FastActionTokenizer, evaluate, quantization_error_bound

    runs = [run_script("transfer_cube", seed)[0] for seed in range(episodes)]
    chunks = np.concatenate([np.stack([r[t : t + horizon] for t in range(len(r) - horizon + 1)]) for r in runs])
    flat = chunks.reshape(-1, chunks.shape[-1])
    q01, q99 = np.quantile(flat, 0.01, axis=0), np.quantile(flat, 0.99, axis=0)
    norm = (chunks - q01) / (q99 - q01 + 1e-6) * 2 - 1
    fit, held = norm[: len(norm) * 3 // 4], norm[len(norm) * 3 // 4 :]
    tok = FastActionTokenizer.fit(list(fit), vocab_size=1024)
    out = {"episodes": episodes, "horizon": horizon, "action_dim": int(chunks.shape[-1]),
           "bound": quantization_error_bound(horizon, tok.scale)}
    for name, part in (("fitted", fit), ("held_out", held)):
        r = evaluate(tok, list(part))
        out[name] = {"chunks": r.chunks, "tokens_per_chunk": r.mean_tokens, "dct_coefficients": r.raw_coefficients,
                     "compression": r.compression, "max_abs_error": r.max_abs_error,
                     "mean_abs_error": r.mean_abs_error, "decode_failures": r.decode_failures}
    return out


def full_size(steps: int) -> dict:
    cfg = C.preset("pi0_fast", dtype="bfloat16", param_dtype="bfloat16", remat=False)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Pi0FAST(cfg, nnx.Rngs(0))))
    out: dict = {"params": count_params(state),
                 "param_bytes_GiB": sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)) / GiB}
    obs = fast_obs(cfg, 1, cfg.token_len, abstract=True)

    def sample(st, o):
        return nnx.merge(graphdef, st).sample_actions(jax.random.key(0), o, max_decoding_steps=steps)

    t0 = time.perf_counter()
    compiled = jax.jit(sample).lower(state, obs).compile()
    out["compile_s"] = round(time.perf_counter() - t0, 1)
    mem = compiled.memory_analysis()
    out["memory_GiB"] = {n: getattr(mem, f"{n}_size_in_bytes") / GiB for n in ("argument", "output", "temp", "alias")}
    out["memory_GiB"]["peak_estimate(argument+output+temp-alias)"] = (
        mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes - mem.alias_size_in_bytes
    ) / GiB
    prefix = len(cfg.image_keys) * cfg.tokens_per_image + cfg.token_len
    vlm = cfg.vlm
    out["kv_cache_GiB"] = 2 * vlm.depth * (prefix + steps) * vlm.num_kv_heads * vlm.head_dim * 2 / GiB
    return out


def full_size_lora_train_step(batch: int) -> dict:
    """One AdamW step of pi0_fast_lora (rank-16 adapters train in float32, the frozen LLM in bfloat16, SigLIP
    trains as the reference's freeze filter leaves it), compiled from abstract inputs with remat."""
    import optax

    from pi0cli.models.freeze import freeze_mode_for, trainable_filter

    cfg = C.preset("pi0_fast_lora", dtype="bfloat16", param_dtype="float32", remat=True)
    model = nnx.eval_shape(lambda: Pi0FAST(cfg, nnx.Rngs(0)))
    graphdef, trainable, frozen = nnx.split(model, trainable_filter(freeze_mode_for(cfg)), ...)
    frozen = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16), frozen)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(2.5e-5, b1=0.9, b2=0.95, weight_decay=1e-10))
    opt_state = jax.eval_shape(tx.init, trainable)
    length = cfg.token_len
    spec = jax.ShapeDtypeStruct
    obs = dataclasses.replace(fast_obs(cfg, batch, length, abstract=True),
                              token_loss_mask=spec((batch, length), jnp.bool_))

    def step(trainable, frozen, opt_state, obs):
        def loss_fn(t):
            return jnp.mean(nnx.merge(graphdef, t, frozen).compute_loss(jax.random.key(0), obs, train=True))

        loss, grads = jax.value_and_grad(loss_fn)(trainable)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss

    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 2)).lower(trainable, frozen, opt_state, obs).compile()
    mem = compiled.memory_analysis()
    return {
        "batch": batch, "compile_s": round(time.perf_counter() - t0, 1),
        "trainable_params": count_params(trainable), "frozen_params": count_params(frozen),
        "memory_GiB": {n: getattr(mem, f"{n}_size_in_bytes") / GiB for n in ("argument", "output", "temp", "alias")},
        "peak_estimate_GiB(argument+output+temp-alias)": (mem.argument_size_in_bytes + mem.output_size_in_bytes
                                                          + mem.temp_size_in_bytes - mem.alias_size_in_bytes) / GiB,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few repeats, no full-size compile")
    ap.add_argument("--skip-full", action="store_true", help="skip the full-size compile (minutes on CPU)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--steps", type=int, default=32, help="tokens decoded by the tiny model")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    repeats = 3 if args.quick else args.repeats
    results: dict = {"jax": jax.__version__, "backend": jax.default_backend()}
    results["tiny_decoding"] = tiny_latency(repeats, args.steps, prompt_len=16)
    print(json.dumps(results["tiny_decoding"], indent=2), flush=True)
    results["constrained_decoding"] = [constrained_cost(repeats, batch) for batch in (1, 4)]
    print(json.dumps(results["constrained_decoding"], indent=2), flush=True)
    results["tokens_per_chunk"] = tokens_per_chunk(2 if args.quick else 10, horizon=10)
    print(json.dumps(results["tokens_per_chunk"], indent=2), flush=True)
    if not (args.quick or args.skip_full):
        results["full_size"] = full_size(256)
        print(json.dumps(results["full_size"], indent=2), flush=True)
        results["full_size_lora_train_step"] = full_size_lora_train_step(batch=1)
        print(json.dumps(results["full_size_lora_train_step"], indent=2), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
