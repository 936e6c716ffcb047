"""Closed-loop evaluation in simulation: episodes of any registered :class:`~pi0cli.simulator.Simulator` through
the action-chunk broker, success with a confidence interval, per-episode return, mp4 videos and a JSON report
with provenance."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pi0cli.client.policy import BasePolicy
from pi0cli.models.tokenizer import ACTION_TOKENS_KEY, DECODE_FAILURES_KEY
from pi0cli.simulator import checked
from pi0cli.transforms import lookup, to_uint8_hwc

if TYPE_CHECKING:
    from pi0cli.embodiment import Embodiment
    from pi0cli.evaluation.realtime import Execution
    from pi0cli.simulator import Act, Simulator

REPORT_FILENAME = "report.json"


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a success rate (95% by default); sound for small n and rates near 0 or 1."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclasses.dataclass(frozen=True)
class EpisodeResult:
    seed: int
    success: bool
    episode_return: float
    max_reward: float
    steps: int
    seconds: float
    video: str | None
    # SHA-256 of the executed actions (float32, in order): equal digests mean two evaluations drove the robot
    # identically, e.g. ``--server`` against ``--checkpoint``.
    actions_sha256: str


def play(simulator: Simulator, embodiment: Embodiment, task: str, seed: int, act: Act, *, video: Path | None = None,
         shadows: bool = False, max_steps: int | None = None) -> EpisodeResult:
    """Run one episode of ``simulator`` with ``act`` choosing each action: its return, success, the digest of
    the actions ``act`` returned and (with ``video``) an mp4 of the observation image at ``simulator.video_key``
    (default: the embodiment's first camera). The first frame is checked against the embodiment's contract."""
    video_key = simulator.video_key or (embodiment.cameras[0].key if embodiment.cameras else None)
    images: list[np.ndarray] = []
    total, best, steps, success = 0.0, 0.0, 0, False
    digest = hashlib.sha256()

    def digested(obs: dict[str, Any]) -> np.ndarray:
        action = np.asarray(act(obs), dtype=np.float32)
        digest.update(np.ascontiguousarray(action).tobytes())
        return action

    start = time.perf_counter()
    frames = simulator.rollout(task, seed, digested, shadows=shadows, max_steps=max_steps)
    for frame in checked(frames, simulator, embodiment):
        total += frame["reward"]
        best = max(best, frame["reward"])
        steps += 1
        success = success or frame["success"]
        if video is not None and video_key is not None:
            images.append(to_uint8_hwc(lookup(frame["observation"], video_key)))
    if video is not None and images:
        write_video(video, images, embodiment.control_hz)
    return EpisodeResult(seed, success, total, best, steps, time.perf_counter() - start,
                         str(video) if video is not None and images else None, digest.hexdigest())


def run_episode(simulator: Simulator, embodiment: Embodiment, task: str, seed: int, policy: BasePolicy, *,
                open_loop_steps: int, video: Path | None = None, shadows: bool = False) -> EpisodeResult:
    """One closed-loop episode: the policy is asked for a chunk every ``open_loop_steps`` steps."""
    from pi0cli.client.broker import ActionChunkBroker

    broker = ActionChunkBroker(policy, action_horizon=open_loop_steps)
    return play(simulator, embodiment, task, seed, lambda obs: broker.infer(obs)["actions"], video=video,
                shadows=shadows)


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float) -> None:
    """An H.264 mp4 of uint8 HWC frames (PyAV, no system FFmpeg needed)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = width - width % 2, height - height % 2, "yuv420p"
        for image in frames:
            cropped = np.ascontiguousarray(image[: stream.height, : stream.width])
            frame = av.VideoFrame.from_ndarray(cropped, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def package_versions(extra: Sequence[str] = ()) -> dict[str, str]:
    """Installed versions of pi0, its numerical stack and ``extra`` (e.g. a simulator's packages)."""
    versions = {}
    for name in ("pi0", "jax", "flax", "numpy", "lerobot", *extra):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def _execution_summary(results: Sequence[EpisodeResult], execution: Execution, open_loop_steps: int) -> dict[str, Any]:
    from pi0cli.evaluation.realtime import summary

    return summary(results, execution, open_loop_steps)


class DecodeFailureCounter(BasePolicy):
    """Passes requests through and sums the replies' ``decode_failures`` (pi0-FAST chunks that did not decode
    and were answered with the policy's fallback) and ``action_tokens`` (tokens generated); ``seen`` tells
    whether any reply carried the first."""

    def __init__(self, inner: BasePolicy):
        self.inner, self.decode_failures, self.chunks, self.seen = inner, 0, 0, False
        self.action_tokens = 0

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        reply = self.inner.infer(obs)
        self.chunks += 1
        if DECODE_FAILURES_KEY in reply:
            self.seen = True
            self.decode_failures += int(np.asarray(reply[DECODE_FAILURES_KEY]))
            self.action_tokens += int(np.asarray(reply.get(ACTION_TOKENS_KEY, 0)))
        return reply

    def summary(self) -> dict[str, Any]:
        """The report's pi0-FAST fields (none for a flow-matching policy)."""
        if not self.seen:
            return {}
        return {"decode_failures": self.decode_failures, "chunks": self.chunks,
                "mean_action_tokens": self.action_tokens / max(self.chunks, 1)}

    def reset(self) -> None:
        self.inner.reset()


def evaluate(simulator: Simulator, embodiment: Embodiment, task: str, seeds: Sequence[int], policy: BasePolicy, *,
             open_loop_steps: int, out: Path | None, provenance: dict[str, Any], videos: bool = True,
             on_episode: Callable[[EpisodeResult], None] | None = None, shadows: bool = False,
             execution: Execution | None = None) -> dict[str, Any]:
    """Run every seed of ``task`` in ``simulator`` and return (and write to ``out/report.json``) the report.
    ``execution``: simulated inference latency and an execution strategy (:mod:`pi0cli.evaluation.realtime`)
    instead of the chunk broker; the report then adds smoothness."""
    out = None if out is None else Path(out).absolute()
    policy = counter = DecodeFailureCounter(policy)
    results = []
    for seed in seeds:
        video = out / "videos" / f"episode_{seed:05d}.mp4" if (out is not None and videos) else None
        if execution is None:
            result = run_episode(simulator, embodiment, task, seed, policy, open_loop_steps=open_loop_steps,
                                 video=video, shadows=shadows)
        else:
            from pi0cli.evaluation.realtime import run_realtime_episode

            result = run_realtime_episode(simulator, embodiment, task, seed, policy, execution,
                                          open_loop_steps=open_loop_steps, video=video, shadows=shadows)
        results.append(result)
        if on_episode is not None:
            on_episode(result)
    successes = sum(r.success for r in results)
    low, high = wilson_interval(successes, len(results))
    report = {
        "task": task,
        "episodes": len(results),
        "successes": successes,
        "success_rate": successes / len(results) if results else 0.0,
        "success_rate_ci95": [low, high],
        "mean_return": float(np.mean([r.episode_return for r in results])) if results else 0.0,
        "open_loop_steps": open_loop_steps,
        **counter.summary(),
        "render": {"shadows": shadows},
        **({} if execution is None else _execution_summary(results, execution, open_loop_steps)),
        "per_episode": [dataclasses.asdict(r) for r in results],
        "provenance": {**provenance, "simulator": simulator.name, "seeds": list(seeds),
                       "packages": package_versions(simulator.packages),
                       "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".{REPORT_FILENAME}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(report, indent=2, default=str))
        tmp.replace(out / REPORT_FILENAME)
    return report
