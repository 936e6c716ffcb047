"""Benchmark: what masking the padded action dims changes, on a two-robot mixture (ALOHA sim 14 dims + Meta-World 4,
padded to the tiny preset's 32).

Two runs from the same initial weights, the same batches and the same noise: one with the action-dim mask in the
loss (what ``pi0 train --mixture`` does), one without (the reference's loss over all 32 dims). Both are then
scored the same way, on batches drawn with another seed (from the same synthetic episodes: this measures the fit,
not generalisation) with fixed noise and flow times: the flow-matching error on each robot's real action dims
only (what the robot executes). Printed per robot, with the ratio masked / unmasked.

    .venv/bin/python benchmarks/bench_mixture.py                 # 300 steps, batch 8
    .venv/bin/python benchmarks/bench_mixture.py --steps 40      # a quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="pi0_aloha_sim_tiny")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    logging.getLogger("lerobot.utils.import_utils").setLevel(logging.ERROR)
    import jax
    import numpy as np
    from flax import nnx

    from pi0cli.data.lerobot import LeRobotFrames
    from pi0cli.data.mixture import MixtureFrames, MixtureOrder, MixturePart
    from pi0cli.data.stats import compute_norm_stats
    from pi0cli.data.synthetic import write_synthetic_dataset
    from pi0cli.models.observation import Observation
    from pi0cli.models.tokenizer import PaligemmaTokenizer
    from pi0cli.pipeline import Pipeline
    from pi0cli.plugins.manager import get_registry
    from pi0cli.training import trainer
    from pi0cli.training.tiny_tokenizer import train_tiny_tokenizer
    from pi0cli.transforms import stack_trees

    registry = get_registry()
    config = dataclasses.replace(registry.preset(args.preset), batch_size=args.batch_size,
                                 num_train_steps=args.steps, ema_decay=None)
    robots = [registry.embodiment("aloha_sim"), registry.embodiment("metaworld")]
    horizon = config.model.action_horizon
    tasks = ("Transfer cube", "drawer-open", "drawer-close")
    tokenizer = PaligemmaTokenizer(config.model.token_len, train_tiny_tokenizer(list(tasks)))
    with tempfile.TemporaryDirectory(prefix="pi0-bench-mix-") as tmp:
        parts = []
        for i, robot in enumerate(robots):
            root = write_synthetic_dataset(Path(tmp) / robot.name, robot, episodes=args.episodes, frames=args.frames,
                                           image_size=(64, 64), seed=i, tasks=tasks[:1] if i == 0 else tasks[1:])
            stats = compute_norm_stats(robot, root, horizon=horizon)
            pipe = Pipeline.create(robot, config.model, stats, tokenizer=tokenizer)
            frames = LeRobotFrames(root, action_key=robot.action_key, action_horizon=horizon)
            parts.append(MixturePart(frames, pipe.training_inputs(), robot.action_dim, config.model.action_dim))
        data = MixtureFrames(parts)
        order = MixtureOrder(data.sizes, [0.5, 0.5], args.batch_size, config.seed)
        t0 = time.perf_counter()
        train_batches = [stack_trees([data[int(i)] for i in order.global_indices(s)]) for s in range(args.steps)]
        held = MixtureOrder(data.sizes, [0.5, 0.5], args.batch_size, config.seed + 1000)
        eval_batches = [stack_trees([data[int(i)] for i in held.global_indices(s)]) for s in range(args.eval_batches)]
        print(f"{args.steps} training and {args.eval_batches} held-out batches of {args.batch_size} loaded in "
              f"{time.perf_counter() - t0:.1f} s")

    results = {}
    for variant in ("masked", "unmasked"):
        static, state, tx = trainer.init_train_state(config, trainer.build_model(config.model, config.seed))
        step_fn = jax.jit(trainer.make_train_step(static, tx, None, source_names=("aloha_sim", "metaworld")))
        t0 = time.perf_counter()
        for batch in train_batches:
            if variant == "unmasked":
                batch = {k: v for k, v in batch.items() if k != "action_mask"}
            state, metrics = step_fn(state, batch)
        seconds = time.perf_counter() - t0
        model = static.merge(state.params, state.frozen)

        @nnx.jit
        def real_dim_loss(model, batch, key):
            obs = Observation.from_dict(batch)
            per = model.compute_loss(key, obs, batch["actions"], action_mask=batch["action_mask"])
            return per.mean(axis=-1)

        per_robot: dict[str, list[float]] = {r.name: [] for r in robots}
        for i, batch in enumerate(eval_batches):
            losses = np.asarray(real_dim_loss(model, batch, jax.random.key(i)))
            for k, robot in enumerate(robots):
                per_robot[robot.name] += losses[np.asarray(batch["source"]) == k].tolist()
        results[variant] = {name: float(np.mean(v)) for name, v in per_robot.items()}
        results[variant]["train_seconds"] = round(seconds, 1)
        results[variant]["last_train_loss"] = float(metrics["loss"])
        print(f"{variant:>8}: loss on real action dims (other-seed batches) " + ", ".join(
            f"{name} {results[variant][name]:.4f}" for name in per_robot) + f" ({seconds:.0f} s of training)")
    for robot in robots:
        ratio = results["masked"][robot.name] / results["unmasked"][robot.name]
        results.setdefault("ratio_masked_over_unmasked", {})[robot.name] = round(ratio, 4)
        print(f"{robot.name}: masked / unmasked = {ratio:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"steps": args.steps, "batch_size": args.batch_size, **results}, indent=2))


if __name__ == "__main__":
    main()
