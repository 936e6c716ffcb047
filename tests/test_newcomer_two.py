"""The first hour, part two (issue 25): what a newcomer still trips over, driven through the real CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def _pi0(cwd: Path, *args: str, env: dict[str, str] | None = None, columns: int = 80,
         timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess with its output in pipes, at ``columns`` (a newcomer's terminal width)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PI0_")}
    full_env.update({"COLUMNS": str(columns), **(env or {})})
    return subprocess.run([sys.executable, "-m", "pi0cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=full_env, timeout=timeout)


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.fixture()
def aloha_stats(tmp_path: Path) -> Path:
    """A working directory holding aloha_sim norm stats under ./assets (as `pi0 norm-stats` leaves them)."""
    from pi0cli.normstats import save_norm_stats
    from pi0cli.plugins.manager import load_registry
    from pi0cli.testing import example_norm_stats

    emb = load_registry({}).embodiment("aloha_sim")
    save_norm_stats(example_norm_stats(emb), tmp_path / "assets" / emb.asset_id)
    return tmp_path


# ------------------------------------------------------------------------ 1. a hub dataset not fetched yet


@pytest.mark.parametrize("dataset", [(), ("--dataset", "someone/some_dataset")])
def test_an_unreachable_hub_dataset_is_one_line_saying_what_to_do(aloha_stats, dataset):
    """Online (no offline switch) with the hub unreachable: the dataset is fetched before anything reads its
    files, and the failure is one line naming the ways out."""
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{_dead_port()}", "HF_HUB_OFFLINE": "",
           "HF_LEROBOT_HOME": str(aloha_stats / "cache")}
    result = _pi0(aloha_stats, "train", "pi0_aloha_sim_tiny", "--steps", "5", *dataset, env=env)
    line = _one_error_line(result)
    repo = dataset[1] if dataset else "lerobot/aloha_sim_transfer_cube_human"
    assert f"dataset {repo!r} is not in the local cache" in line and "could not be downloaded" in line
    assert "pi0 record" in line and "--dataset PATH" in line and "go online" in line
    assert "tasks.parquet" not in result.stderr


# ------------------------------------------------------------------- 4. no noise around a one-line error


@pytest.fixture(scope="module")
def corrupt_checkpoint(tmp_path_factory) -> Path:
    """A tiny aloha_sim checkpoint whose parameter files were cut short (as by a full disk)."""
    from pi0cli.plugins.manager import load_registry
    from pi0cli.testing import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path_factory.mktemp("corrupt") / "ckpt", load_registry({}).embodiment("aloha_sim"))
    for data in (ckpt / "params").rglob("*"):
        if data.is_file() and data.parent.name == "d":
            data.write_bytes(data.read_bytes()[:100])
    return ckpt


@pytest.mark.parametrize("command", [
    ("eval", "aloha_sim", "--episodes", "1", "--checkpoint", "{ckpt}"),
    ("serve", "--embodiment", "aloha_sim", "--port", "0", "--checkpoint", "{ckpt}"),
    ("convert", "checkpoint", "{ckpt}", "--to", "pi0", "--out", "out"),
])
def test_a_corrupt_checkpoint_is_one_line_and_no_traceback(command, corrupt_checkpoint, tmp_path):
    """Orbax's failed read leaves tensorstore replies in flight; they used to print 'Event loop is closed'
    tracebacks (0 to ~100 per run) around the error. Three runs per command make a silent pass unlikely."""
    args = [part.format(ckpt=corrupt_checkpoint) for part in command]
    for _ in range(3):
        line = _one_error_line(_pi0(tmp_path, *args))
        assert "cannot read the parameters" in line
        assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ 5. Ctrl-C, then resume


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A directory with a small aloha_sim dataset (lerobot's writer) and its norm stats under ./assets."""
    from pi0cli.data.synthetic import write_synthetic_dataset
    from pi0cli.plugins.manager import load_registry

    root = tmp_path_factory.mktemp("newcomer-two")
    write_synthetic_dataset(root / "sim", load_registry({}).embodiment("aloha_sim"), episodes=2, frames=16,
                            image_size=(32, 32), tasks=("Transfer cube",))
    made = _pi0(root, "norm-stats", "aloha_sim", "--dataset", "sim", "--preset", "pi0_aloha_sim_tiny")
    assert made.returncode == 0, made.stderr
    return root


def test_resume_with_no_complete_step_starts_from_zero_before_compiling(workdir):
    """Stopped before its first save (orbax's unfinished step folder and the metrics file are all there is):
    --resume starts from step 0 and says so; the checks after it still run before anything compiles (here
    --from a missing checkpoint stops the run right there)."""
    exp = workdir / "checkpoints" / "pi0_aloha_sim_tiny" / "early"
    (exp / "2.orbax-checkpoint-tmp").mkdir(parents=True)
    (exp / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    result = _pi0(workdir, "train", "pi0_aloha_sim_tiny", "--dataset", "sim", "--exp", "early", "--resume",
                  "--from", str(workdir / "missing"))
    assert "has no complete checkpoint yet; starting from step 0" in result.stderr, result.stderr
    assert "--from" in _one_error_line(result) and "compiling" not in result.stderr

    fresh = _pi0(workdir, "train", "pi0_aloha_sim_tiny", "--dataset", "sim", "--exp", "never", "--resume",
                 "--from", str(workdir / "missing"))
    assert "starting from step 0" in fresh.stderr and "nothing to resume" not in fresh.stderr, fresh.stderr


def _interrupt_when(needle: str, args: list[str], cwd: Path, stream: str = "stdout",
                    timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Start the CLI, send SIGINT (Ctrl-C) once ``needle`` appears on ``stream``, and collect the rest."""
    import signal
    import threading

    env = {k: v for k, v in os.environ.items() if not k.startswith("PI0_")} | {"COLUMNS": "80"}
    # A shell's background job ignores SIGINT and a child inherits that: give the CLI the default back.
    proc = subprocess.Popen([sys.executable, "-m", "pi0cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    watched, other = (proc.stdout, proc.stderr) if stream == "stdout" else (proc.stderr, proc.stdout)
    assert watched is not None and other is not None
    rest: list[str] = []
    drain = threading.Thread(target=lambda: rest.append(other.read()), daemon=True)
    drain.start()
    seen = []
    for line in watched:
        seen.append(line)
        if needle in line:
            proc.send_signal(signal.SIGINT)
            break
    seen.append(watched.read())
    proc.wait(timeout)
    drain.join(timeout)
    out, err = ("".join(seen), "".join(rest)) if stream == "stdout" else ("".join(rest), "".join(seen))
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@pytest.mark.slow
def test_ctrl_c_during_training_names_the_last_saved_step_and_the_resume_command(workdir):
    args = ["train", "pi0_aloha_sim_tiny", "--dataset", "sim", "--exp", "ctrl_c", "--steps", "500",
            "--batch-size", "4", "--save-interval", "2", "--log-interval", "1"]
    result = _interrupt_when("pi0_aloha_sim_tiny: 3/500", args, workdir)
    assert result.returncode == 130, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    import re

    match = re.search(r"interrupted after step (\d+) of 500: the last complete checkpoint is step (\d+) \((.*?)\)\. "
                      r"Continue with: (.*)$", result.stderr, re.M)
    assert match is not None, result.stderr
    assert int(match[1]) >= 3 and int(match[2]) >= 2 and (Path(match[3]) / "params").is_dir()
    assert match[4] == ("pi0 train pi0_aloha_sim_tiny --dataset sim --exp ctrl_c --steps 500 --batch-size 4 "
                        "--save-interval 2 --log-interval 1 --resume")


@pytest.mark.slow
def test_ctrl_c_during_recording_says_what_was_kept(workdir):
    result = _interrupt_when("recording: 1/", ["record", "aloha_sim", "--scripted", "--episodes", "20",
                                               "--out", "rec"], workdir, stream="stderr")
    assert result.returncode == 130, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert f"interrupted: {workdir / 'rec'} keeps the " in result.stderr, result.stderr
    assert (workdir / "rec" / "meta" / "info.json").is_file()


# ---------------------------------------------------------------------------- 6. nothing cut at 80 columns


def test_list_presets_keeps_every_name_whole_and_has_json(tmp_path):
    import json

    from pi0cli.plugins.manager import load_registry

    names = set(load_registry().presets)
    table = _pi0(tmp_path, "train", "--list-presets")
    assert table.returncode == 0, table.stderr
    assert "…" not in table.stdout
    listed = {line.split()[0] for line in table.stdout.splitlines() if line.strip()}
    assert names <= listed, sorted(names - listed)
    assert "compiled peak" not in table.stdout and "peak/device" in table.stdout  # a column, not a sentence
    assert "GiB" in table.stdout

    rows = json.loads(_pi0(tmp_path, "train", "--list-presets", "--json").stdout)
    assert {row["name"] for row in rows} == names
    tiny = next(row for row in rows if row["name"] == "pi0_aloha_sim_tiny")
    assert tiny["embodiment"] == "aloha_sim" and tiny["steps"] > 0 and "compiled peak" not in tiny["description"]
    assert any(isinstance(row["peak_bytes_per_device"], int) for row in rows)


def test_doctor_in_a_pipe_keeps_every_fix_whole(tmp_path):
    import json
    import re

    rows = json.loads(_pi0(tmp_path, "doctor", "--no-network", "--json").stdout)
    result = _pi0(tmp_path, "doctor", "--no-network")
    assert "…" not in result.stdout

    def timeless(text: str) -> str:  # the two runs measure (e.g. ms per rendered frame) apart
        return re.sub(r"\d+(\.\d+)?", "N", text)

    for row in rows:
        assert row["check"] in result.stdout and timeless(row["detail"]) in timeless(result.stdout), row
        assert row["fix"] in result.stdout, row  # commands and URLs copy-paste whole


def test_serve_help_at_80_columns_names_every_option_whole(tmp_path):
    import typer

    from pi0cli.cli.app import app

    serve = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    result = _pi0(tmp_path, "serve", "--help")
    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout
    for param in serve.params:
        for option in param.opts:
            assert option in result.stdout, option


# ----------------------------------------------------------------- 7. --check against the stats' own data


def test_norm_stats_check_uses_the_horizon_the_stats_were_computed_over(workdir):
    import json
    import re

    stats = workdir / "assets" / "lerobot" / "aloha_sim_transfer_cube_human"  # computed with --preset: chunks of 10
    result = _pi0(workdir, "norm-stats", "aloha_sim", "--dataset", "sim", "--check", str(stats), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["horizon"] == 10
    assert max(dim["drift"] for dim in report["dims"]) < 1e-3  # the very data they came from: no drift
    counts = [(int(a), int(b)) for a, b in re.findall(r"norm stats: (\d+)/(\d+) frames", result.stderr)]
    assert counts and all(total == 32 and done <= total for done, total in counts), result.stderr  # 2 x 16 frames


# --------------------------------------------------- 8. the project's tests with a third party's robot installed


#: The tests that assert which plugins, robots, simulators and converters are installed.
INSTALLED_SET_TESTS = (
    "tests/test_plugins.py::test_built_ins_are_found_through_entry_points",
    "tests/test_plugins.py::test_allow_and_block_lists",
    "tests/test_plugins.py::test_a_block_list_leaves_every_other_plugin",
    "tests/test_plugins.py::test_built_in_simulator_and_converters_come_from_the_robot_plugins",
    "tests/test_cli.py::test_version_lists_plugin_distributions",
    "tests/test_cli.py::test_embodiments_list_json",
    "tests/test_cli.py::test_cli_and_plugins_import_without_jax_or_torch",
)


@pytest.mark.slow
def test_the_suite_passes_with_the_guides_robot_installed(tmp_path):
    """docs/add-a-robot.md installs a robot (and perhaps a simulator and a converter) into the project's venv;
    the project's own tests must then still pass: they check that what pi0 ships is there, not that nothing
    else is."""
    from plugin_helpers import fake_distribution
    from test_plugins import sim_plugin

    site = fake_distribution(tmp_path / "site", "pi0-embodiment-myarm", "myarm", "pi0_embodiment_myarm",
                             "from pi0cli import hookimpl\n" + sim_plugin("myarm", "myarm_sim", "myarm-npz"))
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PI0_")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *INSTALLED_SET_TESTS],
                            capture_output=True, text=True, cwd=root, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "myarm" in subprocess.run([sys.executable, "-m", "pi0cli", "embodiments", "list"], capture_output=True,
                                     text=True, env=env).stdout  # the robot was really installed for them


# -------------------------------------------------------- 3. --verify for a model LeRobot's side cannot run


@pytest.mark.slow
def test_verify_of_a_cpu_model_checks_the_jax_round_trip_and_says_what_it_could_not(tmp_path):
    from pi0cli.plugins.manager import load_registry
    from pi0cli.testing import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "tiny", load_registry({}).embodiment("aloha_sim"))
    there = _pi0(tmp_path, "convert", "checkpoint", str(ckpt), "--to", "lerobot", "--out", "lr", "--verify")
    assert there.returncode == 0, there.stdout + there.stderr
    warning = there.stderr.split("wrote")[0] if "wrote" in there.stderr else there.stderr
    assert "--verify will compare the JAX round trip only" in warning and "8 attention heads" in warning
    assert "lerobot (pi0 JAX)" in there.stdout and "verified" in there.stdout
    assert "not compared: lerobot (LeRobot PyTorch), because LeRobot's pi0 hard-codes 8" in there.stdout
    # 9: the weights file gets the mode of every other file written (safetensors' own is 0600).
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "lr" / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask

    back = _pi0(tmp_path, "convert", "checkpoint", "lr", "--to", "pi0", "--out", "back", "--verify")
    assert back.returncode == 0, back.stdout + back.stderr
    assert "not compared: lerobot (LeRobot PyTorch)" in back.stdout and "verified" in back.stdout
    assert (tmp_path / "back" / "params").is_dir()


# ---------------------------------------------------------- 2. rtc needs chunks that outlast the latency


def test_workable_horizon_leaves_each_chunk_actions_for_the_latency():
    from pi0cli.evaluation.realtime import RealtimeError, delay_ticks, workable_horizon

    assert delay_ticks(100, 50) == 5 and delay_ticks(0, 50) == 0 and delay_ticks(101, 50) == 6
    assert workable_horizon(10, 5, 5, explicit=False) == (5, None)
    horizon, note = workable_horizon(10, 5, 10, explicit=False)
    assert horizon == 5 and note is not None and "executing 5 actions of each 10-action chunk" in note
    horizon, note = workable_horizon(10, 5, 10, explicit=True)
    assert horizon == 10 and note is not None and "5 starved step(s) per chunk" in note
    with pytest.raises(RealtimeError, match="--execution sync"):
        workable_horizon(10, 10, 5, explicit=False)


@pytest.mark.slow
def test_rtc_under_latency_executes_what_the_latency_leaves_and_reports_starving(tmp_path):
    """A tiny checkpoint's chunks are 10 actions; 100 ms at aloha_sim's 50 Hz is 5 ticks. The default open-loop
    steps (the whole chunk) used to leave rtc nothing to continue (the same actions as naive) and starve 145 of
    300 steps in silence."""
    import json

    from pi0cli.plugins.manager import load_registry
    from pi0cli.testing import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "tiny", load_registry({}).embodiment("aloha_sim"))
    args = ("eval", "aloha_sim", "--checkpoint", str(ckpt), "--execution", "rtc", "--latency-ms", "100",
            "--episodes", "1", "--no-videos")
    fitted = _pi0(tmp_path, *args, "--json")
    assert fitted.returncode == 0, fitted.stderr
    assert "executing 5 actions of each 10-action chunk (not 10)" in fitted.stderr
    report = json.loads(fitted.stdout)
    assert report["execution"]["execution_horizon"] == 5 and report["starved_steps"] == 0

    starving = _pi0(tmp_path, *args, "--open-loop-steps", "10")
    assert starving.returncode == 0, starving.stderr
    assert "5 starved step(s) per chunk" in starving.stderr and "--open-loop-steps 5 fits" in starving.stderr
    assert " steps starved (no action ready" in starving.stdout, starving.stdout


# ------------------------------------------------------------------------------------------ 9. the smaller ones


def test_train_help_names_every_model_family(tmp_path):
    result = _pi0(tmp_path, "train", "--help")
    assert result.returncode == 0 and "pi0-FAST" in result.stdout and "pi0.5" in result.stdout


def test_memory_budget_prints_a_line_per_compiled_plan_when_not_on_a_terminal(monkeypatch, capsys):
    """A spinner in a log stays blank for the minutes the plans compile; a log gets a line per plan instead."""
    import dataclasses
    import types

    from pi0cli.cli import train as train_cli
    from pi0cli.models.config import preset
    from pi0cli.training import planner
    from pi0cli.training.config import TrainConfig

    config = TrainConfig(name="demo", embodiment="aloha_sim", model=preset("pi0_tiny"))

    def plan_memory(config, budget, *, on_compile, **_):
        for peak in (3 * 2**30, 2**30):
            on_compile(None, peak)
        return types.SimpleNamespace(config=dataclasses.replace(config, batch_size=4))

    monkeypatch.setattr(planner, "plan_memory", plan_memory)
    monkeypatch.setattr(planner, "plan_rows", lambda result: [("peak / device", "1 GiB")])
    assert train_cli._plan(config, "2GiB", allow_freeze_vision=False, allow_no_ema=False).batch_size == 4
    err = capsys.readouterr().err
    assert "planning demo for 2.00 GiB per device" in err
    assert "plan 1 compiled to 3.00 GiB per device" in err and "plan 2 compiled to 1.00 GiB per device" in err


def test_a_state_the_model_cannot_compute_is_refused_without_max_input_std(tmp_path):
    """1e30 used to be served (with an overflow warning in the server log): --max-input-std is off by default,
    but a normalised state whose square overflows float32 is refused whatever it says."""
    import warnings

    import numpy as np

    from pi0cli.plugins.manager import load_registry
    from pi0cli.policy import load_policy
    from pi0cli.policy.policy import InputRangeError
    from pi0cli.testing import make_tiny_checkpoint

    emb = load_registry({}).embodiment("aloha_sim")
    policy = load_policy(make_tiny_checkpoint(tmp_path / "tiny", emb), embodiment=emb)
    assert policy.max_input_std is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning on the way to the one-line refusal
        with pytest.raises(InputRangeError, match="the model's norm layers overflow"):
            policy.prepare(emb.example_observation(0) | {"state": np.full(14, 1e30, np.float32)})
    policy.prepare(emb.example_observation(0) | {"state": np.full(14, 1e3, np.float32)})  # large, but computable
