"""FSDP over several CPU devices and multi-process training through jax.distributed agree with one device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from net_helpers import free_port

from pi0cli.training.sharding import fsdp_spec

SCRIPT = Path(__file__).with_name("distributed_run.py")


def _run(tmp_path: Path, name: str, *args: str, devices: int = 1, env: dict | None = None,
         exp: str | None = None) -> subprocess.Popen:
    full_env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    full_env.update(env or {})
    return subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path / f"{name}.json"), "--exp-dir",
                             str(tmp_path / f"exp-{exp or name}"), *args], env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _result(tmp_path: Path, name: str, proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return json.loads((tmp_path / f"{name}.json").read_text())


def test_fsdp_rule():
    assert tuple(fsdp_spec((1024, 2048), 4, 4)) == (None, "fsdp")  # largest divisible axis
    assert tuple(fsdp_spec((10, 3), 4, 4)) == ()  # small arrays stay replicated
    assert tuple(fsdp_spec((3, 4096, 4097), 4, 4, min_bytes=0)) == (None, "fsdp", None)


@pytest.mark.slow
def test_fsdp_on_four_devices_matches_one_device(tmp_path):
    single = _run(tmp_path, "single")
    fsdp = _run(tmp_path, "fsdp", "--fsdp", "4", devices=4)
    one, four = _result(tmp_path, "single", single), _result(tmp_path, "fsdp", fsdp)
    assert four["devices"] == 4
    np.testing.assert_allclose(four["losses"], one["losses"], atol=1e-5)



@pytest.mark.slow
def test_two_processes_through_jax_distributed_match_one(tmp_path):
    coordinator = f"127.0.0.1:{free_port()}"
    # Both processes write one checkpoint together, as on a shared file system.
    procs = [_run(tmp_path, f"proc{i}", "--coordinator", coordinator, "--num-processes", "2", "--process-id", str(i),
                  exp="distributed") for i in range(2)]
    results = [_result(tmp_path, f"proc{i}", p) for i, p in enumerate(procs)]
    single = _result(tmp_path, "single", _run(tmp_path, "single"))
    assert [r["processes"] for r in results] == [2, 2] and results[0]["devices"] == 2
    np.testing.assert_allclose(results[0]["losses"], results[1]["losses"], atol=0)
    np.testing.assert_allclose(results[0]["losses"], single["losses"], atol=1e-5)
