"""pi0-FAST through the pipeline and every CLI flow: norm stats + FAST tokenizer, train, serve (unmodified
openpi-client), eval."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pi0cli.models.fast_decode import DEFAULT_FAST_DECODE

PI0 = str(Path(sys.executable).parent / "pi0")


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    done = subprocess.run([PI0, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"pi0 {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else "pi0 serve exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError("pi0 serve did not become healthy")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")
def test_train_serve_eval_end_to_end_on_a_lerobot_dataset(tmp_path):
    client = pytest.importorskip("openpi_client.websocket_client_policy",
                                 reason="pip install --no-deps openpi-client dm-tree pillow")
    from pi0cli.data.synthetic import write_synthetic_dataset
    from pi0cli.plugins.manager import get_registry

    emb = get_registry().embodiment("aloha_sim")
    env = {**os.environ, "PI0_CACHE_DIR": str(tmp_path / "cache"), "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    env.pop("PI0_LOAD_PLUGINS", None)
    dataset = write_synthetic_dataset(tmp_path / "demos", emb, episodes=2, frames=(24, 16), seed=3,
                                      tasks=("Transfer cube",))

    # 1. Norm stats and a FAST tokenizer fitted on the dataset's normalised chunks; its vocabulary defaults to what
    #    fits the tiny model's 1024 ids beside the 320-piece prompt tokenizer and the 128 reserved ids.
    out = _run(["norm-stats", "aloha_sim", "--dataset", str(dataset), "--preset", "pi0_fast_aloha_sim_tiny",
                "--fast-tokenizer", "--json"], tmp_path, env)
    fast = json.loads(out)["fast"]
    assert fast["decode_failures"] == 0 and fast["max_abs_error"] <= 0.5 * np.sqrt(10) / 10
    assert fast["vocab_size"] == 1024 - 1 - 128 - 320
    assert (tmp_path / fast["fast_tokenizer"] / "tokenizer.json").is_file()

    # 2. Train the tiny pi0-FAST preset a few steps; the checkpoint carries the FAST tokenizer.
    _run(["train", "pi0_fast_aloha_sim_tiny", "--dataset", str(dataset), "--steps", "3"], tmp_path, env)
    step = tmp_path / "checkpoints" / "pi0_fast_aloha_sim_tiny" / "default" / "3"
    assert list((step / "assets").rglob("fast_tokenizer/tokenizer.json"))

    # 3. Serve it; the unmodified openpi client gets an action chunk and the decode-failure count.
    port = _free_port()
    proc = subprocess.Popen([PI0, "serve", "--checkpoint", str(step), "--embodiment", "aloha_sim", "--port",
                             str(port), "--max-batch", "1", "--max-decoding-steps", "64"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_healthy(port, proc)
        policy = client.WebsocketClientPolicy("127.0.0.1", port)
        reply = policy.infer({"prompt": "Transfer cube", **emb.example_observation(0)})
        assert reply["actions"].shape == (10, 14) and np.isfinite(reply["actions"]).all()
        assert int(reply["decode_failures"]) in (0, 1)
        assert 1 <= int(reply["action_tokens"]) <= 64  # --max-decoding-steps bounds the decoding loop

        # 4. Evaluate closed-loop against the server: the report counts the chunks that did not decode.
        _run(["eval", "aloha_sim", "--server", f"ws://127.0.0.1:{port}", "--episodes", "1", "--out", "eval",
              "--no-videos"], tmp_path, env)
        report = json.loads((tmp_path / "eval" / "report.json").read_text())
        assert report["episodes"] == 1 and report["chunks"] > 0
        assert 0 <= report["decode_failures"] <= report["chunks"]
        assert report["decode_failures_by_rule"] == {DEFAULT_FAST_DECODE: report["decode_failures"]}
        assert 1 <= report["mean_action_tokens"] <= 64

        # 5. The server counts the same failures on /metrics (the first reply's included).
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        counted = [line for line in text.splitlines()
                   if line.startswith(f'pi0_action_decode_failures_total{{rule="{DEFAULT_FAST_DECODE}"}} ')]
        assert counted, text
        assert float(counted[0].split()[1]) == report["decode_failures"] + int(reply["decode_failures"])
    finally:
        proc.terminate()
        proc.wait(30)


def _fast_pipeline(embodiment_name: str = "aloha_sim"):
    import dataclasses

    from test_fast_tokenizer import smooth_chunks, train_sentencepiece

    from pi0cli.models.config import preset
    from pi0cli.models.fast_tokenizer import FastActionTokenizer
    from pi0cli.models.tokenizer import FASTTokenizer, PaligemmaTokenizer
    from pi0cli.normstats import NormStats
    from pi0cli.pipeline import Pipeline
    from pi0cli.plugins.manager import get_registry

    emb = get_registry().embodiment(embodiment_name)
    model = dataclasses.replace(preset("pi0_fast_tiny"), action_dim=emb.action_dim, action_horizon=10,
                                max_token_len=128)
    fast = FastActionTokenizer.fit(list(smooth_chunks(100, horizon=10, dim=emb.action_dim)), vocab_size=512)
    tok = FASTTokenizer(PaligemmaTokenizer(128, train_sentencepiece()), fast, max_len=128, vocab_size=1024)

    def stats(dim: int) -> NormStats:
        return NormStats(mean=np.zeros(dim), std=np.ones(dim), q01=-np.ones(dim), q99=np.ones(dim))

    norm = {"state": stats(emb.state_dim), "actions": stats(emb.action_dim)}
    return emb, tok, Pipeline.create(emb, model, norm, tokenizer=tok)


def test_pipeline_builds_fast_inputs_and_decodes_outputs():
    emb, tok, pipeline = _fast_pipeline()
    data = pipeline.inference_inputs()({"prompt": "Transfer cube", **emb.example_observation(0)})
    assert sorted(data["image"]) == ["base_0_rgb", "base_1_rgb", "wrist_0_rgb"]
    # aloha_sim has only its top camera: base_1 is a zero image shown (as the reference's padding image), the
    # absent wrist camera is masked (the case the reference's decoder gets wrong; pi0's default does not).
    assert {k: bool(m) for k, m in data["image_mask"].items()} == {
        "base_0_rgb": True, "base_1_rgb": True, "wrist_0_rgb": False}
    n = int(data["tokenized_prompt_mask"].sum())
    assert data["tokenized_prompt"].shape == (128,) and (data["token_ar_mask"] == 0).all() and n > 0
    assert not data["token_loss_mask"].any() and data["state"].shape == (emb.state_dim,)
    # A generated postfix decodes to a chunk; garbage counts as a failure and gives the fallback chunk.
    chunk = np.clip(np.linspace(-0.5, 0.5, 10)[:, None] * np.ones((1, emb.action_dim)), -1, 1)
    postfix = tok.postfix_ids(chunk)
    good = pipeline.outputs()({"state": data["state"], "actions": np.array(postfix + [0] * 20)})
    bad = pipeline.outputs()({"state": data["state"], "actions": np.zeros(30, np.int32)})
    assert good["decode_failures"] == 0 and bad["decode_failures"] == 1
    assert good["actions"].shape == bad["actions"].shape == (10, emb.action_dim)


def test_pipeline_training_row_has_the_action_tokens():
    emb, tok, pipeline = _fast_pipeline()
    chunk = np.linspace(-0.5, 0.5, 10)[:, None] * np.ones((1, emb.action_dim))
    row = {"prompt": "Transfer cube", **emb.example_observation(0), "actions": chunk}
    data = compose_model_step(pipeline)(row)
    ar, loss = data["token_ar_mask"], data["token_loss_mask"]
    assert ar.sum() == loss.sum() > 0 and (loss == (ar == 1)).all()
    assert data["actions"].shape == (10, emb.action_dim) and not data["actions_is_pad"].any()


def compose_model_step(pipeline):
    """Robot inputs, normalisation and the model step: the training chain minus the dataset repack."""
    from pi0cli.transforms import compose

    return compose(pipeline.robot_inputs(), pipeline._normalize(), pipeline._model_inputs())


def test_pipeline_refuses_fast_without_a_fast_tokenizer():
    from pi0cli.models.config import preset
    from pi0cli.pipeline import Pipeline, PipelineError
    from pi0cli.plugins.manager import get_registry

    emb = get_registry().embodiment("aloha_sim")
    with pytest.raises(PipelineError, match="needs a FASTTokenizer"):
        Pipeline.create(emb, preset("pi0_fast_tiny", action_dim=14), None, tokenizer=None)
