"""Benchmark: chunk execution strategies under inference latency in simulation (the RTC table of docs/benchmarks.md).

For every latency (ms of simulated "thinking", at the embodiment's control rate) and every strategy
(``sync`` pauses while the policy thinks, ``naive`` switches when a chunk arrives, ``ensemble`` averages
overlapping chunks, ``rtc`` real-time chunking) it runs the same seeded episodes of a checkpoint through
:func:`pi0cli.evaluation.closed_loop.evaluate` with an :class:`~pi0cli.evaluation.realtime.Execution` and
reports: success rate with its 95% Wilson interval, mean and largest action jump at chunk switches, mean
step (the scale of a jump), mean jerk, simulated episode duration (sync's pauses included) and starved
steps. Per latency it adds the ratios the issue's targets are stated in, measured in the same run: RTC's
mean boundary jump over naive's, and whether RTC's and naive's success rates lie in sync's interval.

    # the table in docs/benchmarks.md: a trained small-preset checkpoint (50-step chunks; s = 25 leaves room for
    # 300 ms = 15 steps of delay), 4 latencies x 4 strategies x 20 episodes
    .venv/bin/python benchmarks/bench_rtc.py --checkpoint runs/aloha_small/5000 --open-loop-steps 25 \
        --episodes 20 --out benchmarks/results/rtc.json
    # the same table split over two processes (one per core), then merged into one result
    .venv/bin/python benchmarks/bench_rtc.py --checkpoint DIR --open-loop-steps 25 --latencies 0,100 --out a.json
    .venv/bin/python benchmarks/bench_rtc.py --checkpoint DIR --open-loop-steps 25 --latencies 200,300 --out b.json
    .venv/bin/python benchmarks/bench_rtc.py --merge a.json b.json --out benchmarks/results/rtc.json
    # proof of wiring: a tiny random checkpoint (10-step chunks), a few short episodes
    .venv/bin/python benchmarks/bench_rtc.py --tiny --open-loop-steps 5 --latencies 0,20,60,100 --episodes 2 \
        --max-steps 60
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")  # Mesa EGL (llvmpipe): headless, no GPU
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STRATEGIES = ("sync", "naive", "ensemble", "rtc")


def run(checkpoint: Path, *, embodiment: str | None, task: str | None, latencies: list[float], strategies: list[str],
        episodes: int, seed: int, open_loop_steps: int | None, max_steps: int | None,
        max_guidance: float | None = None) -> dict[str, Any]:
    from pi0cli.checkpoint import read_checkpoint_config
    from pi0cli.evaluation import closed_loop
    from pi0cli.evaluation.realtime import Execution
    from pi0cli.plugins.manager import load_registry
    from pi0cli.policy import load_policy

    registry = load_registry({})
    name = embodiment or (read_checkpoint_config(checkpoint) or {}).get("embodiment")
    if name is None:
        raise SystemExit(f"{checkpoint} does not say which robot it drives; pass --embodiment")
    emb = registry.embodiment(name)
    policy: Any = load_policy(checkpoint, embodiment=emb, batch_sizes=(1,),  # a Policy: infer() like a client
                              rtc_max_guidance=max_guidance)
    simulator = registry.simulator_for(emb.name)
    if simulator is None:
        raise SystemExit(f"embodiment {emb.name!r} has no simulator")
    sim_task = simulator.task(task)
    steps = open_loop_steps or emb.open_loop_steps
    policy.warmup()
    seeds = list(range(seed, seed + episodes))
    rows = []
    if max_steps is not None:  # short episodes: bound the rollout (the library's evaluate runs whole episodes)
        rollout, limit = simulator.rollout, max_steps

        def short(task: str, seed: int, act: Any, *, max_steps: int | None = None, **options: Any) -> Any:
            return rollout(task, seed, act, max_steps=limit if max_steps is None else min(max_steps, limit),
                           **options)

        simulator = dataclasses.replace(simulator, rollout=short)
    for latency in latencies:
        for strategy in strategies:
            start = time.perf_counter()
            report = closed_loop.evaluate(simulator, emb, sim_task.name, seeds, policy, open_loop_steps=steps,
                                          out=None, provenance={}, videos=False,
                                          execution=Execution(strategy, latency))
            row = {"latency_ms": latency, "strategy": strategy, "episodes": report["episodes"],
                   "success_rate": report["success_rate"], "success_rate_ci95": report["success_rate_ci95"],
                   "mean_return": report["mean_return"], "mean_boundary_jump": report["mean_boundary_jump"],
                   "max_boundary_jump": report["max_boundary_jump"], "mean_step": report["mean_step"],
                   "mean_jerk": report["mean_jerk"], "mean_control_seconds": report["mean_control_seconds"],
                   "starved_steps": report["starved_steps"], "wall_s": round(time.perf_counter() - start, 1),
                   "actions_sha256": [e["actions_sha256"] for e in report["per_episode"]]}
            rows.append(row)
            print(f"{latency:>5g} ms {strategy:<8} success {row['success_rate']:.0%}  "
                  f"jump {row['mean_boundary_jump']:.3g} (max {row['max_boundary_jump']:.3g})  "
                  f"jerk {row['mean_jerk']:.3g}  "
                  f"{row['mean_control_seconds']:.2f} s/episode  [{row['wall_s']} s]", file=sys.stderr, flush=True)
    return {"checkpoint": str(checkpoint), "embodiment": emb.name, "task": sim_task.name, "control_hz": emb.control_hz,
            "open_loop_steps": steps, "seeds": seeds, "max_steps": max_steps, "rtc_max_guidance": max_guidance,
            "rows": rows,
            "targets": targets(rows)}


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per latency: RTC's mean boundary jump / naive's, and whether RTC and naive succeed within sync's CI."""
    out = []
    for latency in sorted({r["latency_ms"] for r in rows}):
        by = {r["strategy"]: r for r in rows if r["latency_ms"] == latency}
        entry: dict[str, Any] = {"latency_ms": latency}
        if "rtc" in by and "naive" in by and by["naive"]["mean_boundary_jump"] > 0:
            entry["rtc_over_naive_jump"] = by["rtc"]["mean_boundary_jump"] / by["naive"]["mean_boundary_jump"]
        if "sync" in by:
            low, high = by["sync"]["success_rate_ci95"]
            for name in ("rtc", "naive", "ensemble"):
                if name in by:
                    entry[f"{name}_success_in_sync_ci"] = low <= by[name]["success_rate"] <= high
        out.append(entry)
    return out


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from runs that split the latencies of one checkpoint, seeds and settings (checked equal)."""
    first = results[0]
    for other in results[1:]:
        for key in ("checkpoint", "embodiment", "task", "control_hz", "open_loop_steps", "seeds", "max_steps",
                    "rtc_max_guidance"):
            if other.get(key) != first.get(key):
                raise SystemExit(f"cannot merge runs with different {key}: {first.get(key)!r} vs {other.get(key)!r}")
    rows = sorted((r for result in results for r in result["rows"]),
                  key=lambda r: (r["latency_ms"], STRATEGIES.index(r["strategy"])))
    return {**first, "rows": rows, "targets": targets(rows)}


def markdown(result: dict[str, Any]) -> str:
    lines = ["| latency | strategy | success (95% CI) | boundary jump mean / max | mean step | jerk | s / episode |",
             "|---:|---|---|---|---:|---:|---:|"]
    for r in result["rows"]:
        low, high = r["success_rate_ci95"]
        lines.append(f"| {r['latency_ms']:g} ms | {r['strategy']} | {r['success_rate']:.0%} ({low:.0%}-{high:.0%}) | "
                     f"{r['mean_boundary_jump']:.3g} / {r['max_boundary_jump']:.3g} | {r['mean_step']:.3g} | "
                     f"{r['mean_jerk']:.3g} | {r['mean_control_seconds']:.2f} |")
    ratios = [f"{t['latency_ms']:g} ms: {t['rtc_over_naive_jump']:.2f}" for t in result["targets"]
              if "rtc_over_naive_jump" in t]
    if ratios:
        lines.append("")
        lines.append("RTC mean boundary jump / naive's: " + ", ".join(ratios))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a policy checkpoint of a simulated robot")
    source.add_argument("--tiny", action="store_true", help="a random-weight tiny aloha_sim checkpoint (wiring only)")
    source.add_argument("--merge", type=Path, nargs="+", help="results of runs of one checkpoint split by latency")
    parser.add_argument("--embodiment", default=None)
    parser.add_argument("--task", default=None)
    parser.add_argument("--latencies", default="0,100,200,300", help="ms, comma-separated")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--open-loop-steps", type=int, default=None, help="the execution horizon s")
    parser.add_argument("--max-steps", type=int, default=None, help="cut episodes short (wiring checks only)")
    parser.add_argument("--max-guidance", type=float, default=None, help="RTC's guidance clip (default: 5)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON result here")
    args = parser.parse_args()

    if args.merge:
        result = merge([json.loads(path.read_text()) for path in args.merge])
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2))
        print(markdown(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint
        if args.tiny:
            from pi0cli.plugins.manager import load_registry
            from pi0cli.testing import make_tiny_checkpoint

            checkpoint = make_tiny_checkpoint(Path(tmp) / "tiny", load_registry({}).embodiment("aloha_sim"))
        result = run(checkpoint, embodiment=args.embodiment, task=args.task,
                     latencies=[float(x) for x in args.latencies.split(",")],
                     strategies=[s.strip() for s in args.strategies.split(",")], episodes=args.episodes,
                     seed=args.seed, open_loop_steps=args.open_loop_steps, max_steps=args.max_steps,
                     max_guidance=args.max_guidance)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    print(markdown(result))


if __name__ == "__main__":
    main()
