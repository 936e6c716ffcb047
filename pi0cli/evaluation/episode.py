"""One simulated episode played with any action source: its result (success, return, action digest) and the
optional mp4. Shared by the chunk-broker evaluation (:mod:`~pi0cli.evaluation.closed_loop`) and the real-time one
(:mod:`~pi0cli.evaluation.realtime`), which both build on it."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pi0cli.simulator import checked
from pi0cli.transforms import lookup, to_uint8_hwc

if TYPE_CHECKING:
    from pi0cli.embodiment import Embodiment
    from pi0cli.simulator import Act, OptionValue, Simulator


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
         sim_options: Mapping[str, OptionValue] | None = None, max_steps: int | None = None) -> EpisodeResult:
    """Run one episode of ``simulator`` with ``act`` choosing each action: its return, success, the digest of
    the actions ``act`` returned and (with ``video``) an mp4 of the observation image at ``simulator.video_key``
    (default: the embodiment's first camera). The first frame is checked against the embodiment's contract;
    ``sim_options``: the simulator's own settings (:meth:`~pi0cli.simulator.Simulator.parse_options`)."""
    video_key = simulator.video_key or (embodiment.cameras[0].key if embodiment.cameras else None)
    images: list[np.ndarray] = []
    total, best, steps, success = 0.0, 0.0, 0, False
    digest = hashlib.sha256()

    def digested(obs: dict[str, Any]) -> np.ndarray:
        action = np.asarray(act(obs), dtype=np.float32)
        digest.update(np.ascontiguousarray(action).tobytes())
        return action

    start = time.perf_counter()
    frames = simulator.rollout(task, seed, digested, max_steps=max_steps, **(sim_options or {}))
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


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float) -> None:
    """An H.264 mp4 of uint8 HWC frames (PyAV, no system FFmpeg needed)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    from pi0cli.scheduling import keep_scheduling

    with keep_scheduling(), av.open(str(path), mode="w") as container:  # encoders may ask for real-time priority
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = width - width % 2, height - height % 2, "yuv420p"
        for image in frames:
            cropped = np.ascontiguousarray(image[: stream.height, : stream.width])
            frame = av.VideoFrame.from_ndarray(cropped, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
