"""The dynamic batcher on its own: windows, per-request failures, warm-up."""

from __future__ import annotations

import asyncio
import time

import pytest

from pi0cli.serving.batching import BatcherClosedError, DynamicBatcher


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_a_batch_and_get_their_own_results():
    calls = []

    def process(items):
        calls.append(list(items))
        time.sleep(0.01)
        return [x * 10 for x in items]

    batcher = DynamicBatcher(process, max_batch=4, window_s=0.05).start()

    async def main():
        return await asyncio.gather(*(batcher.submit(i) for i in range(10)))

    assert run(main()) == [i * 10 for i in range(10)]
    batcher.close()
    assert all(len(c) <= 4 for c in calls)
    assert max(len(c) for c in calls) == 4
    assert sum(len(c) for c in calls) == 10


def test_a_failing_item_fails_alone_and_a_failing_batch_fails_its_items():
    def process(items):
        if "crash" in items:
            raise RuntimeError("model exploded")
        return [ValueError(f"bad {x}") if x == "bad" else x for x in items]

    batcher = DynamicBatcher(process, max_batch=8, window_s=0.02).start()

    async def main():
        return await asyncio.gather(batcher.submit("ok"), batcher.submit("bad"), return_exceptions=True)

    ok, bad = run(main())
    assert ok == "ok" and isinstance(bad, ValueError)

    async def crash():
        return await batcher.submit("crash")

    with pytest.raises(RuntimeError, match="exploded"):
        run(crash())

    async def after():
        return await batcher.submit("fine")

    assert run(after()) == "fine"
    batcher.close()


def test_window_is_skipped_when_every_client_is_waiting():
    batcher = DynamicBatcher(lambda items: list(items), max_batch=8, window_s=5.0, active_clients=lambda: 1).start()

    async def main():
        start = time.perf_counter()
        await batcher.submit(1)
        return time.perf_counter() - start

    assert run(main()) < 1.0
    batcher.close()


def test_warmup_runs_first_and_its_failure_is_reported():
    order: list[str] = []

    def process(items):
        order.append("batch")
        return list(items)

    batcher = DynamicBatcher(process, warmup=lambda: order.append("warm"))
    batcher.start()

    async def main():
        return await batcher.submit(1)

    assert run(main()) == 1 and order == ["warm", "batch"]
    batcher.close()

    def broken():
        raise RuntimeError("no such device")

    failing = DynamicBatcher(lambda items: list(items), warmup=broken).start()
    failing._thread.join(5)
    assert isinstance(failing.failed, RuntimeError)
    with pytest.raises(BatcherClosedError, match="no such device"):
        run(main.__wrapped__() if hasattr(main, "__wrapped__") else failing.submit(1))
    failing.close()
