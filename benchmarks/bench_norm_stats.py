"""Benchmark: `pi0 norm-stats` (parquet columns only) against iterating the same LeRobot dataset frame by frame.

The baseline is what a frame-by-frame statistics script does: ``LeRobotDataset(..., delta_timestamps)`` and
``dataset[i]`` for every frame (videos decoded with PyAV, action chunks of the horizon). Both run in this process
on one dataset written by lerobot's writer (>= 20 episodes with video); the ratio of frames/s is printed.

    .venv/bin/python benchmarks/bench_norm_stats.py            # 24 episodes x 100 frames, 3 cameras
    .venv/bin/python benchmarks/bench_norm_stats.py --quick    # 20 episodes x 20 frames
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run (20 episodes of 20 frames)")
    parser.add_argument("--embodiment", default="aloha")
    parser.add_argument("--episodes", type=int, default=None)
    parser.add_argument("--frames", type=int, default=None, help="frames per episode")
    parser.add_argument("--horizon", type=int, default=50)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--baseline-frames", type=int, default=None,
                        help="frames the dataset[i] baseline reads (default: all in --quick, else 400)")
    parser.add_argument("--dataset", type=Path, default=None, help="use this dataset instead of writing one")
    args = parser.parse_args()
    episodes = args.episodes or 20 if args.quick else args.episodes or 24
    frames = args.frames or (20 if args.quick else 100)

    from pi0cli.data.stats import compute_norm_stats
    from pi0cli.data.synthetic import write_synthetic_dataset
    from pi0cli.plugins.manager import get_registry

    emb = get_registry().embodiment(args.embodiment)
    with tempfile.TemporaryDirectory(prefix="pi0-bench-") as tmp:
        root = args.dataset
        if root is None:
            os.environ.setdefault("HF_LEROBOT_HOME", str(Path(tmp) / "home"))
            t0 = time.perf_counter()
            root = write_synthetic_dataset(Path(tmp) / "ds", emb, episodes=episodes, frames=frames,
                                           image_size=(args.image_size, args.image_size), seed=0)
            cameras = len([c for c in emb.cameras if c.key in emb.dataset_keys])
            print(f"wrote {episodes} episodes x {frames} frames ({cameras}"
                  f" video cameras, {args.image_size}px) in {time.perf_counter() - t0:.1f} s", flush=True)

        # pi0 norm-stats: two exact passes over the parquet columns.
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            compute_norm_stats(emb, root, horizon=args.horizon)
            runs.append(time.perf_counter() - t0)
        from pi0cli.data.lerobot import read_numeric

        total = len(read_numeric(root, [emb.action_key])["index"])
        ours = total / min(runs)
        print(f"pi0 norm-stats: {total} frames in {min(runs):.3f} s (best of 3) = {ours:,.0f} frames/s", flush=True)

        # Baseline: lerobot dataset[i], frame by frame.
        logging.getLogger("lerobot.utils.import_utils").setLevel(logging.ERROR)
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        fps = LeRobotDataset("local/bench", root=root, video_backend="pyav").fps
        dataset = LeRobotDataset("local/bench", root=root, video_backend="pyav",
                                 delta_timestamps={emb.action_key: [t / fps for t in range(args.horizon)]})
        n = min(len(dataset), args.baseline_frames or (len(dataset) if args.quick else 400))
        dataset[0]  # warm-up (opens files)
        t0 = time.perf_counter()
        for i in range(n):
            dataset[i]
        base_s = time.perf_counter() - t0
        base = n / base_s
        print(f"baseline dataset[i]: {n} frames in {base_s:.2f} s = {base:,.1f} frames/s", flush=True)
        ratio = ours / base
        print(f"ratio: {ratio:,.0f}x faster (target >= 50x) {'OK' if ratio >= 50 else 'BELOW TARGET'}")


if __name__ == "__main__":
    main()
