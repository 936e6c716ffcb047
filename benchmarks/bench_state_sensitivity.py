"""Benchmark: how much a policy's chunk changes when its state is a little off the demonstration's.

On a scene the policy trained on (a recorded demonstration), at each chunk start ``t = 0, H, 2H, ...``:

- replayed: the simulator is driven by the demonstration's own actions up to ``t`` and the policy is asked
  there (its inputs are the recorded ones, up to video compression);
- closed loop: the policy drives from the start, executing its own chunks, and is asked at the same ``t``.

It reports the state difference between the two at ``t`` and each chunk's error against the recorded chunk
(maximum absolute difference, robot units). A policy that reads its state smoothly answers a slightly different
state with a slightly different chunk; pi0-FAST, which reads its state as discretised text, answered a state
0.03 rad off the demonstration's with a chunk 1.2 rad off (docs/benchmarks.md, "pi0-FAST with state dropout"):

    .venv/bin/python benchmarks/bench_state_sensitivity.py --checkpoint STEP_DIR --demos DEMOS --chunks 3
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_rollout_smoothness import add_policy_arguments, simulated_checkpoint  # noqa: E402


def rollout_observations(simulator: Any, task: str, seed: int, steps: int, act: Any,
                         wanted: set[int]) -> dict[int, Any]:
    """Drive ``simulator`` with ``act(step, obs)`` and keep the observations of the steps in ``wanted``."""
    kept: dict[int, Any] = {}
    counter = iter(range(steps))

    def policy(obs: Any) -> np.ndarray:
        step = next(counter)
        if step in wanted:
            kept[step] = obs
        return act(step, obs)

    for _ in simulator.rollout(task, seed, policy, max_steps=steps):
        pass
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a step directory (aloha_sim)")
    parser.add_argument("--demos", required=True, help="the LeRobot dataset it trained on")
    parser.add_argument("--episode", type=int, default=0, help="the demonstration (its scene is its seed)")
    parser.add_argument("--chunks", type=int, default=3)
    add_policy_arguments(parser)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from pi0cli.evaluation.offline import open_frames
    from pi0cli.policy import load_policy

    emb, simulator, horizon = simulated_checkpoint(args.checkpoint)
    frames = open_frames(args.demos, emb, horizon, [args.episode])
    seed = int(args.episode)  # `pi0 record --scripted` starts at seed 0 and the scripts succeed every scene
    starts = [k * horizon for k in range(args.chunks)]
    steps = starts[-1] + 1
    recorded = np.stack([np.asarray(frames[i]["action"][0]) for i in range(steps)])
    policy = load_policy(args.checkpoint, embodiment=emb, batch_sizes=(1,), fast_decode=args.fast_decode,
                         state_input=args.state_input)
    task = simulator.task(None).name

    replayed = rollout_observations(simulator, task, seed, steps, lambda step, obs: recorded[step], set(starts))
    current: dict[str, np.ndarray] = {}

    def own(step: int, obs: Any) -> np.ndarray:
        if step % horizon == 0:
            current["chunk"] = np.asarray(policy.infer(obs)["actions"])
        return current["chunk"][step % horizon]

    closed = rollout_observations(simulator, task, seed, steps, own, set(starts))
    rows = []
    for t in starts:
        want = np.asarray(frames[t]["action"])
        from_replay = np.asarray(policy.infer(replayed[t])["actions"])[:horizon]
        from_closed = np.asarray(policy.infer(closed[t])["actions"])[:horizon]
        off = np.abs(np.asarray(closed[t]["state"]) - np.asarray(replayed[t]["state"]))
        rows.append({
            "t": t,
            "state_difference_max": float(off.max()),
            "chunk_error_replayed_max": float(np.abs(from_replay - want).max()),
            "chunk_error_closed_loop_max": float(np.abs(from_closed - want).max()),
        })
        r = rows[-1]
        print(f"t={t:4d}: state off by {r['state_difference_max']:.3f}; chunk error (max, robot units) replayed "
              f"{r['chunk_error_replayed_max']:.3f}, closed loop {r['chunk_error_closed_loop_max']:.3f}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"checkpoint": str(args.checkpoint), "episode": args.episode,
                                        "state_input": args.state_input, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
