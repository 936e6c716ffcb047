"""What the simulated Meta-World costs and how good its scripted experts are, measured in one run.

    python embodiments/metaworld/benchmarks/bench_metaworld.py [--tasks mt10] [--seeds 20] [--out results.json]

Prints the render time per frame with shadows off (what pi0 uses) and on (the scene's default) as medians of
interleaved rounds, so a busy machine slows both alike; the ratio is the number to compare. Then the physics
step time, and the scripted expert's success over ``--seeds`` placements per task (no rendering).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from pi0_embodiment_metaworld.sim.env import MetaWorldSim
from pi0_embodiment_metaworld.sim.episodes import run_script
from pi0_embodiment_metaworld.tasks import select_tasks


def render_ms(rounds: int = 5, frames: int = 5, task: str = "drawer-open-v3") -> dict[str, float]:
    """Median ms per frame with shadows off and on, the two renderers timed in alternating rounds."""
    times: dict[bool, list[float]] = {False: [], True: []}
    sims = {shadows: MetaWorldSim(task, shadows=shadows) for shadows in (False, True)}
    try:
        for sim in sims.values():
            sim.reset(0)
            sim.render()  # the first frame builds the GL context
        for _ in range(rounds):
            for shadows, sim in sims.items():
                start = time.perf_counter()
                for _ in range(frames):
                    sim.render()
                times[shadows].append((time.perf_counter() - start) / frames * 1000)
    finally:
        for sim in sims.values():
            sim.close()
    off, on = statistics.median(times[False]), statistics.median(times[True])
    return {"shadows_off_ms": round(off, 1), "shadows_on_ms": round(on, 1), "on_over_off": round(on / off, 2)}


def step_ms(steps: int = 500, task: str = "drawer-open-v3") -> float:
    with MetaWorldSim(task) as sim:
        sim.reset(0)
        start = time.perf_counter()
        for _ in range(steps):
            sim.step(np.zeros(4))
        return round((time.perf_counter() - start) / steps * 1000, 3)


def scripted(task: str, seeds: int) -> dict[str, Any]:
    results = [run_script(task, seed) for seed in range(seeds)]
    lengths = [len(actions) for actions, success in results if success]
    return {"successes": len(lengths), "episodes": seeds,
            "mean_steps": round(float(np.mean(lengths)), 1) if lengths else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="mt10", help="task selector: mt10, mt50, easy, ..., or task names")
    parser.add_argument("--seeds", type=int, default=20, help="placements per task for the scripted experts")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    results: dict[str, Any] = {"render": render_ms(), "step_ms": step_ms(), "scripted": {}}
    print(f"render per frame: shadows off {results['render']['shadows_off_ms']} ms, on "
          f"{results['render']['shadows_on_ms']} ms ({results['render']['on_over_off']}x); physics step "
          f"{results['step_ms']} ms", flush=True)
    for task in select_tasks(args.tasks):
        results["scripted"][task] = outcome = scripted(task, args.seeds)
        print(f"{task:32s} scripted {outcome['successes']}/{outcome['episodes']}, {outcome['mean_steps']} steps",
              flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
