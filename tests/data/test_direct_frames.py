"""The direct reader (pi0cli.data.direct) gives exactly the items lerobot's LeRobotDataset gives, item for item.

The dataset is written by lerobot itself, with file size limits so small that it spreads over several data
files, several video files per camera (in two chunk directories, some holding several episodes, so frames sit
at an offset in the file) and episodes of different lengths; two cameras; horizons that run past episode ends;
besides the robot's columns, columns of other dtypes (lerobot's items turn float64 into float32, int32 into
int64, and shape-(1,) columns into scalars).
"""

from __future__ import annotations

import json
import pickle
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from datahelpers import embodiment

from pi0cli.data.lerobot import LeRobotFrames

LENGTHS = (9, 5, 7, 3, 6, 4)
ACTION = "actions"


def _write(root: Path) -> Path:
    """A libero dataset (cameras image and wrist_image, 32x32) written by lerobot with tiny file limits."""
    from pi0cli.data.lerobot import quiet_lerobot_import
    from pi0cli.data.synthetic import DEFAULT_TASKS, synthetic_frames
    from pi0cli.data.writer import embodiment_features
    from pi0cli.scheduling import keep_scheduling

    quiet_lerobot_import()
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    emb = embodiment("libero")
    cameras = [c for c in emb.cameras if c.key in emb.dataset_keys]
    assert len(cameras) >= 2
    features = embodiment_features(emb, {c.key: (32, 32) for c in cameras})
    features.update({"next.reward": {"dtype": "float32", "shape": (1,), "names": None},
                     "next.done": {"dtype": "bool", "shape": (1,), "names": None},
                     "wide": {"dtype": "float64", "shape": (3,), "names": None},
                     "count": {"dtype": "int32", "shape": (1,), "names": None}})
    # An episode's video is ~1-1.5 KB and its rows ~2 KB: about two episodes a video file, three a data file.
    dataset = LeRobotDataset.create("local/direct", fps=10, features=features, root=root, robot_type="libero",
                                    video_files_size_in_mb=0.003, data_files_size_in_mb=0.004)
    dataset.meta.update_chunk_settings(chunks_size=2)  # two files a chunk directory
    rng = np.random.default_rng(0)
    with keep_scheduling():
        for episode, length in enumerate(LENGTHS):
            for t, row in enumerate(synthetic_frames(emb, length, rng, (32, 32), cameras)):
                extra = {"next.reward": rng.normal(size=1).astype(np.float32), "next.done": np.array([t == length - 1]),
                         "wide": rng.normal(size=3), "count": np.array([1000 * episode + t], dtype=np.int32)}
                dataset.add_frame({**row, **extra, "task": DEFAULT_TASKS[episode % len(DEFAULT_TASKS)]})
            dataset.save_episode()
        dataset.finalize()
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = _write(tmp_path_factory.mktemp("direct") / "libero")
    videos = sorted((root / "videos" / "image").glob("*/*.mp4"))
    assert len(videos) > 1 and len({v.parent for v in videos}) > 1, videos
    assert len(sorted((root / "data").glob("*/*.parquet"))) > 1
    import pyarrow.parquet as pq

    offsets = pq.read_table(sorted((root / "meta" / "episodes").glob("*/*.parquet"))[0]).column(
        "videos/image/from_timestamp").to_pylist()
    assert any(t > 0 for t in offsets), offsets  # some episode starts inside its video file
    return root


def assert_same_item(ours: dict, reference: dict, where: str) -> None:
    assert list(ours) == list(reference), where  # same keys, in the same order
    for key, expected in reference.items():
        got = ours[key]
        if key == "prompt":  # a string, or a batch's list of strings
            assert type(got) is type(expected) and got == expected, (where, key, got, expected)
            continue
        assert type(got) is type(expected), (where, key, type(got), type(expected))
        assert got.dtype == expected.dtype and got.shape == expected.shape, \
            (where, key, got.dtype, expected.dtype, got.shape, expected.shape)
        assert np.array_equal(got, expected), (where, key)


@pytest.mark.slow
@pytest.mark.parametrize("horizon, episodes, short_seek", [(4, None, True), (None, None, True), (3, [4, 1, 2], True),
                                                        (4, None, False)],
                         ids=["chunks", "single-actions", "episode-subset", "lerobots-seek"])
def test_every_item_equals_lerobots(dataset, horizon, episodes, short_seek, monkeypatch):
    from pi0cli.data import direct

    monkeypatch.setattr(direct, "SHORT_SEEK", short_seek)  # both ways to the frame: the shorter seek and lerobot's
    ours = LeRobotFrames(dataset, action_key=ACTION, action_horizon=horizon, episodes=episodes)
    reference = LeRobotFrames(dataset, action_key=ACTION, action_horizon=horizon, episodes=episodes, direct=False)
    assert ours.backend == "direct", ours.fallback_reason
    assert reference.backend == "lerobot"
    assert len(ours) == len(reference) == (sum(LENGTHS) if episodes is None else
                                           sum(LENGTHS[e] for e in episodes))
    padded = 0
    for i in range(len(reference)):
        expected = reference[i]
        assert_same_item(ours[i], expected, f"item {i}")
        padded += int(expected.get(f"{ACTION}_is_pad", np.zeros(1, bool)).any())
    assert set(expected) >= {"image", "wrist_image", "state", ACTION, "timestamp", "index", "prompt", "wide"}
    assert expected["wide"].dtype == np.float32 and expected["count"].dtype == np.int64
    assert expected["next.done"].shape == () and expected["next.done"].dtype == np.bool_
    if horizon:
        assert padded >= 2 * (len(LENGTHS) if episodes is None else len(episodes))  # chunks ran past episode ends


@pytest.mark.slow
def test_threads_and_processes_read_the_same(dataset):
    from pi0cli.data.loader import DataLoader

    frames = LeRobotFrames(dataset, action_key=ACTION, action_horizon=4, episodes=[0, 2, 5])
    serial = [frames[i] for i in range(len(frames))]
    with ThreadPoolExecutor(4) as pool:  # each thread its own open videos
        for _ in range(2):
            for i, item in enumerate(pool.map(frames.__getitem__, reversed(range(len(frames))))):
                assert_same_item(item, serial[len(frames) - 1 - i], f"thread item {i}")
    state = pickle.dumps(frames)  # after reading: nothing open nor loaded travels
    assert len(state) < 4096
    copy = pickle.loads(state)
    assert copy.backend == "direct"
    for i in (0, len(frames) - 1, 7):
        assert_same_item(copy[i], serial[i], f"unpickled item {i}")
    reference = LeRobotFrames(dataset, action_key=ACTION, action_horizon=4, episodes=[0, 2, 5], direct=False)
    expected = list(DataLoader(reference, None, batch_size=4, seed=1, num_workers=0).batches(0, 3))
    got = list(DataLoader(frames, None, batch_size=4, seed=1, num_workers=1, workers="process").batches(0, 3))
    for step, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert_same_item(a, b, f"process batch {step}")


@pytest.mark.slow
def test_falls_back_to_lerobot_when_it_cannot_promise_the_same_items(dataset, tmp_path, monkeypatch):
    from pi0cli.data.synthetic import write_synthetic_dataset
    from pi0cli.data.writer import embodiment_features

    # Not on this machine: lerobot downloads it (nothing is opened here, so nothing is fetched).
    monkeypatch.setenv("HF_LEROBOT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("PI0_OFFLINE", raising=False)
    remote = LeRobotFrames("someone/not_here", action_key=ACTION)
    assert remote.backend == "lerobot" and "not on this machine" in str(remote.fallback_reason)
    # Another video backend, or turned off.
    other = LeRobotFrames(dataset, action_key=ACTION, video_backend="torchcodec")
    assert other.backend == "lerobot" and "torchcodec" in str(other.fallback_reason)
    assert LeRobotFrames(dataset, action_key=ACTION, direct=False).backend == "lerobot"
    # Another format version.
    newer = tmp_path / "newer"
    shutil.copytree(dataset, newer)
    info = json.loads((newer / "meta" / "info.json").read_text())
    (newer / "meta" / "info.json").write_text(json.dumps({**info, "codebase_version": "v3.1"}))
    newer_frames = LeRobotFrames(newer, action_key=ACTION)
    assert newer_frames.backend == "lerobot" and "'v3.1', not v3.0" in str(newer_frames.fallback_reason)
    # Episodes the dataset does not have (lerobot tries to download them).
    assert LeRobotFrames(dataset, action_key=ACTION, episodes=[0, 99]).backend == "lerobot"
    # Cameras stored as images in the parquet files, not as video: lerobot reads it, and the items come.
    emb = embodiment("ur5")
    small = embodiment_features(emb, {c.key: (16, 16) for c in emb.cameras})
    images = {k: {**v, "dtype": "image"} for k, v in small.items() if v["dtype"] == "video"}
    assert images
    root = write_synthetic_dataset(tmp_path / "images", emb, episodes=1, frames=3, image_size=(16, 16),
                                   feature_overrides=images)
    frames = LeRobotFrames(root, action_key=emb.action_key, action_horizon=2)
    assert frames.backend == "lerobot" and "image" in str(frames.fallback_reason)
    item = frames[2]
    assert item[next(iter(images))].shape == (3, 16, 16) and item[f"{emb.action_key}_is_pad"].tolist() == [False, True]


class _Frame:
    def __init__(self, pts):
        self.pts = pts


class _Video:
    """A stand-in for a PyAV container: decoding after a seek to tick ``s`` yields frames from the keyframe at or
    before ``s`` (keyframes every ``gop`` frames)."""

    def __init__(self, pts, gop=2):
        self.pts, self.gop, self.at = list(pts), gop, 0

    def seek(self, offset, *, backward, any_frame, stream):
        keys = [i for i in range(0, len(self.pts), self.gop) if self.pts[i] <= offset]
        self.at = keys[-1] if keys else 0

    def decode(self, stream):
        return (_Frame(p) for p in self.pts[self.at:])


def test_the_shorter_seek_gives_way_to_lerobots_where_it_cannot_prove_the_same_frame():
    from pi0cli.data.direct import DirectFrames

    nearest = DirectFrames._nearest
    # 10 fps, ticks of 1/10240 s: frame k at tick 1024 k. A keyframe target (frame 4): one frame decoded, and it is
    # the same as lerobot's (which decodes frames 2, 3, 4).
    video = _Video([1024 * k for k in range(8)])
    frame, distance = nearest(video, None, 1, 10240, 0.4, round(0.4 * 10240), short=True)
    assert frame.pts == 4 * 1024 and distance == 0 and video.at == 4
    assert nearest(video, None, 1, 10240, 0.4, round(0.4 * 10240) - 1, short=False)[0].pts == 4 * 1024
    assert video.at == 2  # lerobot's seek lands a keyframe earlier
    # Ticks finer than float32 resolution at this time (1 us at 5000 s): the tick before the first frame is not
    # provably farther, so the caller must seek as lerobot does.
    us = 10**6
    video = _Video([5000 * us + 100_000 * k for k in range(4)])
    assert nearest(video, None, 1, us, 5000.0, 5000 * us, short=True) is None
    assert nearest(video, None, 1, us, 5000.0, 5000 * us - 1, short=False)[0].pts == 5000 * us
    # Halfway between two frames (ticks of 1/4 s, t = 0.375): the keyframe at t's tick is 0.125 s away, and so is
    # the frame before it, which lerobot decodes first and keeps (the first of equals).
    video = _Video(range(8))
    assert nearest(video, None, 1, 4, 0.375, round(0.375 * 4), short=True) is None
    assert nearest(video, None, 1, 4, 0.375, round(0.375 * 4) - 1, short=False)[0].pts == 1
    # Times that do not increase: no proof either.
    video = _Video([0, 2048, 1024, 3072], gop=4)
    assert nearest(video, None, 1, 10240, 0.3, round(0.3 * 10240), short=True) is None
    # The nearest after the first frame decoded: earlier frames are farther, whatever lerobot decodes before.
    video = _Video([1024 * k for k in range(8)])
    frame, _ = nearest(video, None, 1, 10240, 0.5, round(0.5 * 10240), short=True)
    assert frame.pts == 5 * 1024 and video.at == 4
