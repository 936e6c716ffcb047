"""`pi0 plugins`: each plugin with its distribution, version and the hooks it implements (end to end)."""

from __future__ import annotations

import json

from plugin_helpers import fake_distribution, run_pi0

ARM = """
from pi0cli import hookimpl


@hookimpl
def pi0_register_embodiments(register):
    pass


@hookimpl
def pi0_doctor_checks(register):
    pass
"""


def test_plugins_lists_distribution_version_and_hooks(tmp_path):
    root = fake_distribution(tmp_path / "site", "pi0-embodiment-arm", "arm", "pi0_arm", ARM, version="2.3.4")
    fake_distribution(root, "pi0-embodiment-broken", "broken", "pi0_broken", "raise RuntimeError('boom')\n")
    env = {"PI0_LOAD_PLUGINS": "arm,broken"}
    result = run_pi0("plugins", "--json", pythonpath=[root], env=env)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["arm"] == {"name": "arm", "distribution": "pi0-embodiment-arm", "version": "2.3.4",
                           "hooks": ["pi0_doctor_checks", "pi0_register_embodiments"], "embodiments": [],
                           "error": None}
    assert rows["broken"]["hooks"] == [] and "boom" in rows["broken"]["error"]
    table = run_pi0("plugins", pythonpath=[root], env={**env, "COLUMNS": "80"})
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("arm "))
    assert "pi0-embodiment-arm" in lines[at] and "2.3.4" in lines[at]
    # One hook a line, whole at 80 columns (a folded "dataset_converte/rs" could not be typed back).
    assert lines[at].split()[3] == "doctor_checks" and lines[at + 1].split() == ["embodiments"]
    assert "failed to load" in table.stdout and table.stderr == ""  # the failure is in the table, once


def test_plugins_with_none_loaded_says_how_to_choose():
    result = run_pi0("plugins", env={"PI0_LOAD_PLUGINS": ""})
    assert result.returncode == 0 and "no plugins loaded" in result.stdout
    assert json.loads(run_pi0("plugins", "--json", env={"PI0_LOAD_PLUGINS": ""}).stdout) == []


def test_an_embodiment_shows_the_simulator_a_plugin_registers_for_it():
    """The link from robot to simulator is the simulator hook's (Simulator.embodiment), not a field to keep in
    step by hand."""
    aloha_sim = json.loads(run_pi0("embodiments", "show", "aloha_sim", "--json").stdout)
    droid = json.loads(run_pi0("embodiments", "show", "droid", "--json").stdout)
    assert aloha_sim["simulator"] == "gym_aloha" and droid["simulator"] is None


def test_a_plugin_command_shows_the_plugin_s_own_examples():
    """The core's example table names built-in commands only; `pi0 convert dataset NAME` shows what the
    converter declares."""
    from pi0cli.cli.helpstyle import EXAMPLES

    assert not [path for path in EXAMPLES if path.startswith("convert dataset ")]
    result = run_pi0("convert", "dataset", "aloha-hdf5", "--help")
    assert result.returncode == 0, result.stderr
    assert "pi0 convert dataset aloha-hdf5 raw_episodes/" in result.stdout.split("Examples", 1)[1]
