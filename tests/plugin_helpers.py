"""Helpers that make throw-away plugin distributions for tests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

TOY_PLUGIN = '''
from pi0cli import hookimpl
from pi0cli.embodiment import Camera, Embodiment, RobotInputs, StateField
from pi0cli.transforms import SliceActions

CAMERAS = (Camera("front", "base_0_rgb", height=64, width=64),)
STATE = (StateField("joints", 4),)
ROBOT = Embodiment(
    name={name!r}, description="a demo arm", state=STATE, action_dim=4, control_hz=30.0, cameras=CAMERAS,
    inputs=RobotInputs(CAMERAS, STATE), outputs=SliceActions(4), asset_id="demo",
    dataset_keys={{"front": "observation.images.front", "joints": "observation.state", "actions": "action"}},
)


@hookimpl
def pi0_register_embodiments(register):
    register(ROBOT)
'''


def toy_plugin_source(name: str = "demo") -> str:
    return TOY_PLUGIN.format(name=name)


def fake_distribution(root: Path, dist: str, entry_point: str, module: str, source: str,
                      version: str = "0.1.0") -> Path:
    """An installed-looking distribution (module + ``.dist-info`` with a ``pi0`` entry point) under ``root``;
    put ``root`` on ``PYTHONPATH`` and importlib.metadata finds it like a pip-installed one."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[pi0]\n{entry_point} = {module}\n")
    return root


def run_pi0(*args: str, pythonpath: list[Path] = (), env: dict[str, str] | None = None,
            python: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess (``python -m pi0cli``), returning its exit code and output."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PI0_")}
    full_env["COLUMNS"] = "200"
    if pythonpath:
        full_env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    full_env.update(env or {})
    return subprocess.run([python or sys.executable, "-m", "pi0cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=120)
