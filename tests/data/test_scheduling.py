"""Writing a dataset leaves the process's scheduling alone (SVT-AV1 makes its caller real-time when run as root)."""

from __future__ import annotations

import os
import threading

import pytest

from pi0cli.scheduling import keep_scheduling, realtime_threads


def _can_go_realtime() -> bool:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except (OSError, AttributeError):
        return False
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    return True


def test_a_block_that_makes_threads_real_time_is_undone():
    if not _can_go_realtime():
        pytest.skip("this process may not use real-time scheduling (not root): nothing can raise it")
    started = []
    with keep_scheduling():
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))
        worker = threading.Thread(target=lambda: started.append(os.sched_getscheduler(0)) or threading.Event().wait(1))
        worker.start()  # inherits FIFO from its creator, as XLA's threads would
    assert started == [os.SCHED_FIFO]
    assert realtime_threads() == [] and os.sched_getscheduler(0) == os.SCHED_OTHER
    worker.join()


def test_a_caller_real_time_by_choice_stays_so():
    if not _can_go_realtime():
        pytest.skip("this process may not use real-time scheduling (not root)")
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    try:
        with keep_scheduling():
            pass
        assert os.sched_getscheduler(0) == os.SCHED_FIFO
    finally:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def test_writing_a_lerobot_dataset_leaves_no_thread_real_time(tmp_path):
    from pi0cli.data.synthetic import write_synthetic_dataset
    from pi0cli.plugins.manager import get_registry

    before = realtime_threads()
    write_synthetic_dataset(tmp_path / "ds", get_registry().embodiment("aloha_sim"), episodes=1, frames=4)
    assert realtime_threads() == before  # as it was (a real-time thread, where one existed, is not this write's)
