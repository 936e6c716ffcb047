"""The Simulator contract's own settings (SimOption): parsed from --sim-option, passed to the simulator's
functions as keywords, recorded in reports with their defaults; the core names no simulator's settings."""

from __future__ import annotations

import pytest
from plugin_helpers import run_pi0

from pi0cli.simulator import SimOption, SimTask, Simulator, SimulatorError


def _simulator(*options: SimOption) -> Simulator:
    return Simulator(name="toy", embodiment="toy", description="a toy", tasks=(SimTask("reach", "Reach"),),
                     rollout=lambda task, seed, act, **kw: iter(()), options=options)


def test_options_parse_to_their_default_s_type_and_fill_in_defaults():
    sim = _simulator(SimOption("shadows", False, "render shadows"), SimOption("size", 64, "image side"),
                     SimOption("light", 0.5, "ambient light"), SimOption("skin", "plain", "texture set"))
    values = sim.parse_options(["shadows=on", "size=128", "light=0.25", "skin=wood"])
    assert values == {"shadows": True, "size": 128, "light": 0.25, "skin": "wood"}
    assert sim.parse_options(["shadows=False"]) == {"shadows": False}
    assert sim.settings({"size": 32}) == {"shadows": False, "size": 32, "light": 0.5, "skin": "plain"}


@pytest.mark.parametrize("pairs, match", [
    (["color=red"], "simulator 'toy' takes NAME=VALUE with NAME one of its options: shadows"),
    (["shadows"], "one of its options"),
    (["shadows=maybe"], "--sim-option shadows=maybe: expected true or false"),
    (["size=big"], "--sim-option size=big: expected int"),
])
def test_a_bad_option_is_one_clear_error(pairs, match):
    sim = _simulator(SimOption("shadows", False, "render shadows"), SimOption("size", 64, "image side"))
    with pytest.raises(SimulatorError, match=match):
        sim.parse_options(pairs)


def test_a_simulator_without_options_refuses_every_one():
    with pytest.raises(SimulatorError, match="one of its options: none"):
        _simulator().parse_options(["shadows=true"])
    assert _simulator().settings({}) == {}


def test_option_names_are_keywords():
    with pytest.raises(ValueError, match="identifier"):
        SimOption("two words", 1, "")
    with pytest.raises(ValueError, match="clashes"):
        SimOption("max_steps", 1, "")


def test_the_cli_passes_the_simulator_s_own_options():
    """`--sim-option` reaches the simulator named on the command line; a name it lacks lists the ones it has
    (the ALOHA simulator declares shadows) before anything is loaded."""
    result = run_pi0("eval", "aloha_sim", "--checkpoint", "/nonexistent", "--sim-option", "glare=1")
    assert result.returncode == 1
    assert "simulator 'gym_aloha' takes NAME=VALUE" in result.stderr and "shadows" in result.stderr
    assert "--shadows" not in run_pi0("record", "--help").stdout  # no per-simulator flag in the core
