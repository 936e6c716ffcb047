"""`pi0 train --mixture` end to end: a lerobot-written ALOHA dataset plus a Meta-World one (14 and 4 action
dims) through the real CLI: one-line errors before compiling, per-dataset losses, kill -9 and --resume, and one
checkpoint serving both robots to the unmodified openpi-client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

PI0 = [sys.executable, "-m", "pi0cli"]
PRESET = "pi0_aloha_sim_tiny"
MIX = """
[[dataset]]
path = "{sim}"
embodiment = "aloha_sim"
weight = {w_sim}

[[dataset]]
path = "{mw}"
embodiment = "{mw_embodiment}"
weight = {w_mw}
prompt = "open the drawer"
"""


def _pi0(*args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PI0, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", "JAX_PLATFORMS": "cpu"})


def _mix(path: Path, root: Path, *, w_sim: str = "1", w_mw: str = "3", mw_embodiment: str = "metaworld",
         sim: str | None = None, mw: str | None = None) -> Path:
    path.write_text(MIX.format(sim=sim or root / "sim", mw=mw or root / "mw", w_sim=w_sim, w_mw=w_mw,
                               mw_embodiment=mw_embodiment))
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """Two robots' datasets (lerobot's writer), the mixture file, and its norm stats under ./assets."""
    from pi0cli.data.synthetic import write_synthetic_dataset
    from pi0cli.plugins.manager import load_registry

    root = tmp_path_factory.mktemp("mixture-cli")
    registry = load_registry({})
    write_synthetic_dataset(root / "sim", registry.embodiment("aloha_sim"), episodes=2, frames=16,
                            image_size=(32, 32), tasks=("Transfer cube",))
    write_synthetic_dataset(root / "mw", registry.embodiment("metaworld"), episodes=2, frames=16,
                            image_size=(32, 32), tasks=("drawer-open", "drawer-close"))
    _mix(root / "mix.toml", root)
    result = _pi0("norm-stats", "--mixture", "mix.toml", "--preset", PRESET, cwd=root)
    assert result.returncode == 0, result.stderr
    assert "for aloha_sim" in result.stdout and "for metaworld" in result.stdout, result.stdout
    return root


def test_norm_stats_mixture_writes_one_asset_per_embodiment(workdir):
    for asset in ("lerobot/aloha_sim_transfer_cube_human", "metaworld"):
        record = json.loads((workdir / "assets" / asset / "norm_stats.json").read_text())
        assert record["computed_for"]["horizon"] == 10 and record["computed_for"]["mixture"] == "mix.toml"
    stats = json.loads((workdir / "assets" / "metaworld" / "norm_stats.json").read_text())["norm_stats"]
    assert len(stats["actions"]["mean"]) == 4 and len(stats["state"]["mean"]) == 4


@pytest.mark.parametrize(("case", "message"), [
    ("unknown", r"dataset #2 \(.*mw\): unknown embodiment 'metawrld'; did you mean 'metaworld'\?; fix its embodiment"),
    ("missing", r"dataset #2 \(.*nowhere\): dataset .* not found"),
    ("negative", r"dataset #2 \(.*mw\): weight -1.0 is negative; use a weight >= 0"),
    ("zero", r"every weight is zero; give at least one dataset a positive weight"),
    ("keys", r"dataset #2 \(.*sim\): dataset .* has no column .* that embodiment 'metaworld' reads"),
    ("stats", r"dataset #1 \(.*sim\): no norm stats for embodiment 'aloha_sim' .*; compute them with "
              r"`pi0 norm-stats --mixture mix.toml`"),
    ("flags", r"--mixture and --dataset exclude each other"),
    ("fast", r"--mixture: the pi0_fast model cannot mask padded action dims out of its loss yet"),
])
def test_a_bad_mixture_is_one_line_before_compiling(workdir, tmp_path, case, message):
    cwd = workdir
    extra: list[str] = []
    if case == "unknown":
        _mix(tmp_path / "mix.toml", workdir, mw_embodiment="metawrld")
    elif case == "missing":
        _mix(tmp_path / "mix.toml", workdir, mw=str(workdir / "nowhere"))
    elif case == "negative":
        _mix(tmp_path / "mix.toml", workdir, w_mw="-1.0")
    elif case == "zero":
        _mix(tmp_path / "mix.toml", workdir, w_sim="0", w_mw="0")
    elif case == "keys":
        _mix(tmp_path / "mix.toml", workdir, mw=str(workdir / "sim"))
    elif case == "stats":  # run where no ./assets exists
        cwd = tmp_path
        _mix(tmp_path / "mix.toml", workdir)
    elif case == "fast":
        _mix(tmp_path / "mix.toml", workdir)
    else:
        _mix(tmp_path / "mix.toml", workdir)
        extra = ["--dataset", str(workdir / "sim")]
    mix = "mix.toml" if cwd == tmp_path else str(tmp_path / "mix.toml")
    preset = "pi0_fast_aloha_sim_tiny" if case == "fast" else PRESET
    result = _pi0("train", preset, "--mixture", mix, "--steps", "2", *extra, cwd=cwd, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    import re

    assert re.search(message, lines[0]), lines[0]
    assert "compiling" not in result.stderr and not (cwd / "checkpoints").exists()


def _rows(exp: Path) -> list[dict]:
    return [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]


def _train(workdir: Path, exp: str, steps: int, *extra: str) -> list[str]:
    return [*PI0, "train", PRESET, "--mixture", "mix.toml", "--steps", str(steps), "--batch-size", "4",
            "--log-interval", "1", "--save-interval", "1", "--exp", exp, *extra]


@pytest.fixture(scope="module")
def trained(workdir) -> Path:
    """An uninterrupted 6-step mixture run (the reference the resumed one must equal)."""
    result = subprocess.run(_train(workdir, "straight", 6), capture_output=True, text=True, cwd=workdir, timeout=1200,
                            env={**os.environ, "COLUMNS": "200", "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr
    logged = [line for line in result.stdout.splitlines() if line.startswith(f"{PRESET}: ")]
    assert len(logged) == 6 and all("loss[aloha_sim] " in line or "loss[metaworld] " in line for line in logged), \
        result.stdout
    return workdir / "checkpoints" / PRESET / "straight"


@pytest.mark.slow
def test_mixture_run_logs_each_dataset_and_its_checkpoint_carries_both(trained):
    rows = _rows(trained)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    per_source = {k for r in rows for k in r if k.startswith("loss/")}
    assert per_source == {"loss/aloha_sim", "loss/metaworld"}, rows
    for row in rows:  # the batch loss is the mean of its examples: between its sources' means
        values = [row[k] for k in per_source if k in row]
        assert min(values) - 1e-5 <= row["loss"] <= max(values) + 1e-5
    assets = trained / "6" / "assets"
    assert (assets / "lerobot" / "aloha_sim_transfer_cube_human" / "norm_stats.json").is_file()
    assert (assets / "metaworld" / "norm_stats.json").is_file()
    config = json.loads((assets / "pi0_config.json").read_text())
    assert [m["embodiment"] for m in config["mixture"]] == ["aloha_sim", "metaworld"]


@pytest.mark.slow
def test_kill_9_then_resume_equals_an_uninterrupted_mixture_run(workdir, trained):
    exp = workdir / "checkpoints" / PRESET / "killed"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(_train(workdir, "killed", 6), cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if exp.exists() and any(p.name.isdigit() and int(p.name) >= 2 for p in exp.iterdir()):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    resumed = subprocess.run(_train(workdir, "killed", 6, "--resume"), capture_output=True, text=True, cwd=workdir,
                             env=env, timeout=1200)
    assert resumed.returncode == 0, resumed.stderr
    straight = {r["step"]: r for r in _rows(trained)}
    again = _rows(exp)
    assert [r["step"] for r in again] == [1, 2, 3, 4, 5, 6]
    for row in again:  # bit-exact: the same loss, per-dataset losses and gradient norm at every step
        expected = straight[row["step"]]
        assert {k: v for k, v in row.items() if k != "steps_per_s"} == \
            {k: v for k, v in expected.items() if k != "steps_per_s"}, (row, expected)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")
def test_one_mixture_checkpoint_serves_both_robots_to_openpi_client(workdir, trained, tmp_path):
    reason = "pip install --no-deps openpi-client dm-tree pillow"
    OpenpiClient = pytest.importorskip("openpi_client.websocket_client_policy", reason=reason).WebsocketClientPolicy
    sys.path.insert(0, str(Path(__file__).parents[1] / "serving"))
    from serving_helpers import free_port

    from pi0cli.client.policy import wait_until_ready
    from pi0cli.plugins.manager import load_registry

    registry = load_registry({})
    step = trained / "6"
    for name, dim in (("metaworld", 4), ("aloha_sim", 14)):
        port = free_port()
        proc = subprocess.Popen([*PI0, "serve", "--checkpoint", str(step), "--embodiment", name, "--port", str(port)],
                                cwd=workdir, env={**os.environ, "JAX_PLATFORMS": "cpu"}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT)
        try:
            wait_until_ready("127.0.0.1", port, timeout=300)
            client = OpenpiClient("127.0.0.1", port)
            obs = {**registry.embodiment(name).example_observation(0), "prompt": "open the drawer"}
            reply = client.infer(obs)
            assert reply["actions"].shape == (10, dim) and np.isfinite(reply["actions"]).all()
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
    never = _pi0("serve", "--checkpoint", str(step), "--embodiment", "ur5", "--port", str(free_port()), cwd=workdir,
                 timeout=300)
    assert never.returncode == 1
    assert "trained on a mixture of aloha_sim, metaworld, not 'ur5'; pass --embodiment aloha_sim or metaworld" \
        in never.stderr, never.stderr
