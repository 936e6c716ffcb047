"""The data loader: deterministic in (seed, step), resumable, sharded, bounded, workers off the main thread."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from datahelpers import HORIZON, CountingDataset, embodiment, model_config

from pi0cli.data.loader import BatchOrder, DataLoader, LoaderError, Shard


def _xs(batches) -> list[list[int]]:
    return [b["x"][:, 0].tolist() for b in batches]


def test_order_is_a_function_of_seed_and_step():
    order = BatchOrder(10, 4, seed=7)
    stream = np.concatenate([order.global_indices(s) for s in range(5)])  # 20 = two epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    fresh = BatchOrder(10, 4, seed=7)
    assert fresh.global_indices(3).tolist() == order.global_indices(3).tolist()
    assert BatchOrder(10, 4, seed=8).global_indices(0).tolist() != order.global_indices(0).tolist()


@pytest.mark.parametrize("workers,num_workers", [("thread", 0), ("thread", 2)])
def test_resumed_run_sees_the_same_batches(workers, num_workers):
    loader = DataLoader(CountingDataset(23), None, batch_size=6, seed=1, num_workers=num_workers, workers=workers)
    full = _xs(loader.batches(0, num_steps=8))
    resumed = _xs(DataLoader(CountingDataset(23), None, batch_size=6, seed=1, num_workers=2).batches(5, num_steps=3))
    assert resumed == full[5:]
    assert all(len(b) == 6 for b in full)


@pytest.mark.slow
def test_process_workers_match_threads():
    threads = _xs(DataLoader(CountingDataset(30), None, batch_size=4, seed=3).batches(2, num_steps=4))
    procs = _xs(DataLoader(CountingDataset(30), None, batch_size=4, seed=3, workers="process").batches(2, num_steps=4))
    assert procs == threads


def test_shards_partition_the_global_batch():
    order = BatchOrder(50, 8, seed=0)
    shards = [BatchOrder(50, 8, seed=0, shard=Shard(p, 2, 2)).local_indices(3) for p in range(2)]
    assert np.concatenate(shards).tolist() == order.global_indices(3).tolist()
    loaders = [DataLoader(CountingDataset(50), None, batch_size=8, shard=Shard(p, 4, 1), num_workers=0)
               for p in range(4)]
    parts = [next(iter(loader))["x"][:, 0] for loader in loaders]
    assert np.concatenate(parts).tolist() == order.global_indices(0).tolist()
    with pytest.raises(LoaderError, match="do not split over its 3 devices"):
        BatchOrder(50, 8, seed=0, shard=Shard(0, 2, 3))
    with pytest.raises(LoaderError, match="does not split over 3 processes"):
        BatchOrder(50, 8, seed=0, shard=Shard(0, 3, 1))
    with pytest.raises(LoaderError, match="no samples"):
        BatchOrder(0, 8, seed=0)


def test_prefetch_is_bounded_and_work_is_off_the_main_thread(monkeypatch):
    import concurrent.futures as cf

    from pi0cli.data import loader as loader_module

    main = threading.get_ident()
    seen: set[int] = set()
    submitted: list[int] = []  # frames handed to the workers

    class CountingPool(cf.ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            submitted.extend(args[-1])  # the task's frame indices (the loader's last argument)
            return super().submit(fn, *args, **kwargs)

    def transform(item):
        seen.add(threading.get_ident())
        return item

    monkeypatch.setattr(loader_module.cf, "ThreadPoolExecutor", CountingPool)
    dataset = CountingDataset(1000)
    loader = DataLoader(dataset, transform, batch_size=5, num_workers=2, prefetch=3)
    batches = loader.batches(0)
    next(batches)
    # A slow consumer: the loader hands the workers nothing more until it is asked for the next batch, however
    # long the consumer takes (the loader submits on the consumer's thread, so this holds at any machine speed).
    assert len(submitted) <= (3 + 1) * 5
    batches.close()  # waits for the workers: every read they will ever do is done
    assert len(dataset.reads) <= len(submitted)
    assert main not in seen and seen


@pytest.mark.slow
def test_loader_over_a_lerobot_dataset(datasets, sp_model_bytes):
    from pi0cli.data.lerobot import LeRobotFrames
    from pi0cli.data.stats import compute_norm_stats
    from pi0cli.models.tokenizer import PaligemmaTokenizer
    from pi0cli.pipeline import Pipeline

    emb = embodiment("libero")
    cfg = model_config("pi05")
    pipe = Pipeline.create(emb, cfg, compute_norm_stats(emb, datasets["libero"], horizon=HORIZON),
                           tokenizer=PaligemmaTokenizer(cfg.token_len, sp_model_bytes))
    frames = LeRobotFrames(datasets["libero"], action_key=emb.action_key, action_horizon=HORIZON)
    loader = DataLoader(frames, pipe.training_inputs(), batch_size=4, seed=0, num_workers=2)
    batches = list(loader.batches(0, num_steps=4))
    assert batches[0]["image"]["base_0_rgb"].shape == (4, *cfg.image_resolution, 3)
    assert batches[0]["actions"].shape == (4, HORIZON, 32) and batches[0]["actions_is_pad"].shape == (4, HORIZON)
    again = next(DataLoader(frames, pipe.training_inputs(), batch_size=4, seed=0, num_workers=0).batches(3))
    np.testing.assert_array_equal(again["actions"], batches[3]["actions"])
    np.testing.assert_array_equal(again["image"]["left_wrist_0_rgb"], batches[3]["image"]["left_wrist_0_rgb"])
