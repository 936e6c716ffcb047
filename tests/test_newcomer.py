"""What a newcomer trips over in the first hour, driven through the real CLI in subprocesses."""

from __future__ import annotations

import os
import socket
import time

import pytest
from plugin_helpers import run_pi0

from pi0cli.client.policy import ServerUnreachableError, WebsocketClientPolicy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- waiting for a policy server


def test_client_reports_each_wait_and_gives_up_at_the_timeout():
    waits: list[float] = []
    start = time.monotonic()
    with pytest.raises(ServerUnreachableError, match=r"after 1 s"):
        WebsocketClientPolicy(f"ws://127.0.0.1:{_free_port()}", None, connect_timeout=1.0, retry_interval=0.2,
                              on_wait=lambda waited, last: waits.append(waited))
    assert time.monotonic() - start < 3
    assert waits and waits == sorted(waits) and waits[-1] < 1.5


@pytest.mark.parametrize("command", [
    ("eval", "aloha_sim", "--server"),
    ("record", "aloha_sim", "--out", "{tmp}/demos", "--policy"),
])
def test_waiting_for_a_server_says_what_and_how_long_then_fails_once(command, tmp_path):
    args = [part.format(tmp=tmp_path) for part in command]
    start = time.monotonic()
    result = run_pi0(*args, f"ws://127.0.0.1:{_free_port()}", "--connect-timeout", "1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert time.monotonic() - start < 60
    assert "connecting to the policy server at ws://127.0.0.1:" in result.stderr
    assert "waiting up to 1 s" in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "--connect-timeout" in error[0] and "pi0 serve" in error[0], result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------------- help text


def _command_paths() -> list[str]:
    import typer

    from pi0cli.cli.app import app

    paths = []

    def walk(command, prefix: str) -> None:
        if hasattr(command, "commands"):  # a group (typer bundles its own click)
            for name, sub in command.commands.items():
                walk(sub, f"{prefix} {name}".strip())
        else:
            paths.append(prefix)

    walk(typer.main.get_command(app), "")
    return sorted(paths)


def test_every_command_has_examples():
    from pi0cli.cli.helpstyle import EXAMPLES

    paths = _command_paths()
    assert {"train", "eval", "doctor", "embodiments show"} <= set(paths)
    assert set(paths) <= set(EXAMPLES), f"add examples for {sorted(set(paths) - set(EXAMPLES))} to EXAMPLES"


@pytest.mark.parametrize("path", ["eval", "record", "embodiments show", "convert checkpoint", "doctor"])
def test_help_has_examples_no_bool_metavar_and_plain_usage(path):
    result = run_pi0(*path.split(), "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "<bool>" not in text
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage, usage
    assert "Examples" in text and f"pi0 {path}" in text.split("Examples", 1)[1]


# ------------------------------------------------------------------------------ messages that mislead


def _pi0_in(cwd, *args: str, env: dict[str, str] | None = None):
    import subprocess
    import sys

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PI0_")}
    full_env.update({"COLUMNS": "200", **(env or {})})
    return subprocess.run([sys.executable, "-m", "pi0cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=full_env, timeout=120)


def test_train_on_a_missing_dataset_names_the_dataset_not_its_norm_stats(tmp_path):
    missing = str(tmp_path / "nonexistent")
    result = _pi0_in(tmp_path, "train", "pi0_aloha_sim_tiny", "--dataset", missing, "--steps", "1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"dataset {missing!r} not found" in result.stderr
    assert "norm-stats" not in result.stderr
    assert "local cache" not in result.stderr  # a path is not looked up in the cache


def test_a_missing_repo_id_names_the_cache_it_looked_in(tmp_path):
    result = _pi0_in(tmp_path, "norm-stats", "aloha_sim", "--dataset", "someone/missing",
                     env={"HF_HUB_OFFLINE": "1", "HF_LEROBOT_HOME": str(tmp_path / "cache")})
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"local cache {tmp_path / 'cache' / 'someone' / 'missing'}" in result.stderr


# ----------------------------------------------------------------- norm stats remember what they are for


@pytest.fixture(scope="module")
def sim_dataset(tmp_path_factory):
    from pi0cli.data.synthetic import write_synthetic_dataset
    from pi0cli.plugins.manager import load_registry

    root = tmp_path_factory.mktemp("newcomer")
    write_synthetic_dataset(root / "sim", load_registry({}).embodiment("aloha_sim"), episodes=2, frames=16,
                            image_size=(32, 32), tasks=("Transfer cube",))
    return root / "sim"


def test_norm_stats_follow_the_preset_and_record_what_they_were_computed_for(tmp_path, sim_dataset):
    import json

    from pi0cli.normstats import load_norm_stats

    result = _pi0_in(tmp_path, "norm-stats", "aloha_sim", "--dataset", str(sim_dataset), "--preset",
                     "pi0_aloha_sim_tiny")
    assert result.returncode == 0, result.stderr
    assert "action chunks of 10" in result.stdout  # the tiny preset's horizon, not the default model's 50
    file = tmp_path / "assets" / "lerobot" / "aloha_sim_transfer_cube_human" / "norm_stats.json"
    raw = json.loads(file.read_text())
    assert set(raw) == {"norm_stats", "computed_for"}  # the reference reads "norm_stats" and ignores the rest
    assert set(raw["norm_stats"]) == {"state", "actions"}
    assert raw["computed_for"]["embodiment"] == "aloha_sim" and raw["computed_for"]["horizon"] == 10
    assert raw["computed_for"]["dataset_root"] == str(sim_dataset) and raw["computed_for"]["episodes"] == 2
    assert set(load_norm_stats(file)) == {"state", "actions"}

    wrong = _pi0_in(tmp_path, "norm-stats", "droid", "--dataset", str(sim_dataset), "--preset", "pi0_aloha_sim_tiny")
    assert wrong.returncode == 1 and "trains embodiment 'aloha_sim'" in wrong.stderr


def test_train_warns_when_the_stats_horizon_differs(tmp_path, sim_dataset):
    made = _pi0_in(tmp_path, "norm-stats", "aloha_sim", "--dataset", str(sim_dataset), "--horizon", "50")
    assert made.returncode == 0, made.stderr
    # --from a missing checkpoint stops the run right after the checks, before any training.
    result = _pi0_in(tmp_path, "train", "pi0_aloha_sim_tiny", "--dataset", str(sim_dataset), "--steps", "1",
                     "--from", str(tmp_path / "missing"))
    assert result.returncode == 1, result.stderr
    assert "computed over 50-step action chunks, but 'pi0_aloha_sim_tiny' predicts 10" in result.stderr
    assert "--preset pi0_aloha_sim_tiny" in result.stderr


def test_train_refuses_stats_of_another_embodiment(tmp_path):
    from pi0cli.errors import Pi0Error
    from pi0cli.normstats import save_norm_stats
    from pi0cli.plugins.manager import load_registry
    from pi0cli.testing import example_norm_stats
    from pi0cli.training.launch import check_norm_stats_fit

    registry = load_registry({})
    config = registry.preset("pi0_aloha_sim_tiny")
    stats = example_norm_stats(registry.embodiment("aloha_sim"))
    for_droid = save_norm_stats(stats, tmp_path / "a", computed_for={"embodiment": "droid", "horizon": 10})
    with pytest.raises(Pi0Error, match="computed for embodiment 'droid'"):
        check_norm_stats_fit(config, for_droid)
    fits = save_norm_stats(stats, tmp_path / "b", computed_for={"embodiment": "aloha_sim", "horizon": 10})
    reference = save_norm_stats(stats, tmp_path / "c")  # a reference file says nothing: no complaint
    assert check_norm_stats_fit(config, fits) == [] and check_norm_stats_fit(config, reference) == []


@pytest.mark.slow
def test_offline_eval_warns_about_training_episodes(tmp_path, sim_dataset):
    import json

    from pi0cli.plugins.manager import load_registry
    from pi0cli.testing import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "ckpt", load_registry({}).embodiment("aloha_sim"))
    config_file = next(ckpt.rglob("pi0_config.json"))
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "dataset_root": str(sim_dataset)}))
    args = ("eval", "--dataset", str(sim_dataset), "--checkpoint", str(ckpt), "--episodes", "1", "--stride", "8")
    result = _pi0_in(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert "are training episodes of this checkpoint" in result.stderr
    assert "holding the current position instead: action MAE" in result.stdout

    config_file.write_text(json.dumps(config))  # trained elsewhere: no warning
    result = _pi0_in(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert "training episodes" not in result.stderr


@pytest.mark.slow
def test_offline_eval_against_the_runs_initial_weights(tmp_path, sim_dataset):
    """--vs-initial evaluates the weights training started from (the run's seed) on the same frames and says
    whether training lowered the error; a checkpoint that records no seed gets one clear error instead."""
    import json

    from pi0cli.plugins.manager import load_registry
    from pi0cli.testing import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "ckpt", load_registry({}).embodiment("aloha_sim"))
    args = ("eval", "--dataset", str(sim_dataset), "--checkpoint", str(ckpt), "--episodes", "1", "--stride", "8",
            "--vs-initial")
    result = _pi0_in(tmp_path, *args)
    assert result.returncode == 1 and "does not record the seed its training run started from" in result.stderr

    config_file = next(ckpt.rglob("pi0_config.json"))
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "train_config": {"seed": 3, "init_from": None}}))
    result = _pi0_in(tmp_path, *args, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    # make_tiny_checkpoint's weights are not the model's own initialisation: the two errors differ.
    assert report["initial_weights"]["mae"] > 0 and report["initial_weights"]["mae"] != report["mae"]
    loss = report["heldout_loss"]
    assert set(loss) == {"initial", "trained"} and loss["initial"] != loss["trained"] and loss["trained"] > 0
    result = _pi0_in(tmp_path, *args)
    assert "held-out action MAE with the run's initial weights" in result.stdout, result.stderr
    assert "held-out loss (the training objective, no augmentation) with the run's initial weights" in result.stdout


@pytest.mark.slow
def test_heldout_loss_is_paired_and_follows_the_weights(sim_dataset):
    """The same model twice gives the same loss (same draws); a model whose outputs are scaled differs."""
    from pi0cli.evaluation.offline import heldout_loss, open_frames
    from pi0cli.models.params import build_model
    from pi0cli.models.tokenizer import PaligemmaTokenizer
    from pi0cli.pipeline import Pipeline
    from pi0cli.plugins.manager import load_registry
    from pi0cli.testing import example_norm_stats, random_params, tiny_model_config
    from pi0cli.training.tiny_tokenizer import train_tiny_tokenizer

    emb = load_registry({}).embodiment("aloha_sim")
    config = tiny_model_config(emb)
    tok = PaligemmaTokenizer(config.token_len, model=train_tiny_tokenizer([emb.default_prompt or "x"]))
    pipeline = Pipeline.create(emb, config, example_norm_stats(emb), tokenizer=tok)
    a, b = build_model(config, random_params(config, 0)), build_model(config, random_params(config, 1))
    frames = open_frames(str(sim_dataset), emb, config.action_horizon, [0, 1])
    loss = heldout_loss(frames, {"a": a, "a again": a, "b": b}, pipeline.training_inputs(), stride=4, batch_size=4)
    assert loss["a"] == loss["a again"] and loss["a"] != loss["b"] and loss["a"] > 0


def test_learning_verdict_says_what_the_numbers_show():
    from pi0cli.cli.evaluate import _learning_verdict

    assert "1.3x lower: training learned" in _learning_verdict(0.31, 0.24, 0.07)
    assert "holding still (0.0700) is still better" in _learning_verdict(0.31, 0.24, 0.07)
    assert "it also beats holding still" in _learning_verdict(0.31, 0.05, 0.07)
    assert "higher: training has not improved" in _learning_verdict(0.2, 0.24, None)
    assert "within 5%: training has not changed it measurably" in _learning_verdict(0.3131, 0.3120, 0.07)
    assert "(lower: training learned" in _learning_verdict(0.2, 0.0, None)


# ------------------------------------------------------------------------------- third-party noise


NOISE = ("Svt[", "[mp4 @", "Map:", "examples/s")


@pytest.mark.slow
def test_record_prints_our_lines_and_no_encoder_chatter(tmp_path):
    result = _pi0_in(tmp_path, "record", "aloha_sim", "--scripted", "--episodes", "1", "--out", "demos")
    assert result.returncode == 0, result.stderr
    for line in (result.stdout + result.stderr).splitlines():
        assert not any(marker in line for marker in NOISE), line
    assert "1 of 1 attempts succeeded" in result.stdout


def test_verbose_leaves_third_party_output_alone(monkeypatch):
    from pi0cli.cli import noise

    for name in ("SVT_LOG", "HF_DATASETS_DISABLE_PROGRESS_BARS", noise.VERBOSE_ENV):
        monkeypatch.delenv(name, raising=False)
    noise.quiet_third_party("embodiments", verbose_output=True)
    assert "SVT_LOG" not in os.environ and noise.verbose()
    monkeypatch.delenv(noise.VERBOSE_ENV)
    noise.quiet_third_party("embodiments")
    assert os.environ["SVT_LOG"] == "1" and os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1"


def test_offline_hold_position_baseline_is_the_error_of_holding(sim_dataset):
    import numpy as np

    from pi0cli.evaluation.offline import evaluate_offline, open_frames
    from pi0cli.plugins.manager import load_registry
    from pi0cli.transforms import lookup

    emb = load_registry({}).embodiment("aloha_sim")

    class Hold:
        def infer_batch(self, observations):
            return [{"actions": np.tile(np.concatenate([np.ravel(lookup(o, f.key)) for f in emb.state]), (10, 1))}
                    for o in observations]

    report = evaluate_offline(open_frames(str(sim_dataset), emb, 10, [0, 1]), Hold(), emb, stride=3)
    assert report["hold_position_mae"] > 0
    assert report["mae"] == pytest.approx(report["hold_position_mae"], rel=1e-6)


# --------------------------------------------------------------- experiment folder instead of a step


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A training experiment folder: complete steps 30 and 60, and a step 90 orbax had not finished."""
    import shutil

    from pi0cli.plugins.manager import load_registry
    from pi0cli.testing import make_tiny_checkpoint

    exp = tmp_path_factory.mktemp("checkpoints") / "pi0_aloha_sim_tiny" / "demo"
    step = make_tiny_checkpoint(exp / "60", load_registry({}).embodiment("aloha_sim"))
    # As in a training step (written by the CheckpointManager): orbax then logs a note on every read.
    (step / "params" / "_CHECKPOINT_METADATA").unlink(missing_ok=True)
    shutil.copytree(step, exp / "30")
    (exp / "90.orbax-checkpoint-tmp-1700000000").mkdir()
    (exp / "90.orbax-checkpoint-tmp-1700000000" / "params").mkdir()
    (exp / "metrics.jsonl").write_text("")
    return exp


def test_resolve_step_takes_the_latest_complete_step(experiment, tmp_path):
    from pi0cli.checkpoint import CheckpointError, resolve_step

    assert resolve_step(experiment / "30") == (experiment / "30", None)
    step, note = resolve_step(experiment)
    assert step == experiment / "60" and "latest complete step, 60" in note
    (tmp_path / "random.bin").write_bytes(b"\0" * 16)
    with pytest.raises(CheckpointError, match="is a file, not a checkpoint"):
        resolve_step(tmp_path / "random.bin")


@pytest.mark.parametrize("command", ["serve", "eval", "record"])
def test_an_existing_file_is_not_called_missing(command, tmp_path):
    (tmp_path / "random.bin").write_bytes(b"\0" * 16)
    args = {"serve": ("serve", "--embodiment", "aloha_sim"), "eval": ("eval", "aloha_sim"),
            "record": ("record", "aloha_sim", "--out", "demos")}[command]
    result = _pi0_in(tmp_path, *args, "--checkpoint", "random.bin")
    assert result.returncode == 1, result.stderr
    assert "random.bin is a file, not a checkpoint" in result.stderr and "does not exist" not in result.stderr


def test_convert_accepts_an_experiment_folder_and_says_which_step(experiment, tmp_path):
    result = _pi0_in(tmp_path, "convert", "checkpoint", str(experiment), "--to", "pi0", "--out", "out")
    assert result.returncode == 0, result.stderr
    assert f"using its latest complete step, 60 ({experiment / '60'})" in result.stderr
    assert (tmp_path / "out" / "params").is_dir()


@pytest.mark.slow
def test_offline_eval_accepts_an_experiment_folder(experiment, tmp_path, sim_dataset):
    result = _pi0_in(tmp_path, "eval", "--dataset", str(sim_dataset), "--checkpoint", str(experiment),
                     "--episodes", "1", "--stride", "8")
    assert result.returncode == 0, result.stderr
    assert "using its latest complete step, 60" in result.stderr and "action MAE" in result.stdout
    assert "absl" not in result.stderr and "Warning" not in result.stderr  # orbax's notes on every read


def test_train_from_an_experiment_folder_takes_its_latest_step(experiment, tmp_path):
    import json

    result = _pi0_in(tmp_path, "train", "pi0_aloha_sim_tiny", "--from", str(experiment), "--print-config")
    assert result.returncode == 0, result.stderr
    assert f"using its latest complete step, 60 ({experiment / '60'})" in result.stderr
    assert json.loads(result.stdout)["init_from"] == str(experiment / "60")


def _first_stderr_line_with(needle: str, *args: str, cwd, timeout: float = 120.0) -> str | None:
    """Start the CLI, wait for a stderr line containing ``needle`` (or the end), then stop it."""
    import subprocess
    import sys
    import threading

    env = {k: v for k, v in os.environ.items() if not k.startswith("PI0_")} | {"COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "pi0cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    found: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if needle in line:
                found.append(line)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    proc.kill()
    proc.wait()
    return found[0] if found else None


@pytest.mark.parametrize("command", [
    ("serve", "--embodiment", "aloha_sim", "--port", "0"),
    ("record", "aloha_sim", "--episodes", "1", "--out", "rollouts"),
    ("eval", "aloha_sim", "--episodes", "1"),
])
def test_serve_record_and_eval_take_an_experiment_folder_and_say_which_step(command, experiment, tmp_path):
    line = _first_stderr_line_with("latest complete step", *command, "--checkpoint", str(experiment), cwd=tmp_path)
    assert line is not None and f"step, 60 ({experiment / '60'})" in line


@pytest.mark.parametrize("command", [("eval", "aloha_sim"), ("record", "aloha_sim", "--out", "demos")])
def test_the_model_flag_the_hint_names_exists(command, experiment, tmp_path):
    import shutil

    bare = tmp_path / "openpi_like"
    shutil.copytree(experiment / "60", bare)
    next(bare.rglob("pi0_config.json")).unlink()  # a reference checkpoint records no model config
    result = _pi0_in(tmp_path, *command, "--checkpoint", str(bare))
    assert result.returncode == 1 and "--model" in result.stderr, result.stderr
    accepted = _pi0_in(tmp_path, *command, "--checkpoint", str(tmp_path / "missing"), "--model", "pi0")
    assert accepted.returncode == 1 and "does not exist" in accepted.stderr, accepted.stderr  # not a usage error


def test_undecodable_json_is_one_error_naming_the_file(tmp_path):
    from pi0cli.checkpoint import CheckpointError, read_checkpoint_config
    from pi0cli.errors import NormStatsError
    from pi0cli.normstats import load_norm_stats

    (tmp_path / "pi0_config.json").write_text("{")
    with pytest.raises(CheckpointError, match=r"pi0_config.json is not valid JSON \("):
        read_checkpoint_config(tmp_path)
    (tmp_path / "norm_stats.json").write_bytes(b"\xff\xfe")
    with pytest.raises(NormStatsError, match=r"norm_stats.json is not valid JSON .*; recompute it with"):
        load_norm_stats(tmp_path)


def test_simulator_pins_resolve_without_backtracking():
    """gym-aloha 0.1.5 needs mujoco < 3.9, and dm-control releases after 1.0.41 need a newer mujoco: without
    exact pins pip backtracks through every newer dm-control (~56 MB each) before settling."""
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement

    aloha = Path(__file__).resolve().parents[1] / "embodiments" / "aloha" / "pyproject.toml"
    deps = {r.name: r for r in map(Requirement, tomllib.loads(aloha.read_text())["project"]["dependencies"])}
    assert str(deps["dm-control"].specifier) == "==1.0.41"
    assert not deps["mujoco"].specifier.contains("3.9.0") and deps["mujoco"].specifier.contains("3.8.1")
    assert not deps["gym-aloha"].specifier.contains("0.2.0")
