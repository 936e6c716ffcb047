"""The websocket server around a fake (numpy) policy: protocol, health, auth, errors, limits, batching,
isolation between clients, recording. Fast: no JAX model here (see test_e2e_serve.py for the real one)."""

from __future__ import annotations

import concurrent.futures
import socket
import threading
import urllib.error
import urllib.request

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving_helpers import HORIZON, fake_policy, sim_obs
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from pi0cli.serving import protocol
from pi0cli.serving.server import PolicyServer, ServerThread

KEY = {"Authorization": "Api-Key secret"}


def uri(thread) -> str:
    return f"ws://127.0.0.1:{thread.port}"


def health(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def open_ws(thread, headers=KEY):
    ws = connect(uri(thread), additional_headers=headers, compression=None, max_size=None, open_timeout=10).__enter__()
    metadata = protocol.unpackb(ws.recv(timeout=10))
    return ws, metadata


def test_health_is_503_until_every_batch_size_is_compiled(aloha_sim):
    policy = fake_policy(aloha_sim)
    gate = threading.Event()
    compiled = []
    real_warmup = policy.warmup

    def warmup():
        gate.wait(30)
        compiled.append(real_warmup())

    policy.warmup = warmup
    with ServerThread(PolicyServer(policy, embodiment=aloha_sim, port=0)).start(wait_ready=False) as thread:
        assert health(thread.port) == (503, "compiling\n")
        gate.set()
        thread.server.batcher.ready.wait(10)
        assert health(thread.port) == (200, "OK\n")
        assert set(compiled[0]) == {1, 2, 4, 8}


@pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")
def test_metadata_first_then_actions_with_openpi_client(fake_server, aloha_sim):
    WebsocketClientPolicy = pytest.importorskip(
        "openpi_client.websocket_client_policy", reason="pip install --no-deps openpi-client dm-tree pillow"
    ).WebsocketClientPolicy

    client = WebsocketClientPolicy("127.0.0.1", fake_server.port, api_key="secret")
    assert client.get_server_metadata() == {"reset_pose": [0.0, -1.5, 1.5], "server": "fake"}
    obs = sim_obs(1)
    reply = client.infer(obs)
    assert set(reply) == {"actions", "policy_timing", "server_timing"}
    assert reply["actions"].shape == (HORIZON, 14) and reply["actions"].dtype == np.float32
    assert reply["policy_timing"]["infer_ms"] >= 0 and reply["server_timing"]["infer_ms"] >= 0
    np.testing.assert_allclose(reply["actions"][0], aloha_sim.outputs(aloha_sim.inputs(obs) | {
        "actions": np.pad(aloha_sim.inputs(obs)["state"], (0, 18))[None]})["actions"][0], rtol=1e-5)
    second = client.infer(obs)
    assert "prev_total_ms" in second["server_timing"]


@pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")
def test_api_key_is_required(fake_server):
    WebsocketClientPolicy = pytest.importorskip(
        "openpi_client.websocket_client_policy", reason="pip install --no-deps openpi-client dm-tree pillow"
    ).WebsocketClientPolicy

    for key in (None, "wrong"):
        with pytest.raises(InvalidStatus) as info:
            WebsocketClientPolicy("127.0.0.1", fake_server.port, api_key=key)
        assert info.value.response.status_code == 401
    assert health(fake_server.port)[0] == 200  # the health check needs no key


def test_errors_are_text_frames_and_the_connection_keeps_serving(fake_server):
    ws, _ = open_ws(fake_server)
    good = protocol.packb(sim_obs())
    bad_frames = {
        b"\xc1garbage": "not a msgpack",
        b"\x00\x01garbage": "more than one msgpack object",
        "a text frame": "text frame",
        protocol.packb([1, 2]): "must be a msgpack map",
        protocol.packb({"state": np.zeros(14, np.float32)}): "cam_high",
        protocol.packb(sim_obs() | {"state": np.zeros(13, np.float32)}): "shape (14,)",
        protocol.packb(sim_obs() | {"state": np.full(14, np.nan, np.float32)}): "NaN",
        protocol.packb(sim_obs() | {"state": np.zeros(14, np.complex64).real.astype("<f2")}): None,
        protocol.packb(sim_obs() | {"images": {"cam_high": np.zeros((5, 5), np.uint8)}}): "HxWx3",
        protocol.packb(sim_obs() | {"prompt": 7}): "prompt",
    }
    for frame, words in bad_frames.items():
        ws.send(frame)
        reply = ws.recv(timeout=10)
        if words is None:  # float16 state is numeric: accepted
            assert isinstance(reply, bytes)
            continue
        assert isinstance(reply, str) and reply.startswith("Error: "), reply
        assert words in reply, reply
        ws.send(good)
        assert isinstance(ws.recv(timeout=10), bytes)
    ws.close()


def test_oversized_message_closes_only_that_connection(fake_server):
    ws, _ = open_ws(fake_server)
    other, _ = open_ws(fake_server)
    ws.send(b"\0" * (2**20 + 10))
    with pytest.raises(ConnectionClosed) as info:
        ws.recv(timeout=10)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    other.send(protocol.packb(sim_obs()))
    assert isinstance(other.recv(timeout=10), bytes)
    other.close()


_json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


def _mutations() -> st.SearchStrategy:
    """Almost-valid observations with exactly one thing broken."""
    obs = sim_obs()
    choices = [
        {k: v for k, v in obs.items() if k != "images"},
        {k: v for k, v in obs.items() if k != "state"},
        obs | {"state": np.zeros(15, np.float32)},
        obs | {"state": np.array([np.inf] * 14, np.float32)},
        obs | {"state": "fourteen numbers"},
        obs | {"images": {"cam_high": np.zeros((224, 224), np.uint8)}},
        obs | {"images": {"cam_high": np.zeros((3, 224, 224), np.float32) + 2.0}},
        obs | {"images": "a picture"},
        obs | {"prompt": ["not", "a", "string"]},
    ]
    return st.sampled_from(choices).map(protocol.packb)


def _raw_arrays() -> st.SearchStrategy:
    """Hand-built __ndarray__ maps with inconsistent fields."""
    return st.builds(
        lambda data, dtype, shape: msgpack.packb({"state": {b"__ndarray__": True, b"data": data, b"dtype": dtype,
                                                            b"shape": shape}}),
        st.binary(max_size=64), st.sampled_from(["<f4", "|O", "<c8", "|V8", "xx", "<f4\x00", "", "<U4"]),
        st.lists(st.integers(-3, 20), max_size=3),
    )


frames = st.one_of(
    st.binary(max_size=256),
    st.text(max_size=64),
    _json_like.map(lambda v: msgpack.packb(v, use_bin_type=True)),
    _mutations(),
    _raw_arrays(),
)


def test_fuzz_every_bad_frame_gets_an_error_text_and_the_server_survives(fake_server):
    ws, _ = open_ws(fake_server)
    seen = []

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(frames)
    def check(frame):
        ws.send(frame)
        reply = ws.recv(timeout=10)
        seen.append(frame)
        assert isinstance(reply, str) and reply.startswith("Error: "), (frame, reply)

    check()
    assert len(seen) >= 100
    ws.send(protocol.packb(sim_obs()))
    reply = protocol.unpackb(ws.recv(timeout=10))
    assert reply["actions"].shape == (HORIZON, 14)
    ws.close()
    # ... and the server still takes new connections.
    ws2, _ = open_ws(fake_server)
    ws2.send(protocol.packb(sim_obs()))
    assert isinstance(ws2.recv(timeout=10), bytes)
    ws2.close()


def test_requests_from_many_connections_are_batched_and_unbatched_correctly(aloha_sim):
    policy = fake_policy(aloha_sim, delay_s=0.05)
    server = PolicyServer(policy, embodiment=aloha_sim, port=0, max_batch=8, batch_window_ms=20)
    with ServerThread(server) as thread:
        def client(i: int) -> None:
            ws, _ = open_ws(thread, headers=None)
            for j in range(5):
                obs = sim_obs(100 * i + j)
                ws.send(protocol.packb(obs))
                reply = protocol.unpackb(ws.recv(timeout=30))
                expected = aloha_sim.outputs({"actions": np.pad(aloha_sim.inputs(obs)["state"], (0, 18))[None]})
                np.testing.assert_allclose(reply["actions"][:1], expected["actions"], rtol=1e-5, atol=1e-6)
            ws.close()

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(client, range(8)))
        stats = server.batcher.stats
        assert stats.items == 40
        assert max(stats.sizes) > 1, stats.sizes  # several connections shared one model call
        assert stats.batches < 40


def test_a_stalled_client_does_not_stall_the_others(fake_server):
    # One client floods requests and never reads a reply; another sends half a frame and stops.
    flood, _ = open_ws(fake_server)
    frame = protocol.packb(sim_obs())

    def flood_sender() -> None:
        try:
            for _ in range(200):
                flood.send(frame)
        except (ConnectionClosed, OSError):
            pass

    sender = threading.Thread(target=flood_sender, daemon=True)
    sender.start()
    half = socket.create_connection(("127.0.0.1", fake_server.port))
    half.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")
    ws, _ = open_ws(fake_server)
    # No clock: a stalled event loop would leave a reply unanswered, and recv's timeout fails the test.
    for _ in range(20):
        ws.send(frame)
        assert isinstance(ws.recv(timeout=30), bytes)
    ws.close()
    half.close()
    flood.socket.close()  # abruptly: it never read its replies
    sender.join(10)


def test_record_saves_every_request_and_reply(aloha_sim, tmp_path):
    from pi0cli.serving.recording import Recorder, load_records

    server = PolicyServer(fake_policy(aloha_sim), embodiment=aloha_sim, port=0, recorder=Recorder(tmp_path / "rec"))
    with ServerThread(server) as thread:
        ws, _ = open_ws(thread, headers=None)
        sent = [sim_obs(i) for i in range(3)]
        replies = []
        for obs in sent:
            ws.send(protocol.packb(obs))
            replies.append(protocol.unpackb(ws.recv(timeout=10)))
        ws.send(b"junk")
        ws.recv(timeout=10)
        ws.close()
    records = list(load_records(tmp_path / "rec"))
    assert len(records) == 3  # rejected requests are not recorded
    for rec, obs, reply in zip(records, sent, replies, strict=True):
        np.testing.assert_array_equal(rec["inputs"]["images"]["cam_high"], obs["images"]["cam_high"])
        np.testing.assert_array_equal(rec["inputs"]["state"], obs["state"])
        assert rec["inputs"]["prompt"] == "Transfer cube"
        np.testing.assert_array_equal(rec["outputs"]["actions"], reply["actions"])
        assert rec["outputs"]["policy_timing"]["infer_ms"] == pytest.approx(reply["policy_timing"]["infer_ms"])
    for file in (tmp_path / "rec").iterdir():
        np.load(file, allow_pickle=False)  # readable without pickle


# ------------------------------------------------------------------------------------------ served policy


class MinimalServed:
    """A ServedPolicy and nothing more (no infer_batch): the server must need only the protocol."""

    metadata = {"kind": "minimal"}
    max_batch = 4

    def __init__(self):
        self.prepared: list[dict] = []
        self.batches: list[int] = []

    def warmup(self):
        return None

    def prepare(self, obs, /):
        self.prepared.append(obs)
        return float(np.asarray(obs["state"]).sum())

    def run_prepared(self, items, /, *, return_exceptions=True):
        self.batches.append(len(items))
        return [{"actions": np.full((2, 14), total, np.float32)} for total in items]

    def infer(self, obs, /):
        return self.run_prepared([self.prepare(obs)])[0]


def test_every_served_policy_goes_through_prepare_and_run_prepared(aloha_sim):
    from pi0cli.policy.policy import Policy
    from pi0cli.serving.served import ServedPolicy

    assert isinstance(fake_policy(aloha_sim), Policy) and isinstance(fake_policy(aloha_sim), ServedPolicy)
    policy = MinimalServed()
    with ServerThread(PolicyServer(policy, embodiment=aloha_sim, port=0)) as thread:
        ws, metadata = open_ws(thread, headers=None)
        assert metadata == {"kind": "minimal"}
        obs = sim_obs()
        ws.send(protocol.packb(obs))
        reply = protocol.unpackb(ws.recv(timeout=10))
        ws.send(protocol.packb(sim_obs() | {"state": np.zeros(13, np.float32)}))  # refused before prepare
        assert "shape (14,)" in ws.recv(timeout=10)
        ws.close()
    np.testing.assert_allclose(reply["actions"], float(obs["state"].sum()), rtol=1e-6)
    assert len(policy.prepared) == 1 and set(policy.prepared[0]) == set(obs) and policy.batches == [1]


def test_a_policy_that_is_not_servable_is_refused_in_one_line(aloha_sim):
    from pi0cli.errors import Pi0Error

    class OnlyInferBatch:
        metadata: dict = {}

        def warmup(self):
            pass

        def infer_batch(self, items, return_exceptions=True):
            return []

    with pytest.raises(Pi0Error, match="no max_batch, prepare, run_prepared, infer; a served policy implements "
                                       "pi0cli.serving.served.ServedPolicy"):
        PolicyServer(OnlyInferBatch(), embodiment=aloha_sim, port=0)
