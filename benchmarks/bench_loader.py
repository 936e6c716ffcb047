"""Benchmark: data-loader throughput (samples/s with images decoded and transformed) and peak memory.

Baseline, measured in the same run: the same samples read one after another in the main thread
(``dataset[i]`` then the training pipeline). Then the loader with thread workers and with process workers.
Peak memory is the peak resident set size of this process (and of the worker processes, reported apart).
Every loader runs once per round, ``--repeats`` rounds in alternation, and each rate and ratio is the median over
the rounds: one pair of short runs on a shared machine swings by tens of percent. ``--out`` writes the JSON.

    .venv/bin/python benchmarks/bench_loader.py            # libero (2 cameras), 20 episodes x 50 frames, 224px
    .venv/bin/python benchmarks/bench_loader.py --quick    # 20 episodes x 10 frames, 96px

Mixture: the same loader over a two-dataset mixture (the dataset above and a second one of ``--mixture-with``,
default the same robot so that the frames cost the same to decode; same episodes, frames and image size; weights
1:1, each through its own pipeline), thread workers, as a ratio of the single-dataset thread rate of the same run
(``--no-mixture`` skips it). Another robot (``--mixture-with metaworld``: one camera, not two) changes the decode
work per frame too, so its ratio is not the mixture's overhead alone.

LeRobot: what a LeRobot user runs instead, measured in the same run (``--no-lerobot`` skips it): lerobot's own
``LeRobotDataset`` over the same dataset on disk (the action column as chunks of ``--horizon`` via
``delta_timestamps``, as lerobot's pi0 asks for them; lerobot's default video backend, which it prints) in a
``torch.utils.data.DataLoader`` built as ``lerobot-train`` builds it (``--workers`` spawned worker processes,
prefetch factor 4, default collate), fed the same batches of the same frames in the same order. Its rate is
measured as the loader's (the first ``--workers`` + 1 batches are warm-up), and ``ours / lerobot`` is printed
for the thread and the process workers. The work per sample is not the same: lerobot's items are float32
images at the dataset's size, actions and state unnormalised and the task a string (lerobot's pi0 resizes,
normalises and tokenises later, in its preprocessor), while ours include pi0's whole input pipeline (resize to
224 px, normalisation, tokenisation). ``main`` returns every rate and ratio as a dict.

Reader: ours reads a local v3.0 dataset through the direct reader (:mod:`pi0cli.data.direct`: numeric columns
once in numpy, video containers kept open per thread), which gives the items ``LeRobotDataset`` gives. The row
``thread_via_lerobot`` is the same thread loader reading through ``LeRobotDataset`` instead (``direct=False``,
what ours did before), in the same rounds, so ``direct_speedup`` is what the direct reader buys
(``--no-reader-compare`` skips it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux: KiB


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--embodiment", default="libero")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--horizon", type=int, default=10)
    parser.add_argument("--mixture-with", default=None, help="second robot of the mixture (default: the same)")
    parser.add_argument("--no-mixture", action="store_true")
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds of every loader (medians reported)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--no-lerobot", action="store_true", help="skip lerobot's LeRobotDataset + torch DataLoader")
    parser.add_argument("--no-reader-compare", action="store_true",
                        help="skip our thread loader reading through LeRobotDataset instead of the direct reader")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    frames = args.frames or (10 if args.quick else 50)
    size = args.image_size or (96 if args.quick else 224)
    steps = args.steps or (12 if args.quick else 30)

    logging.getLogger("lerobot.utils.import_utils").setLevel(logging.ERROR)
    from pi0cli.data.lerobot import LeRobotFrames
    from pi0cli.data.loader import DataLoader
    from pi0cli.data.stats import compute_norm_stats
    from pi0cli.data.synthetic import write_synthetic_dataset
    from pi0cli.models.config import preset
    from pi0cli.models.tokenizer import PaligemmaTokenizer
    from pi0cli.pipeline import Pipeline
    from pi0cli.plugins.manager import get_registry
    from pi0cli.training.tiny_tokenizer import train_tiny_tokenizer
    from pi0cli.transforms import stack_trees

    emb = get_registry().embodiment(args.embodiment)
    model = dataclasses.replace(preset("pi0"), action_horizon=args.horizon)  # 224x224, action_dim 32
    with tempfile.TemporaryDirectory(prefix="pi0-bench-") as tmp:
        os.environ.setdefault("HF_LEROBOT_HOME", str(Path(tmp) / "home"))
        t0 = time.perf_counter()
        root = write_synthetic_dataset(Path(tmp) / "ds", emb, episodes=args.episodes, frames=frames,
                                       image_size=(size, size), seed=0)
        print(f"wrote {args.episodes} episodes x {frames} frames of {size}px video in {time.perf_counter() - t0:.1f} s")
        pipe = Pipeline.create(emb, model, compute_norm_stats(emb, root, horizon=args.horizon),
                               tokenizer=PaligemmaTokenizer(model.token_len, train_tiny_tokenizer()))
        transform = pipe.training_inputs()
        dataset = LeRobotFrames(root, action_key=emb.action_key, action_horizon=args.horizon)
        dataset[0]
        print(f"our reader: {dataset.backend}" + (f" ({dataset.fallback_reason})" if dataset.fallback_reason else ""))
        via_lerobot = None
        if not args.no_reader_compare:
            via_lerobot = LeRobotFrames(root, action_key=emb.action_key, action_horizon=args.horizon, direct=False)
            via_lerobot[0]  # opened before timing, as the direct one was
        rss_start = peak_rss_mib()
        batch = args.batch_size
        n = steps * batch

        loader = DataLoader(dataset, transform, batch_size=batch, seed=0, num_workers=0)
        indices = [i for s in range(steps) for i in loader.order.local_indices(s)]
        t0 = time.perf_counter()
        for s in range(steps):
            stack_trees([transform(dataset[int(i)]) for i in indices[s * batch : (s + 1) * batch]])
        base = n / (time.perf_counter() - t0)
        print(f"baseline (main thread, dataset[i] + pipeline): {base:.1f} samples/s; peak RSS {peak_rss_mib():.0f} MiB")

        # One pair of short runs on a shared machine swings by tens of percent, so every loader runs once per
        # round, the rounds alternate them, and each rate and ratio reported is the median over the rounds.
        rounds: dict[str, list[float]] = {}
        mixture_parts, backend = None, ""
        if not args.no_mixture:
            other = get_registry().embodiment(args.mixture_with or args.embodiment)
            second = write_synthetic_dataset(Path(tmp) / "ds2", other, episodes=args.episodes, frames=frames,
                                             image_size=(size, size), seed=1)
            pipe2 = Pipeline.create(other, model, compute_norm_stats(other, second, horizon=args.horizon),
                                    tokenizer=pipe.tokenizer)
            frames2 = LeRobotFrames(second, action_key=other.action_key, action_horizon=args.horizon)
            frames2[0]  # opened before timing, as the first dataset was: the rates compare reading, not opening
            mixture_parts = [(dataset, transform, emb.action_dim),
                             (frames2, pipe2.training_inputs(), other.action_dim)]
        # LeRobot reads the same frames in the same order as the loaders (same seed), with the same warm-up.
        lerobot_warm = args.workers + 1
        order = DataLoader(dataset, transform, batch_size=batch, seed=0, num_workers=0).order
        lerobot_batches = [order.local_indices(s).tolist() for s in range(steps + lerobot_warm)]
        for _ in range(args.repeats):
            for workers in ("thread", "process"):
                loader = DataLoader(dataset, transform, batch_size=batch, seed=0, num_workers=args.workers,
                                    workers=workers)
                # Steady state: the first batches carry the start-up (process workers import lerobot), so the
                # rate is measured from the batch after the first `prefetch` ones to the last.
                warm = loader.prefetch
                rounds.setdefault(workers, []).append(steady_rate(loader.batches(0, num_steps=steps + warm), warm))
            if via_lerobot is not None:
                loader = DataLoader(via_lerobot, transform, batch_size=batch, seed=0, num_workers=args.workers,
                                    workers="thread")
                rounds.setdefault("thread_via_lerobot", []).append(
                    steady_rate(loader.batches(0, num_steps=steps + loader.prefetch), loader.prefetch))
            if not args.no_lerobot:
                lerobot, backend = lerobot_loader(root, emb.action_key, args.horizon, lerobot_batches, args.workers)
                rounds.setdefault("lerobot", []).append(steady_rate(lerobot, lerobot_warm, key="index"))
                del lerobot  # its persistent workers end with it
            if mixture_parts is not None:
                rounds.setdefault("mixture", []).append(
                    _mixture_rate(mixture_parts, model.action_dim, batch, steps, args.workers))

        def median_ratio(a: str, b: str) -> float:
            return float(np.median([x / y for x, y in zip(rounds[a], rounds[b], strict=True)]))

        results: dict[str, float] = {name: float(np.median(rates)) for name, rates in rounds.items()}
        rss = peak_rss_mib(resource.RUSAGE_CHILDREN)
        for workers in ("thread", "process"):
            extra = f"; worker peak RSS {rss:.0f} MiB" if workers == "process" else ""
            print(f"loader, {args.workers} {workers} workers: {results[workers]:.1f} samples/s = "
                  f"{results[workers] / base:.2f}x baseline; peak RSS {peak_rss_mib():.0f} MiB{extra}")
        if "lerobot" in rounds:
            results["thread_vs_lerobot"] = median_ratio("thread", "lerobot")
            results["process_vs_lerobot"] = median_ratio("process", "lerobot")
            print(f"lerobot LeRobotDataset + torch DataLoader ({backend} decoding), "
                  f"{args.workers} process workers: {results['lerobot']:.1f} samples/s = "
                  f"{results['lerobot'] / base:.2f}x baseline; ours / lerobot: thread workers "
                  f"{results['thread_vs_lerobot']:.2f}x, process workers {results['process_vs_lerobot']:.2f}x")
        if "thread_via_lerobot" in rounds:
            results["direct_speedup"] = median_ratio("thread", "thread_via_lerobot")
            print(f"ours, {args.workers} thread workers reading through LeRobotDataset instead of the direct reader: "
                  f"{results['thread_via_lerobot']:.1f} samples/s; the direct reader is "
                  f"{results['direct_speedup']:.2f}x that")
        if "mixture" in rounds:
            results["mixture_vs_single"] = median_ratio("mixture", "thread")
            print(f"mixture of {emb.name} + {other.name} (1:1), {args.workers} thread workers: "
                  f"{results['mixture']:.1f} samples/s = {results['mixture_vs_single']:.2f}x the single "
                  f"dataset's thread rate")
        print(f"rates are medians of {args.repeats} alternating rounds; each round (samples/s): "
              + "; ".join(f"{k} {', '.join(f'{r:.1f}' for r in v)}" for k, v in rounds.items()))
        image_mib = 3 * model.image_resolution[0] * model.image_resolution[1] * 3 * batch / 2**20
        print(f"memory: main-process peak RSS {peak_rss_mib():.0f} MiB (was {rss_start:.0f} MiB before loading; "
              f"one batch of images is {image_mib:.1f} MiB, at most {args.workers + 1} batches in flight)")
    out = {"baseline": base, **results}
    if args.out is not None:
        meta = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "rounds": rounds, "machine": f"{os.cpu_count()} CPU cores"}
        args.out.write_text(json.dumps({"results": out, **meta}, indent=1) + "\n")
    return out


def steady_rate(batches, warm: int, key: str = "state") -> float:
    """Steady-state samples/s of an iterable of batches: from the arrival of batch ``warm - 1`` to the last one
    (the first batches carry the start-up: pools starting, process workers importing lerobot)."""
    stamps, sizes = [], []
    for b in batches:
        stamps.append(time.perf_counter())
        sizes.append(len(b[key]))
    return sum(sizes[warm:]) / (stamps[-1] - stamps[warm - 1])


def lerobot_loader(root: Path, action_key: str, horizon: int, batches: list[list[int]], workers: int):
    """``(loader, video backend)``: what a LeRobot user would run, a ``torch.utils.data.DataLoader`` over lerobot's
    ``LeRobotDataset`` of the dataset at ``root`` (``action_key`` as chunks of ``horizon`` via delta timestamps,
    lerobot's default video backend) with batches of the frame indices in ``batches``, built as ``lerobot-train``
    builds it (spawned workers, prefetch factor 4, default collate)."""
    import torch

    from pi0cli.data.lerobot import quiet_lerobot_import

    quiet_lerobot_import()
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.utils.import_utils import get_safe_default_video_backend

    fps = json.loads((Path(root) / "meta" / "info.json").read_text())["fps"]
    backend = get_safe_default_video_backend()  # what LeRobotDataset picks when given none
    dataset = LeRobotDataset(f"local/{Path(root).name}", root=root, video_backend=backend,
                             delta_timestamps={action_key: [t / fps for t in range(horizon)]})
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=workers, pin_memory=False,
        prefetch_factor=4 if workers else None, persistent_workers=workers > 0,
        multiprocessing_context="spawn" if workers else None,
    ), backend


def _mixture_rate(parts, model_action_dim: int, batch: int, steps: int, workers: int) -> float:
    """Steady-state samples/s of the loader over a 1:1 mixture of ``parts`` ((frames, transform, action dims))."""
    from pi0cli.data.loader import DataLoader
    from pi0cli.data.mixture import MixtureFrames, MixtureOrder, MixturePart

    frames = MixtureFrames([MixturePart(f, t, dim, model_action_dim) for f, t, dim in parts])
    order = MixtureOrder(frames.sizes, [0.5, 0.5], batch, seed=0)
    loader = DataLoader(frames, None, batch_size=batch, seed=0, num_workers=workers, order=order)
    warm = loader.prefetch
    return steady_rate(loader.batches(0, num_steps=steps + warm), warm)


if __name__ == "__main__":
    main()
