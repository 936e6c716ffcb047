"""A training process killed with SIGKILL during a checkpoint save resumes from the last complete step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("distributed_run.py")


def _cmd(tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, str(SCRIPT), str(tmp_path / "out.json"), "--exp-dir", str(tmp_path / "exp"),
            "--steps", "400", "--save-interval", "1", *extra]


@pytest.mark.slow
def test_sigkill_during_save_then_resume(tmp_path):
    exp = tmp_path / "exp"
    proc = subprocess.Popen(_cmd(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    deadline = time.monotonic() + 300
    killed_during_save = False
    try:
        # Saving every step: wait until at least two steps are complete and a save is in flight, then kill.
        while time.monotonic() < deadline and proc.poll() is None:
            entries = [p.name for p in exp.iterdir()] if exp.exists() else []
            complete = [n for n in entries if n.isdigit()]
            in_flight = [n for n in entries if "tmp" in n]
            if len(complete) >= 2 and in_flight:
                proc.send_signal(signal.SIGKILL)
                killed_during_save = True
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert killed_during_save, "the run finished or timed out before a save could be interrupted"
    complete = sorted(int(p.name) for p in exp.iterdir() if p.name.isdigit())
    assert complete, "no complete checkpoint survived"

    resumed = subprocess.run(_cmd(tmp_path, "--resume", "--steps", str(max(complete) + 2)), capture_output=True,
                             text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    rows = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows][-2:] == [max(complete) + 1, max(complete) + 2]
    assert not [p for p in exp.iterdir() if "tmp" in p.name], "a half-written checkpoint was left behind"
