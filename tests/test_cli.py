"""The real `pi0` CLI in a subprocess: output, exit codes, help, and a cheap import path."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from plugin_helpers import run_pi0


def test_version_lists_plugin_distributions(pi0_exe):
    result = subprocess.run([pi0_exe, "--version"], capture_output=True, text=True, env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "pi0 0.1.0"
    for dist in ("pi0-embodiment-aloha", "pi0-embodiment-droid", "pi0-embodiment-libero", "pi0-embodiment-ur5"):
        assert any(dist in line and "0.1.0" in line for line in lines), result.stdout


def test_embodiments_list_json():
    result = run_pi0("embodiments", "list", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) >= {"aloha", "aloha_sim", "droid", "libero", "ur5"}  # and any robot the user installed
    assert rows["aloha"]["state_dim"] == 14 and rows["aloha"]["distribution"] == "pi0-embodiment-aloha"
    assert rows["ur5"]["asset_id"] == "ur5e"


def test_embodiments_list_table():
    result = run_pi0("embodiments", "list")
    assert result.returncode == 0
    assert "aloha_sim" in result.stdout and "pi0-embodiment-libero" in result.stdout


def test_embodiments_show_the_full_contract():
    table = run_pi0("embodiments", "show", "aloha")
    assert table.returncode == 0, table.stderr
    for text in ("DDDDDDaDDDDDDa", "trossen", "observation.images.cam_high", "AdaptToPi", "cam_low", "(unused)"):
        assert text in table.stdout
    data = json.loads(run_pi0("embodiments", "show", "libero", "--json").stdout)
    assert data["action_dim"] == 7 and data["simulator"] is None  # LIBERO's simulator is not a pi0 plugin
    assert data["dataset_keys"]["observation/state"] == "state"


def test_unknown_embodiment_is_one_red_line_with_a_suggestion():
    result = run_pi0("embodiments", "show", "alhoa")
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: unknown embodiment 'alhoa'; did you mean 'aloha'?"
    assert result.stdout == ""


def test_debug_shows_the_traceback():
    result = run_pi0("embodiments", "show", "alhoa", env={"PI0_DEBUG": "1"})
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "UnknownNameError" in result.stderr


@pytest.mark.parametrize("args", [["embodiments", "list", "--jsn"], ["embodimnts"], ["embodiments", "show"]])
def test_usage_errors_exit_2(args):
    result = run_pi0(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [[], ["embodiments"], ["embodiments", "list"], ["embodiments", "show"]])
def test_help_reads_well(args):
    result = run_pi0(*args, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: pi0" in result.stdout
    assert "Traceback" not in result.stdout


def test_help_lists_the_commands_with_their_purpose():
    out = run_pi0("--help").stdout
    assert "embodiments" in out and "List and inspect the robots" in out and "--version" in out


HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax", "torch", "lerobot", "sentencepiece")


def test_cli_and_plugins_import_without_jax_or_torch():
    code = (
        "import sys, time\n"
        "t = time.perf_counter()\n"
        "import pi0cli.cli\n"
        "from pi0cli.plugins.manager import get_registry\n"
        "names = list(get_registry().embodiments)\n"
        "from pi0cli.cli.embodiments import complete_embodiment\n"
        "complete_embodiment('a')\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1:]))\n"
        "print(heavy, len(names), round(time.perf_counter() - t, 3))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, *HEAVY], capture_output=True, text=True, check=True)
    heavy, count, seconds = result.stdout.split("]")[0] + "]", *result.stdout.split("]")[1].split()
    assert heavy == "[]", f"importing the CLI and loading plugins imported {heavy}"
    assert int(count) >= 5  # the shipped robots, and any the user installed
    print(f"import pi0cli.cli + plugins: {seconds} s")  # measured, reported with -s; never asserted


def test_a_command_run_does_not_import_jax():
    code = (
        "import sys\n"
        "from pi0cli.cli import app\n"
        "try:\n"
        "    app(args=['embodiments', 'list', '--json'], prog_name='pi0')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('JAXLOADED' if 'jax' in sys.modules else 'NOJAX', file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stderr.strip().endswith("NOJAX"), result.stderr


def test_progress_writes_plain_lines_when_stdout_is_not_a_terminal():
    """`pi0 train > log`: a log file gets one line per logged step (a bar would only leave its last frame)."""
    import io

    from rich.console import Console

    from pi0cli.cli.console import Progress

    stdout, stderr = io.StringIO(), io.StringIO()
    with Progress("train", 100, unit="steps", every_s=3600, lines=Console(file=stdout),
                  stderr=Console(file=stderr)) as progress:
        for step in (25, 50, 75):
            progress.update(step, line=True, loss=f"{1 / step:.4f}")
        progress.advance(5)  # not forced, within every_s: no line now, one at the end
    lines = stdout.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines] == ["train: 25/100 steps", "train: 50/100 steps",
                                                       "train: 75/100 steps", "train: 80/100 steps"]
    assert "loss 0.0400" in lines[0] and stderr.getvalue() == ""
