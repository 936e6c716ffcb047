"""Benchmark: scripted ALOHA demonstrations (success rate on seeded episodes) and simulation speed.

Success: the scripted policy (IK-driven, in the joint-space scene used for evaluation) runs on seeds
``0 .. N-1`` without rendering; an episode succeeds when the task reward reaches 4.

Speed, measured in the same run on the same machine (env steps/s, a fixed "hold" action):
  - gym-aloha as shipped: ``gym.make("gym_aloha/AlohaTransferCube-v0", obs_type="pixels_agent_pos")`` renders
    three 640x480 cameras per step (``top``, ``angle``, ``front_close``) and returns one;
  - ``pi0_embodiment_aloha.sim.env.AlohaSim`` rendering only ``top`` (640x480), with shadows (identical images);
  - the same without shadow mapping (``shadows=False``: different images, much cheaper on llvmpipe);
  - physics only (``cameras=()``), what the scripted success check costs.

    .venv/bin/python benchmarks/bench_scripted.py                  # 50 transfer-cube episodes
    .venv/bin/python benchmarks/bench_scripted.py --episodes 10 --speed-steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")  # Mesa EGL (llvmpipe): headless, no GPU, on the Debian image
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def bench_success(task: str, episodes: int, start_seed: int) -> dict:
    from pi0_embodiment_aloha.sim.scripted import run_script
    from pi0cli.evaluation.closed_loop import wilson_interval

    failures, times = [], []
    for seed in range(start_seed, start_seed + episodes):
        t0 = time.perf_counter()
        _, success, max_reward = run_script(task, seed)
        times.append(time.perf_counter() - t0)
        if not success:
            failures.append({"seed": seed, "max_reward": max_reward})
        print(f"  {task} seed {seed}: {'ok' if success else f'FAILED (max reward {max_reward:g})'}"
              f" {times[-1]:.1f}s", flush=True)
    ok = episodes - len(failures)
    low, high = wilson_interval(ok, episodes)
    return {"task": task, "episodes": episodes, "successes": ok, "success_rate": ok / max(episodes, 1),
            "ci95": [low, high], "failures": failures, "seconds_per_episode": sum(times) / max(len(times), 1)}


def steps_per_second(step, reset, steps: int) -> float:
    obs = reset()
    step(obs)  # warm-up: GL context creation, first render
    t0 = time.perf_counter()
    for _ in range(steps):
        step(obs)
    return steps / (time.perf_counter() - t0)


def bench_speed(steps: int) -> dict:
    import gym_aloha  # noqa: F401  (registers the envs)
    import gymnasium as gym
    import numpy as np

    from pi0_embodiment_aloha.sim.env import AlohaSim

    results = {}
    env = gym.make("gym_aloha/AlohaTransferCube-v0", obs_type="pixels_agent_pos")
    hold = {}

    def reset_gym():
        obs, _ = env.reset(seed=0)
        hold["a"] = np.asarray(obs["agent_pos"])
        return obs

    results["gym_aloha_default_3_cameras"] = steps_per_second(lambda _: env.step(hold["a"]), reset_gym, steps)
    env.close()
    for name, kwargs, n in (
        ("pi0_top_only", {"cameras": ("top",)}, steps),
        ("pi0_top_only_no_shadows", {"cameras": ("top",), "shadows": False}, steps * 3),
        ("pi0_physics_only", {"cameras": ()}, steps * 20),
    ):
        with AlohaSim("transfer_cube", max_steps=10**6, **kwargs) as sim:
            def reset_sim(sim=sim):
                obs = sim.reset(seed=0)
                hold["a"] = obs["agent_pos"].copy()
                return obs

            results[name] = steps_per_second(lambda _, sim=sim: sim.step(hold["a"]), reset_sim, n)
    base = results["gym_aloha_default_3_cameras"]
    return {"steps_per_second": results,
            "ratio_vs_gym_aloha": {k: v / base for k, v in results.items() if k != "gym_aloha_default_3_cameras"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=50, help="seeded episodes per task (default 50)")
    parser.add_argument("--start-seed", type=int, default=0)
    parser.add_argument("--task", action="append", choices=["transfer_cube", "insertion"],
                        help="task(s) to run the script on (default: every task with a scripted policy)")
    parser.add_argument("--speed-steps", type=int, default=30, help="steps timed per rendering setting")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    from pi0_embodiment_aloha.sim.scripted import PLANNERS

    tasks = args.task or list(PLANNERS)
    report: dict = {"episodes": args.episodes, "cpu_count": os.cpu_count(), "mujoco_gl": os.environ["MUJOCO_GL"]}
    for task in tasks:
        print(f"scripted {task}: {args.episodes} seeded episodes from seed {args.start_seed}", flush=True)
        result = bench_success(task, args.episodes, args.start_seed)
        report[f"scripted_{task}"] = result
        low, high = result["ci95"]
        print(f"scripted {task}: {result['successes']}/{result['episodes']} = {result['success_rate']:.0%} "
              f"(95% CI {low:.0%}-{high:.0%}), {result['seconds_per_episode']:.1f} s/episode headless")
    if not args.skip_speed:
        print(f"speed: {args.speed_steps} steps per setting", flush=True)
        speed = bench_speed(args.speed_steps)
        report["speed"] = speed
        for name, value in speed["steps_per_second"].items():
            ratio = speed["ratio_vs_gym_aloha"].get(name)
            print(f"  {name:32s} {value:8.1f} steps/s" + (f"  ({ratio:.1f}x gym-aloha)" if ratio else ""))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
