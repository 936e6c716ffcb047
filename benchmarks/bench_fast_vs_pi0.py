"""Benchmark: pi0-FAST against pi0 on the aloha_sim CPU presets, same data and same training wall-clock.

Given one trained step directory of each model it reports, per model, measured in this run:

- training: steps, the summed time of those steps and steps/s (from the experiment's ``metrics.jsonl``; the
  rate is the median over the logged intervals after the first, which includes compilation);
- closed-loop success with its 95% Wilson interval and mean return on the same seeded scenes, measured as
  ``pi0 eval aloha_sim`` measures it (each model executes its own chunk open loop: its ``--open-loop-steps``);
- inference latency per chunk: median and 90th percentile of every policy call made in those episodes (this
  process, batch 1, the first call after warm-up included);
- pi0-FAST only: tokens generated per chunk and chunks that did not decode (``--fast-decode
  strict,lenient,constrained`` evaluates it once per decoding rule, ``--fast-state-input visible,hidden`` once
  per state input: hidden serves a checkpoint trained with state dropout without its state);
- with ``--heldout DATASET`` (demonstrations the checkpoints never trained on), pi0-FAST's teacher-forced
  next-token accuracy on the action tokens and its exact-chunk rate (every postfix token the argmax), and the
  action MAE against the recorded chunks per decoding rule (pi0 beside it), as ``pi0 eval --dataset`` computes it.

Then the ratios FAST / pi0. How the two checkpoints were trained is the caller's business; docs/benchmarks.md's
numbers come from the recipe there (both presets trained from one recording, concurrently, one core each for
the same wall-clock):

    .venv/bin/python benchmarks/bench_fast_vs_pi0.py \\
        --pi0 runs/b18/checkpoints/pi0_aloha_sim_small/b55/8400 \\
        --fast runs/b18/fast/checkpoints/pi0_fast_aloha_sim_small/b55/6700 \\
        --episodes 20 --fast-decode strict,lenient,constrained --heldout runs/b18/heldout \\
        --out benchmarks/results/fast_vs_pi0.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")  # Mesa EGL (llvmpipe): headless, no GPU
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class TimedPolicy:
    """Passes calls through to a policy and keeps the seconds each ``infer`` took."""

    def __init__(self, inner: Any):
        self.inner, self.seconds = inner, []

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        reply = self.inner.infer(obs)
        self.seconds.append(time.perf_counter() - start)
        return reply

    def reset(self) -> None:
        self.inner.reset()


def training_summary(step_dir: Path) -> dict[str, Any]:
    """Steps, summed step seconds and the median steps/s of the run that wrote ``step_dir``."""
    metrics = step_dir.parent / "metrics.jsonl"
    if not metrics.is_file():
        raise SystemExit(f"{metrics} not found: pass a step directory of a `pi0 train` experiment")
    step = int(step_dir.name)
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["step"] <= step and r.get("steps_per_s")]
    rates = [r["steps_per_s"] for r in rows]
    return {"steps": step, "step_seconds": round(sum(1.0 / r for r in rates), 1),
            "steps_per_s": median_steps_per_s(rates),
            "final_loss": float(np.mean([r["loss"] for r in rows[-100:]]))}


def median_steps_per_s(rates: list[float]) -> float:
    """The median rate over a run's logged intervals after the first (which includes compilation); ``rates`` is
    ``metrics.jsonl``'s per-step ``steps_per_s``, which repeats one value per interval."""
    intervals = [rate for i, rate in enumerate(rates) if i == 0 or rate != rates[i - 1]]
    return statistics.median(intervals[1:] or intervals)


def measure(step_dir: Path, seeds: list[int], open_loop_steps: int | None, fast_decode: str = "strict",
            state_input: str | None = None) -> dict[str, Any]:
    from pi0cli.checkpoint import read_checkpoint_config
    from pi0cli.evaluation import closed_loop
    from pi0cli.plugins.manager import load_registry
    from pi0cli.policy import load_policy

    saved = read_checkpoint_config(step_dir) or {}
    registry = load_registry({})
    emb = registry.embodiment(saved.get("embodiment") or "aloha_sim")
    simulator = registry.simulator_for(emb.name)
    if simulator is None:
        raise SystemExit(f"embodiment {emb.name!r} has no simulator")
    policy: Any = load_policy(step_dir, embodiment=emb, batch_sizes=(1,), fast_decode=fast_decode,
                              state_input=state_input)
    policy.warmup()
    timed = TimedPolicy(policy)
    model = saved.get("model", {})
    steps = open_loop_steps or min(int(model.get("action_horizon", emb.open_loop_steps)), 50)
    start = time.perf_counter()
    report = closed_loop.evaluate(simulator, emb, simulator.task(None).name, seeds, timed, open_loop_steps=steps,
                                  out=None, provenance={}, videos=False)
    ms = np.asarray(timed.seconds) * 1000.0
    result = {
        "checkpoint": str(step_dir), "preset": (saved.get("train_config") or {}).get("name"),
        **({"fast_decode": fast_decode} if model.get("model_type") == "pi0_fast" else {}),
        **({"state_input": state_input} if state_input is not None else {}),
        "model_type": model.get("model_type"), "action_horizon": model.get("action_horizon"),
        "open_loop_steps": steps, "train": training_summary(step_dir),
        "episodes": report["episodes"], "successes": report["successes"], "success_rate": report["success_rate"],
        "success_rate_ci95": report["success_rate_ci95"], "mean_return": report["mean_return"],
        "chunks": len(ms), "latency_ms_median": float(np.median(ms)), "latency_ms_p90": float(np.percentile(ms, 90)),
        "eval_wall_s": round(time.perf_counter() - start, 1),
    }
    if "decode_failures" in report:
        result |= {"decode_failures": report["decode_failures"], "tokens_per_chunk": report["mean_action_tokens"]}
    print(f"{result['preset']}: {result['successes']}/{result['episodes']} successes, "
          f"{result['latency_ms_median']:.1f} ms per chunk, {result['train']['steps_per_s']:.2f} train steps/s "
          f"[{result['eval_wall_s']} s]", file=sys.stderr, flush=True)
    return result


def earlier_pi0(result_json: Path, seeds: list[int]) -> dict[str, Any]:
    """The pi0 row of an earlier run's JSON, refused unless it was measured on the same seeds."""
    earlier = json.loads(result_json.read_text())
    if earlier.get("seeds") != seeds:
        raise SystemExit(f"{result_json} was measured on seeds {earlier.get('seeds')}, not {seeds}: pass the same "
                         "--seed/--episodes, or measure pi0 again with --pi0")
    return {**earlier["pi0"], "measured_in": str(result_json)}


def _heldout_frames(step_dir: Path, dataset: str, episodes: int | None) -> tuple[Any, Any, list[int]]:
    from pi0cli.checkpoint import read_checkpoint_config
    from pi0cli.data.lerobot import resolve_dataset
    from pi0cli.evaluation.offline import episode_indices, open_frames
    from pi0cli.plugins.manager import load_registry

    saved = read_checkpoint_config(step_dir) or {}
    emb = load_registry({}).embodiment(saved.get("embodiment") or "aloha_sim")
    horizon = int(saved.get("model", {}).get("action_horizon", 50))
    _, root = resolve_dataset(dataset)
    chosen = episode_indices(root, episodes, None)
    return emb, open_frames(dataset, emb, horizon, chosen), chosen


def teacher_forced(step_dir: Path, dataset: str, *, episodes: int | None = None, stride: int = 5,
                   batch_size: int = 8, state_input: str | None = None) -> dict[str, Any]:
    """pi0-FAST on held-out demonstrations, teacher forced: the share of postfix tokens (``"Action: "``, the FAST
    ids, ``"|"``, EOS) whose argmax is the recorded chunk's token, and the share of chunks where every one is."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from pi0cli.models.observation import Observation
    from pi0cli.policy.load import load_training_pipeline
    from pi0cli.transforms import stack_trees

    emb, frames, chosen = _heldout_frames(step_dir, dataset, episodes)
    model, pipeline = load_training_pipeline(step_dir, embodiment=emb, state_input=state_input)  # type: ignore[arg-type]
    example = pipeline.training_inputs()
    graphdef, state = nnx.split(model)

    @jax.jit
    def predicted(state: Any, batch: dict[str, Any]) -> jax.Array:
        return jnp.argmax(nnx.merge(graphdef, state).token_logits(None, Observation.from_dict(batch)), axis=-1)

    indices = list(range(0, len(frames), max(1, stride)))
    right = tokens = exact = 0
    for start in range(0, len(indices), batch_size):
        batch = stack_trees([example(frames[i]) for i in indices[start:start + batch_size]])
        guess = np.asarray(predicted(state, batch))
        target, mask = np.asarray(batch["tokenized_prompt"])[:, 1:], np.asarray(batch["token_loss_mask"])[:, 1:]
        hit = (guess == target) & mask
        right, tokens = right + int(hit.sum()), tokens + int(mask.sum())
        exact += int(((guess == target) | ~mask).all(axis=-1).sum())
    return {**({"state_input": state_input} if state_input is not None else {}),
            "episodes": chosen, "chunks": len(indices), "token_accuracy": right / max(tokens, 1),
            "exact_chunk_rate": exact / max(len(indices), 1), "tokens_per_chunk": tokens / max(len(indices), 1)}


def heldout_mae(step_dir: Path, dataset: str, fast_decode: str = "strict", *, episodes: int | None = None,
                stride: int = 5, state_input: str | None = None) -> dict[str, Any]:
    """Action MAE against the recorded chunks of held-out demonstrations (``pi0 eval --dataset``'s measure)."""
    from pi0cli.evaluation.offline import evaluate_offline
    from pi0cli.policy import load_policy

    emb, frames, chosen = _heldout_frames(step_dir, dataset, episodes)
    policy: Any = load_policy(step_dir, embodiment=emb, batch_sizes=(1, 8), fast_decode=fast_decode,
                              state_input=state_input)
    counter = _FailureCounter(policy)
    report = evaluate_offline(frames, counter, emb, stride=stride)
    return {"fast_decode": fast_decode, **({"state_input": state_input} if state_input is not None else {}),
            "episodes": chosen, "mae": report["mae"], "rmse": report["rmse"],
            "frames": report["frames_compared"], "decode_failures": counter.failures}


class _FailureCounter:
    """Passes batches through to a policy and sums the replies' decode failures."""

    def __init__(self, inner: Any):
        self.inner, self.failures = inner, 0

    def infer_batch(self, observations: Sequence[dict[str, Any]], **kwargs: Any) -> list[Any]:
        replies = self.inner.infer_batch(observations, **kwargs)
        self.failures += sum(int(r.get("decode_failures", 0)) for r in replies if isinstance(r, dict))
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def markdown(pi0: dict[str, Any], fast: dict[str, Any], others: Sequence[dict[str, Any]] = ()) -> str:
    lines = ["| model | train steps | step time | steps/s | success (95% CI) | mean return | latency / chunk "
             "(median, p90) | executed / chunk | tokens / chunk |", "|---|---:|---:|---:|---|---:|---|---:|---:|"]
    for r in (pi0, fast, *others):
        low, high = r["success_rate_ci95"]
        name = r["preset"] + (f" ({r['fast_decode']} decoding)" if "fast_decode" in r else "")
        name += f" (state {r['state_input']})" if "state_input" in r else ""
        name += " (earlier run)" if "measured_in" in r else ""
        tokens = f"{r['tokens_per_chunk']:.1f} ({r['decode_failures']} failed)" if "tokens_per_chunk" in r else "-"
        lines.append(f"| {name} | {r['train']['steps']} | {r['train']['step_seconds'] / 60:.1f} min | "
                     f"{r['train']['steps_per_s']:.2f} | {r['successes']}/{r['episodes']} ({low:.0%}-{high:.0%}) | "
                     f"{r['mean_return']:.1f} | {r['latency_ms_median']:.1f} ms, {r['latency_ms_p90']:.1f} ms | "
                     f"{r['open_loop_steps']} | {tokens} |")
    if "measured_in" in pi0:  # another run, maybe another machine: its rates do not divide this run's
        return "\n".join([*lines, "", f"pi0 row from {pi0['measured_in']}: no FAST / pi0 ratios across runs"])
    per_step = {name: r["latency_ms_median"] / r["open_loop_steps"] for name, r in (("pi0", pi0), ("fast", fast))}
    lines += ["", f"FAST / pi0: train steps/s {fast['train']['steps_per_s'] / pi0['train']['steps_per_s']:.2f}x, "
              f"latency per chunk {fast['latency_ms_median'] / pi0['latency_ms_median']:.2f}x, latency per executed "
              f"step {per_step['fast'] / per_step['pi0']:.2f}x"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    pi0_source = parser.add_mutually_exclusive_group(required=True)
    pi0_source.add_argument("--pi0", type=Path, help="a pi0 step directory (pi0_aloha_sim_small)")
    pi0_source.add_argument("--pi0-result", type=Path,
                            help="instead of --pi0: the pi0 row of an earlier run's --out JSON (same seeds, same "
                                 "recipe), so a new pi0-FAST is compared without retraining pi0; marked as such")
    parser.add_argument("--fast", type=Path, required=True, help="a pi0-FAST step directory (pi0_fast_aloha_sim_small)")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1000, help="first scene (recordings start at 0: unseen)")
    parser.add_argument("--pi0-open-loop-steps", type=int, default=None, help="default: its chunk (50 at most)")
    parser.add_argument("--fast-open-loop-steps", type=int, default=None, help="default: its chunk")
    parser.add_argument("--fast-decode", default="strict",
                        help="pi0-FAST token decoding, comma-separated: strict (the reference), lenient, constrained "
                             "(see FastActionOutputs); the first is the one the ratios use")
    parser.add_argument("--fast-state-input", default=None,
                        help="pi0-FAST state input, comma-separated: visible, hidden (a checkpoint trained with state "
                             "dropout, served without its state); default: the checkpoint's; crossed with "
                             "--fast-decode")
    parser.add_argument("--heldout", default=None, help="held-out demonstrations (a LeRobot dataset): teacher-forced "
                                                         "token accuracy and action MAE per decoding rule")
    parser.add_argument("--heldout-episodes", type=int, default=None, help="its last N episodes (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON result here")
    args = parser.parse_args()

    seeds = list(range(args.seed, args.seed + args.episodes))
    modes = [m.strip() for m in args.fast_decode.split(",")]
    pi0 = measure(args.pi0, seeds, args.pi0_open_loop_steps) if args.pi0 is not None else earlier_pi0(
        args.pi0_result, seeds)
    states: list[str | None] = [None]
    if args.fast_state_input:
        states = [s.strip() for s in args.fast_state_input.split(",")]
    fast = [measure(args.fast, seeds, args.fast_open_loop_steps, mode, state) for state in states for mode in modes]
    result = {"seeds": seeds, "pi0": pi0, "fast": fast[0], "fast_other_decoding": fast[1:]}
    if args.heldout is not None:
        n = args.heldout_episodes
        result["heldout"] = {
            "fast_teacher_forced": teacher_forced(args.fast, args.heldout, episodes=n, state_input=states[0]),
            "fast_teacher_forced_other_state": [teacher_forced(args.fast, args.heldout, episodes=n, state_input=state)
                                                for state in states[1:]],
            "pi0_mae": heldout_mae(args.pi0, args.heldout, episodes=n) if args.pi0 is not None else None,
            "fast_mae": [heldout_mae(args.fast, args.heldout, mode, episodes=n, state_input=state)
                         for state in states for mode in modes]}
        print(json.dumps(result["heldout"], indent=2), file=sys.stderr)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    print(markdown(pi0, fast[0], fast[1:]))


if __name__ == "__main__":
    main()
