"""The ALOHA plugin's `pi0 doctor` check: MuJoCo's headless rendering, probed in a subprocess."""

from __future__ import annotations

import importlib.util

from pi0_embodiment_aloha.doctor import check_rendering


def test_the_plugin_registers_its_rendering_check():
    from pi0cli.plugins.manager import load_registry

    registry = load_registry({"PI0_LOAD_PLUGINS": "aloha"})
    assert [key for key in registry.doctor_checks] == ["aloha/rendering"]
    assert "pi0_doctor_checks" in registry.hooks(registry.plugins[0])


def test_a_missing_back_end_is_a_warning_with_the_fix(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "glfw-on-a-headless-box")
    (row,) = check_rendering(timeout=120)
    assert row.check == "rendering" and row.status == "warn"
    assert "MUJOCO_GL=egl" in row.fix


def test_without_mujoco_the_row_says_what_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    (row,) = check_rendering()
    assert row.status == "warn" and "pip install" in row.fix
