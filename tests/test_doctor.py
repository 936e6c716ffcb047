"""`pi0 doctor`: one table, exit 1 only on a blocking problem, every problem row names its fix."""

from __future__ import annotations

import json

from plugin_helpers import fake_distribution, run_pi0

from pi0cli.doctor import Row, check_caches, check_network


def _rows(result) -> dict[str, dict]:
    return {row["check"]: row for row in json.loads(result.stdout)}


def test_doctor_on_this_machine_is_ready_and_covers_every_area():
    result = run_pi0("doctor", "--json", "--no-network")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = _rows(result)
    for check in ("python", "jax", "lerobot", "torch", "video encode", "video decode", "rendering", "plugin aloha",
                  "cache HF_HOME"):
        assert check in rows, sorted(rows)
    assert rows["python"]["status"] == "ok"
    assert rows["video decode"]["status"] == "ok"
    assert any(name.startswith("  device") for name in rows)
    assert any(name.startswith("simulator ") for name in rows)  # through the plugins' simulator hook
    assert all(row["fix"] for row in rows.values() if row["status"] in ("warn", "fail"))
    # The probe encodes AV1: the encoder's banner is not the doctor's output.
    assert "Svt[" not in result.stderr


def test_doctor_table_and_exit_1_on_a_blocking_problem():
    result = run_pi0("doctor", "--no-network", env={"JAX_PLATFORMS": "nonexistent"})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL" in result.stdout and "JAX_PLATFORMS" in result.stdout
    assert "1 blocking problem" in result.stdout
    assert "Traceback" not in result.stderr


def test_doctor_reports_a_broken_plugin_with_how_to_disable_it(tmp_path):
    root = fake_distribution(tmp_path / "site", "pi0-embodiment-broken", "broken", "pi0_broken",
                             "raise RuntimeError('boom')\n")
    result = run_pi0("doctor", "--json", "--no-network", pythonpath=[root])
    assert result.returncode == 0, result.stdout + result.stderr  # the other robots still work: a warning
    row = _rows(result)["plugin broken"]
    assert row["status"] == "warn" and "boom" in row["detail"]
    assert "PI0_DISABLE_PLUGINS=broken" in row["fix"]


def test_cache_rows_follow_the_environment(tmp_path):
    blocked = tmp_path / "ro"
    blocked.mkdir()
    blocked.chmod(0o500)
    try:
        rows = {r.check: r for r in check_caches({"HOME": str(tmp_path), "HF_HOME": str(blocked / "hf")})}
    finally:
        blocked.chmod(0o700)
    assert rows["cache HF_HOME"].detail.startswith(str(blocked / "hf"))
    assert rows["cache HF_LEROBOT_HOME"].detail.startswith(str(blocked / "hf" / "lerobot"))
    if rows["cache HF_HOME"].status == "warn":  # root may write anywhere
        assert "HF_HOME" in rows["cache HF_HOME"].fix


def test_offline_switch_skips_the_network_probe():
    for switch in ("HF_HUB_OFFLINE", "PI0_OFFLINE", "HF_DATASETS_OFFLINE"):  # pi0's switches and the datasets one
        (row,) = check_network(env={switch: "on"}, host="192.0.2.1", timeout=0.01)
        assert row == Row("network", "info", row.detail) and "offline" in row.detail and switch in row.detail


def test_gpu_rows_show_memory_and_no_accelerator_warning(monkeypatch):
    import jax

    from pi0cli.doctor import check_jax

    class FakeGpu:
        id, platform, device_kind = 0, "gpu", "NVIDIA H200"

        def memory_stats(self):
            return {"bytes_limit": 140 * 2**30}

    monkeypatch.setattr(jax, "devices", lambda: [FakeGpu()])
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    rows = {row.check: row for row in check_jax()}
    assert "backend gpu, 1 device(s)" in rows["jax"].detail
    assert rows["  device 0"].detail == "gpu NVIDIA H200, 140.0 GiB usable"
    assert "accelerator" not in rows


def test_plugins_add_their_own_checks_and_a_crashing_one_is_a_warning():
    """What a robot needs of the host is its plugin's check (hook pi0_doctor_checks), not the core's."""
    from pi0cli import hookimpl
    from pi0cli.doctor import DoctorCheck, check_plugin_checks
    from pi0cli.plugins.manager import registry_from

    class Arm:
        __name__ = "arm"

        @hookimpl
        def pi0_doctor_checks(self, register):
            register(DoctorCheck("arm driver", lambda: [Row("arm driver", "warn", "no /dev/arm0", "plug it in")]))

    class Buggy:
        __name__ = "buggy"

        @hookimpl
        def pi0_doctor_checks(self, register):
            register(DoctorCheck("rendering", lambda: 1 / 0))

    rows = check_plugin_checks(registry_from(Arm(), Buggy()))
    assert rows[0] == Row("arm driver", "warn", "no /dev/arm0", "plug it in")
    assert rows[1].check == "rendering" and rows[1].status == "warn"
    assert "plugin buggy's check failed: ZeroDivisionError" in rows[1].detail
    assert "PI0_DISABLE_PLUGINS=buggy" in rows[1].fix
    assert check_plugin_checks(registry_from()) == []


def test_the_core_probes_no_simulator_engine():
    """The MuJoCo probe lives in the ALOHA plugin: the core's doctor names no engine of any robot."""
    from pathlib import Path

    import pi0cli.doctor

    assert "mujoco" not in Path(pi0cli.doctor.__file__).read_text().lower()
