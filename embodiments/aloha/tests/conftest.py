"""The ALOHA plugin's tests. Simulation tests render headless: choose Mesa's EGL (software llvmpipe) unless the
user chose a back end.

EGL is what the Debian image provides (``libegl1``, ``libegl-mesa0``, ``libgl1-mesa-dri``) and needs neither a
display nor a GPU; ``osmesa`` would need ``libosmesa6``. MuJoCo and dm_control read the variable when first
imported, hence here, at collection time.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")
