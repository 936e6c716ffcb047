"""Keep the process's CPU scheduling as it was around code that raises thread priorities behind our back.

LeRobot writes its videos with SVT-AV1 (through PyAV), and SVT-AV1 asks for real-time priority for the thread
that starts its encoder. Run as root (containers, CI, many robot PCs), the request succeeds: the calling thread
-- Python's main thread -- is moved to ``SCHED_FIFO`` at priority 99, and every thread it starts afterwards
(XLA's workers, a server's loop) inherits that. A busy real-time thread owns its core: measured here, a test
process that had written one small dataset starved the servers and CLIs it started on the same core, and a
``pi0 record`` would starve the robot's own drivers. Unprivileged, the request fails and nothing changes.

:func:`keep_scheduling` undoes it: threads that are real-time after the block and were not before are put back
to the normal time-sharing policy. Linux only; elsewhere it does nothing.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

_REALTIME = tuple(getattr(os, name) for name in ("SCHED_FIFO", "SCHED_RR") if hasattr(os, name))
_TASKS = "/proc/self/task"


def _policies() -> dict[int, int]:
    """Each thread of this process (by thread id) and its scheduling policy; empty where unsupported."""
    if not hasattr(os, "sched_getscheduler") or not os.path.isdir(_TASKS):
        return {}
    policies = {}
    for name in os.listdir(_TASKS):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            policies[int(name)] = os.sched_getscheduler(int(name))
    return policies


def realtime_threads() -> list[int]:
    """Thread ids of this process scheduled real-time (``SCHED_FIFO``/``SCHED_RR``)."""
    return sorted(tid for tid, policy in _policies().items() if policy in _REALTIME)


@contextlib.contextmanager
def keep_scheduling() -> Iterator[None]:
    """Run the block; threads it made real-time go back to ``SCHED_OTHER`` (those real-time before stay, and a
    caller that was itself real-time, by the user's choice, keeps whatever its threads inherited)."""
    before = {tid for tid, policy in _policies().items() if policy in _REALTIME}
    try:
        yield
    finally:
        chosen = threading.get_native_id() in before
        for tid in [] if chosen else realtime_threads():
            if tid not in before:
                with contextlib.suppress(OSError):
                    os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
