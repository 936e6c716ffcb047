"""End to end: `pi0 serve` in a subprocess on 127.0.0.1 with a tiny checkpoint, driven by the unmodified
openpi-client from PyPI and by pi0cli.client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from serving_helpers import free_port, sim_obs

PI0 = str(Path(sys.executable).parent / "pi0")


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PI0_LOAD_PLUGINS", None)
    env.update(PI0_CACHE_DIR=str(tmp_path / "cache"), OPENPI_DATA_HOME=str(tmp_path / "openpi"))
    return env


def _health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")
def test_pi0_serve_with_openpi_client_and_pi0_client(tiny_checkpoint, tmp_path):
    reason = "pip install --no-deps openpi-client dm-tree pillow"
    OpenpiBroker = pytest.importorskip("openpi_client.action_chunk_broker", reason=reason).ActionChunkBroker
    OpenpiClient = pytest.importorskip("openpi_client.websocket_client_policy", reason=reason).WebsocketClientPolicy
    from websockets.exceptions import InvalidStatus

    from pi0cli.client import ActionChunkBroker, Environment, PolicyAgent, Runtime, Subscriber, WebsocketClientPolicy
    from pi0cli.client.policy import PolicyServerError, wait_until_ready

    port = free_port()
    record = tmp_path / "rec"
    proc = subprocess.Popen(
        [PI0, "serve", "--checkpoint", str(tiny_checkpoint), "--embodiment", "aloha_sim", "--port", str(port),
         "--max-batch", "2", "--api-key", "k3y", "--record", str(record)],
        env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        # pi0cli.client starts before the server listens and retries until it does.
        early: dict = {}
        thread = threading.Thread(target=lambda: early.update(
            client=WebsocketClientPolicy("127.0.0.1", port, api_key="k3y", connect_timeout=240)))
        thread.start()
        wait_until_ready("127.0.0.1", port, timeout=240)
        assert _health(port) == 200
        metrics = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": "Api-Key k3y"})
        with urllib.request.urlopen(metrics, timeout=10) as r:
            assert r.status == 200 and b"pi0_ready 1.0" in r.read()
        thread.join(60)
        ours = early["client"]
        assert ours.get_server_metadata() == {}

        # The reference client, unmodified.
        ref = OpenpiClient("127.0.0.1", port, api_key="k3y")
        assert ref.get_server_metadata() == {}
        reply = ref.infer(sim_obs(0))
        assert reply["actions"].shape == (10, 14) and reply["actions"].dtype == np.float32
        assert set(reply) == {"actions", "policy_timing", "server_timing"}
        broker = OpenpiBroker(ref, action_horizon=10)
        assert broker.infer(sim_obs(1))["actions"].shape == (14,)
        with pytest.raises(RuntimeError, match="cam_high"):
            ref.infer({"state": np.zeros(14, np.float32)})
        assert ref.infer(sim_obs(2))["actions"].shape == (10, 14)
        for key in (None, "wrong"):
            with pytest.raises(InvalidStatus):
                OpenpiClient("127.0.0.1", port, api_key=key)

        # pi0cli.client: policy, broker, runtime.
        assert ours.infer(sim_obs(3))["actions"].shape == (10, 14)
        with pytest.raises(PolicyServerError, match="API key"):
            WebsocketClientPolicy("127.0.0.1", port, api_key="wrong", connect_timeout=5)

        class Sim(Environment):
            def __init__(self):
                self.actions = []

            def get_observation(self):
                return sim_obs(len(self.actions))

            def apply_action(self, action):
                self.actions.append(action["actions"])

        class Counter(Subscriber):
            steps = 0

            def on_step(self, observation, action):
                Counter.steps += 1

        env = Sim()
        Runtime(env, PolicyAgent(ActionChunkBroker(ours, 5)), [Counter()], max_hz=200, max_episode_steps=12).run()
        assert len(env.actions) == 12 and Counter.steps == 12
        assert all(a.shape == (14,) for a in env.actions)
        ours.close()
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "ready in" in out and f"ws://127.0.0.1:{port}" in out
    from pi0cli.serving.recording import load_records

    records = list(load_records(record))
    assert len(records) == 3 + 1 + 3  # every served request (the 12 runtime steps ask at steps 0, 5, 10)
    assert records[0]["outputs"]["actions"].shape == (10, 14)


def test_default_checkpoint_without_network_fails_with_one_clear_line(tmp_path):
    env = _env(tmp_path) | {"PI0_OFFLINE": "1"}
    result = subprocess.run([PI0, "serve", "--embodiment", "aloha_sim", "--port", str(free_port())], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "gs://openpi-assets/checkpoints/pi0_aloha_sim" in lines[0]
    assert str(tmp_path / "cache") in lines[0] and "--checkpoint" in lines[0]


def test_record_dir_that_cannot_be_created_is_one_line(tiny_checkpoint, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = subprocess.run([PI0, "serve", "--embodiment", "aloha_sim", "--checkpoint", str(tiny_checkpoint),
                             "--record", str(blocker / "rec"), "--port", str(free_port())],
                            env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "cannot record to" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_bad_checkpoint_path_is_one_line(tmp_path):
    result = subprocess.run([PI0, "serve", "--embodiment", "aloha_sim", "--checkpoint", str(tmp_path / "nope")],
                            env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "does not exist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_client_imports_without_jax():
    code = ("import sys, pi0cli.client, pi0cli.serving.protocol\n"
            "heavy = [m for m in ('jax', 'flax', 'torch', 'lerobot', 'sentencepiece') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
