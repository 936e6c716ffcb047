"""Benchmark: how smooth a policy's executed actions are in closed loop, against its demonstrations.

A policy that tracks recorded states well offline can still fail in closed loop because what it executes there
is not what it was shown. This runs the policy on unseen ``aloha_sim`` scenes, keeps every chunk it answered,
and reports in the robot's units (radians, gripper units), beside the same measures over the demonstrations:

- the mean absolute step ``|a[t+1] - a[t]|`` within chunks and at the boundaries between chunks (demonstrations:
  every step);
- each chunk's mean step in episode order, so a policy that starts smoothly and then goes wild shows where;
- how far outside the demonstrations' range per dimension the executed actions go.

It is what found pi0-FAST's closed-loop failure mode (docs/benchmarks.md, "pi0-FAST with state dropout"):

    .venv/bin/python benchmarks/bench_rollout_smoothness.py --checkpoint STEP_DIR --demos DEMOS \\
        --episodes 3 --out smoothness.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")  # Mesa EGL (llvmpipe): headless, no GPU
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class RecordingPolicy:
    """Passes calls through to a policy and keeps every chunk it answered (``episodes[-1]``: the current one)."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.episodes: list[list[np.ndarray]] = []

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        reply = self.inner.infer(obs)
        self.episodes[-1].append(np.asarray(reply["actions"], np.float64))
        return reply

    def reset(self) -> None:
        getattr(self.inner, "reset", lambda: None)()


def simulated_checkpoint(checkpoint: Path) -> tuple[Any, Any, int]:
    """``(embodiment, simulator, action horizon)`` of a step directory trained for a simulated robot."""
    from pi0cli.checkpoint import read_checkpoint_config
    from pi0cli.plugins.manager import load_registry

    saved = read_checkpoint_config(checkpoint) or {}
    registry = load_registry({})
    emb = registry.embodiment(saved.get("embodiment") or "aloha_sim")
    simulator = registry.simulator_for(emb.name)
    if simulator is None:
        raise SystemExit(f"embodiment {emb.name!r} has no simulator")
    return emb, simulator, int(saved.get("model", {}).get("action_horizon", emb.open_loop_steps))


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """The decoding and state-input options both closed-loop diagnostics take."""
    parser.add_argument("--fast-decode", default="constrained")
    parser.add_argument("--state-input", default=None, help="visible or hidden (default: the checkpoint's)")


def demo_actions(root: Path) -> list[np.ndarray]:
    """Each recorded episode's actions ``[T, D]`` (the parquet ``action`` column, split by episode)."""
    import pyarrow.parquet as pq

    episodes: dict[int, list[Any]] = {}
    for path in sorted(root.glob("data/*/*.parquet")):
        table = pq.read_table(path, columns=["episode_index", "action"]).to_pydict()
        for ep, action in zip(table["episode_index"], table["action"], strict=True):
            episodes.setdefault(int(ep), []).append(action)
    if not episodes:
        raise SystemExit(f"{root} has no data/*/*.parquet: pass a LeRobot dataset root as --demos")
    return [np.asarray(v, np.float64) for _, v in sorted(episodes.items())]


def measure(chunks_per_episode: list[list[np.ndarray]], executed: int) -> dict[str, Any]:
    within = [np.abs(np.diff(c[:executed], axis=0)).mean() for ep in chunks_per_episode for c in ep]
    bounds = [np.abs(ep[i + 1][0] - ep[i][executed - 1]).mean()
              for ep in chunks_per_episode for i in range(len(ep) - 1)]
    return {"mean_step_within_chunks": float(np.mean(within)), "mean_step_at_boundaries": float(np.mean(bounds)),
            "per_chunk_mean_step": [[round(float(np.abs(np.diff(c[:executed], axis=0)).mean()), 4) for c in ep]
                                    for ep in chunks_per_episode]}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a step directory (aloha_sim)")
    parser.add_argument("--demos", type=Path, required=True, help="the LeRobot dataset it trained on")
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1000, help="first scene (recordings start at 0: unseen)")
    add_policy_arguments(parser)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from pi0cli.evaluation import closed_loop
    from pi0cli.policy import load_policy

    emb, simulator, horizon = simulated_checkpoint(args.checkpoint)
    executed = min(horizon, 50)
    policy: Any = RecordingPolicy(load_policy(args.checkpoint, embodiment=emb, batch_sizes=(1,),
                                         fast_decode=args.fast_decode, state_input=args.state_input))
    seeds = list(range(args.seed, args.seed + args.episodes))
    successes = 0
    for seed in seeds:  # one at a time, so each episode's chunks stay apart
        policy.episodes.append([])
        successes += closed_loop.evaluate(simulator, emb, simulator.task(None).name, [seed], policy,
                                          open_loop_steps=executed, out=None, provenance={}, videos=False)["successes"]
    episodes = policy.episodes
    demos = demo_actions(args.demos)
    low, high = np.min([d.min(0) for d in demos], axis=0), np.max([d.max(0) for d in demos], axis=0)
    executed_actions = np.concatenate([c[:executed] for ep in episodes for c in ep])
    outside = np.maximum(executed_actions - high, low - executed_actions).clip(0)
    result = {
        "checkpoint": str(args.checkpoint), "seeds": seeds, "successes": successes,
        "executed_per_chunk": executed, "fast_decode": args.fast_decode, "state_input": args.state_input,
        "policy": measure(episodes, executed),
        "demos_mean_step": float(np.mean([np.abs(np.diff(d, axis=0)).mean() for d in demos])),
        "outside_demo_range": {"share_of_values": float((outside > 0).mean()), "max": float(outside.max())},
    }
    p = result["policy"]
    print(f"{successes}/{len(seeds)} successes; mean |step| within chunks {p['mean_step_within_chunks']:.4f}, at "
          f"chunk boundaries {p['mean_step_at_boundaries']:.4f}; demonstrations {result['demos_mean_step']:.4f}; "
          f"{100 * result['outside_demo_range']['share_of_values']:.1f}% of executed values outside the "
          f"demonstrations' range (at most {result['outside_demo_range']['max']:.2f} beyond)")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
