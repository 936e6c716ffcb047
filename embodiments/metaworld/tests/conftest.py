"""The Meta-World plugin's tests render headless: Mesa's EGL (software llvmpipe) unless the user chose a back
end. MuJoCo reads the variable when first imported, hence here, at collection time."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")
