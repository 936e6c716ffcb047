"""``pi0 doctor``'s check for the simulated ALOHA: can MuJoCo render headless on this host?

The probe runs in a subprocess: a missing EGL library can crash the process that tries it. Registered through
the ``pi0_doctor_checks`` hook; importing this module imports no MuJoCo.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

from pi0cli.diagnostics import DoctorCheck, Row

_GL_PROBE = """
import os
os.environ.setdefault("MUJOCO_GL", "egl")
if os.environ["MUJOCO_GL"] in ("egl", "osmesa"):
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
import mujoco
ctx = mujoco.GLContext(32, 32)
ctx.make_current()
ctx.free()
print(mujoco.__version__)
"""


def check_rendering(timeout: float = 60.0) -> list[Row]:
    """One ``rendering`` row: MuJoCo's headless OpenGL through ``MUJOCO_GL`` (default EGL), and the fix."""
    if importlib.util.find_spec("mujoco") is None:
        return [Row("rendering", "warn", "MuJoCo is not installed: aloha_sim cannot record or evaluate",
                    "pip install pi0-embodiment-aloha (it brings gym-aloha and mujoco)")]
    backend = os.environ.get("MUJOCO_GL", "egl")
    try:
        probe = subprocess.run([sys.executable, "-c", _GL_PROBE], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [Row("rendering", "warn", f"MuJoCo OpenGL ({backend}) did not start within {timeout:g} s",
                    gl_fix(backend))]
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or [f"exit code {probe.returncode}"])[-1]
        return [Row("rendering", "warn", f"MuJoCo cannot render headless through {backend}: {last}",
                    gl_fix(backend))]
    return [Row("rendering", "ok", f"MuJoCo {probe.stdout.strip()} renders headless through MUJOCO_GL={backend}")]


def gl_fix(backend: str) -> str:
    """What to install (or set) so MuJoCo renders through ``backend``."""
    if backend == "egl":
        return ("aloha_sim needs it: apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri "
                "(or MUJOCO_GL=osmesa with libosmesa6)")
    if backend == "osmesa":
        return "apt-get install libosmesa6, or use MUJOCO_GL=egl"
    return f"MUJOCO_GL={backend} needs a display; use MUJOCO_GL=egl on a headless machine"


CHECK = DoctorCheck("rendering", check_rendering)
