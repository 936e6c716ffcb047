"""End to end: `pi0 export --verify` in a subprocess, then `pi0 serve --artifact` and `pi0 serve --checkpoint`
of the same checkpoint on 127.0.0.1, both asked by the unmodified openpi-client: the same actions."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from net_helpers import free_port
from obs_helpers import sim_obs

pytest.importorskip("onnxruntime")


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PI0_LOAD_PLUGINS", None)
    env.update(PI0_CACHE_DIR=str(tmp_path / "cache"), OPENPI_DATA_HOME=str(tmp_path / "openpi"))
    return env


def _serve(pi0_exe: str, args: list[str], tmp_path: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([pi0_exe, "serve", *args, "--port", str(port), "--max-batch", "1"], env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, port


def _ask(port: int, count: int) -> list[np.ndarray]:
    from pi0cli.client.policy import wait_until_ready

    client_mod = pytest.importorskip("openpi_client.websocket_client_policy",
                                     reason="pip install --no-deps openpi-client dm-tree pillow")
    wait_until_ready("127.0.0.1", port, timeout=300)
    client = client_mod.WebsocketClientPolicy("127.0.0.1", port)
    return [client.infer(sim_obs(i))["actions"] for i in range(count)]


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")
def test_served_artifact_answers_openpi_client_as_the_checkpoint_does(tiny_checkpoints, tmp_path, pi0_exe):
    checkpoint = tiny_checkpoints["pi05_tiny"]
    artifact = tmp_path / "artifact"
    done = subprocess.run([pi0_exe, "export", str(checkpoint), "--format", "onnx", "--out", str(artifact),
                           "--verify"], env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verify: max |artifact - JAX float32|" in done.stdout and "ok)" in done.stdout
    again = subprocess.run([pi0_exe, "export", str(checkpoint), "--out", str(artifact)], env=_env(tmp_path),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "pass --force" in again.stderr

    proc, port = _serve(pi0_exe, ["--artifact", str(artifact)], tmp_path)  # embodiment: the artifact's
    try:
        served = _ask(port, 3)
    finally:
        out = _stop(proc)
    assert "ONNX artifact for aloha_sim" in out
    proc, port = _serve(pi0_exe, ["--checkpoint", str(checkpoint), "--embodiment", "aloha_sim"], tmp_path)
    try:
        reference = _ask(port, 3)
    finally:
        _stop(proc)
    for got, want in zip(served, reference, strict=True):
        assert got.shape == (10, 14) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
