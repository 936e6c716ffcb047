"""``pi0 doctor``'s check for the simulated Meta-World: does a scene build and render headless, and how fast?

The probe runs in a subprocess (a missing EGL library can crash the process that tries it) and renders a few
``corner2`` frames the way recording and evaluation do. Importing this module imports neither metaworld nor
MuJoCo.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

from pi0cli.doctor import DoctorCheck, Row

NAME = "metaworld rendering"
_PROBE = """
import time
from pi0_embodiment_metaworld.sim.env import MetaWorldSim
with MetaWorldSim("reach-v3") as sim:
    sim.reset(0)
    sim.render()
    start = time.perf_counter()
    for _ in range(3):
        sim.render()
    print(f"{(time.perf_counter() - start) / 3 * 1000:.0f}")
"""


def check_rendering(timeout: float = 120.0) -> list[Row]:
    """One row: a Meta-World scene renders through ``MUJOCO_GL`` (default EGL), with the time per frame."""
    if importlib.util.find_spec("metaworld") is None:
        return [Row(NAME, "warn", "metaworld is not installed: the metaworld simulator cannot record or evaluate",
                    "pip install pi0-embodiment-metaworld (it brings metaworld==3.0.0)")]
    backend = os.environ.get("MUJOCO_GL", "egl")
    fix = ("apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri (or MUJOCO_GL=osmesa with libosmesa6)"
           if backend in ("egl", "osmesa") else f"MUJOCO_GL={backend} needs a display; use MUJOCO_GL=egl")
    try:
        probe = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [Row(NAME, "warn", f"a Meta-World scene did not render within {timeout:g} s", fix)]
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or [f"exit code {probe.returncode}"])[-1]
        return [Row(NAME, "warn", f"a Meta-World scene does not render through MUJOCO_GL={backend}: {last}", fix)]
    return [Row(NAME, "ok", f"corner2 renders through MUJOCO_GL={backend} in {probe.stdout.strip()} ms a frame "
                            "(shadows off)")]


CHECK = DoctorCheck(NAME, check_rendering)
