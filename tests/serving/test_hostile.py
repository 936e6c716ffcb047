"""`pi0 serve` against a hostile but realistic client: each test is one class of defect found by attacking
the server (issue 14), with a fake (numpy) policy. Fast; the model-side checks are in test_policy.py."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import socket
import threading
import time
import urllib.error
import urllib.request

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving_helpers import fake_policy, sim_obs
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from pi0cli.serving import protocol
from pi0cli.serving.server import PolicyServer, ServerThread

KEY = {"Authorization": "Api-Key secret"}
MAX_REPLY_CHARS = 320  # "Error: " + protocol.MAX_ERROR_CHARS (a literal, so the test also runs on older code)


def uri(thread) -> str:
    return f"ws://127.0.0.1:{thread.port}"


def get(port: int, path: str, headers: dict | None = None) -> tuple[int, str, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def open_ws(thread, headers=KEY):
    ws = connect(uri(thread), additional_headers=headers, compression=None, max_size=None, open_timeout=10).__enter__()
    protocol.unpackb(ws.recv(timeout=10))
    return ws


def serve(policy, embodiment, **kwargs) -> ServerThread:
    kwargs.setdefault("port", 0)
    return ServerThread(PolicyServer(policy, embodiment=embodiment, **kwargs)).start()


def empty_lists(n: int) -> bytes:
    """A msgpack array of ``n`` empty arrays: 1 byte per element, the cheapest frame to send per object built."""
    return b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n


# -------------------------------------------------------------------------- 1. bounded work per frame


def _count(tree) -> int:
    """Elements as the decoder counts them: each container 1 plus its length."""
    if isinstance(tree, dict):
        return 1 + len(tree) + sum(_count(v) for v in tree.values())
    if isinstance(tree, list):
        return 1 + len(tree) + sum(_count(v) for v in tree)
    return 0


_trees = st.recursive(st.none() | st.integers(-5, 5) | st.text(max_size=3),
                      lambda c: st.lists(c, max_size=6) | st.dictionaries(st.text(max_size=3), c, max_size=6),
                      max_leaves=40)


@settings(max_examples=200, deadline=None)
@given(_trees, st.integers(16, 80))
def test_decoding_is_refused_exactly_beyond_the_element_budget(tree, budget):
    frame = msgpack.packb(tree)
    if _count(tree) <= budget:
        assert protocol.unpackb(frame, max_elements=budget) == tree
    else:
        with pytest.raises(protocol.ProtocolError, match="more than"):
            protocol.unpackb(frame, max_elements=budget)


def test_a_frame_of_a_million_empty_lists_is_refused_within_the_budget():
    """The work a frame costs is bounded by the element budget, not by the frame: measured as memory (what
    decoding builds), which does not depend on how fast the machine is."""
    import tracemalloc

    # A million empty lists in one array, and the same spread over 64 arrays each under msgpack's length limit.
    flat = empty_lists(2**20)
    spread = b"\xdc" + (64).to_bytes(2, "big") + (b"\xdd" + (2**14).to_bytes(4, "big") + b"\x90" * 2**14) * 64
    for frame in (flat, spread):
        tracemalloc.start()
        try:
            with pytest.raises(protocol.ProtocolError, match="msgpack elements"):
                protocol.unpackb(frame)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # Refused after MAX_ELEMENTS (32768) objects: about 1 MB; a budget that let it all through: over 30 MB.
        assert peak < 16 * 2**20, peak


def test_a_frame_being_decoded_does_not_stall_health_checks_or_other_clients(aloha_sim, monkeypatch):
    """Decoding runs off the event loop: while a worst-case frame is still mid-decode (held there, so the test
    needs no clock), health checks and another client's requests are answered. Before, each such frame froze
    the event loop for about two seconds."""
    decoding, release = threading.Event(), threading.Event()
    decode = protocol.decode_request

    def held(message, **kwargs):
        if isinstance(message, bytes) and message[:1] == b"\xdd":  # the attacker's frame (a top-level array)
            decoding.set()
            release.wait(60)
        return decode(message, **kwargs)

    monkeypatch.setattr(protocol, "decode_request", held)
    with serve(fake_policy(aloha_sim), aloha_sim, max_message_bytes=2**20, prepare_threads=2) as thread:
        attacker = open_ws(thread, headers=None)
        attacker.send(empty_lists(2**20 - 16))
        assert decoding.wait(30), "the attacker's frame never reached the decoder"
        ws = open_ws(thread, headers=None)
        try:
            for _ in range(3):
                assert get(thread.port, "/healthz")[0] == 200
                ws.send(protocol.packb(sim_obs()))
                assert isinstance(ws.recv(timeout=30), bytes)
            assert not release.is_set()  # all answered while the attacker's frame was still being decoded
        finally:
            release.set()
        assert attacker.recv(timeout=30).startswith("Error: ")
        ws.close()
        attacker.close()


def test_large_refused_frames_draw_on_a_shared_budget(aloha_sim):
    with serve(fake_policy(aloha_sim), aloha_sim, rejected_bytes_per_s=2**19) as thread:
        hostile, normal = open_ws(thread, None), open_ws(thread, None)
        junk = b"\xc1" * (2**20)  # 1 MiB, refused
        hostile.send(junk)
        assert hostile.recv(timeout=10).startswith("Error: ")
        start = time.perf_counter()
        normal.send(protocol.packb(sim_obs()))  # valid requests never wait
        assert isinstance(normal.recv(timeout=10), bytes)
        normal_s = time.perf_counter() - start
        hostile.send(junk)  # read only once the first one is paid for (2 s at 512 KiB/s)
        assert hostile.recv(timeout=10).startswith("Error: ")
        assert time.perf_counter() - start > 1.6 > normal_s
        normal.send(b"\xc1")  # nor do small refused frames
        normal.recv(timeout=10)
        hostile.close()
        normal.close()


def test_refused_frames_that_cost_worker_time_draw_on_the_budget_too(aloha_sim):
    """Frames that fill the element budget are small (32 KiB) but cost a worker milliseconds each: their
    sender pays 4x that time from the shared budget, so many connections cannot keep the workers busy."""
    from pi0cli.serving.server import RejectedBytesBudget

    budget = RejectedBytesBudget(2**20)
    assert budget.delay(1000, 0.0001) == 0.0  # cheap and small: free
    assert budget.delay(1000, 0.1) == pytest.approx(0.4, abs=0.01)
    assert budget.delay(2**20, 0.0) == pytest.approx(1.4, abs=0.02)  # shared: queued behind the first
    with serve(fake_policy(aloha_sim), aloha_sim) as thread:
        real_admit = thread.server._admit

        def slow_admit(message, request_id, peer):
            result, _ = real_admit(message, request_id, peer)
            return result, 0.5  # as if decoding had taken 0.5 s

        setattr(thread.server, "_admit", slow_admit)  # noqa: B010 - a slow worker
        ws = open_ws(thread, None)
        ws.send(empty_lists(32_000))
        assert "elements" in ws.recv(timeout=10)
        start = time.perf_counter()
        ws.send(empty_lists(32_000))
        ws.recv(timeout=10)
        assert time.perf_counter() - start > 1.6  # read after 4 x 0.5 s
        ws.close()


# ----------------------------------------------------------------------------- 2. never a NaN action


def exploding_policy(embodiment):
    """The fake policy with a model that overflows for huge inputs, as a real network does."""
    policy = fake_policy(embodiment)
    sample = policy._sample

    def overflowing(rng, batch):
        with np.errstate(over="ignore"):
            return (np.asarray(sample(rng, batch), np.float32) * np.float32(1e30)).astype(np.float32)

    policy._sample = overflowing
    return policy


def test_non_finite_actions_become_an_error_frame_naming_the_cause(aloha_sim):
    with serve(exploding_policy(aloha_sim), aloha_sim) as thread:
        ws = open_ws(thread, headers=None)
        state = np.zeros(14, np.float32)
        state[2] = 1e12  # finite and below the overflow refusal (1e18 normalised): passes the input check
        ws.send(protocol.packb(sim_obs() | {"state": state}))
        reply = ws.recv(timeout=10)
        assert isinstance(reply, str), protocol.unpackb(reply)["actions"]
        assert "NaN or infinite actions" in reply and "norm stats" in reply and "dimension 2" in reply, reply
        ws.send(protocol.packb(sim_obs() | {"state": np.zeros(14, np.float32)}))
        assert np.isfinite(protocol.unpackb(ws.recv(timeout=10))["actions"]).all()
        ws.close()
        assert 'pi0_errors_total{kind="non_finite"} 1.0' in get(thread.port, "/metrics")[1]


# ------------------------------------------------------------ 3. shapes up front, generic internal errors


@pytest.mark.parametrize("shape", [(0, 0, 3), (3, 0, 5), (3, 5, 0), (0, 4, 3)])
def test_empty_images_are_refused_up_front(fake_server, shape):
    ws = open_ws(fake_server)
    ws.send(protocol.packb(sim_obs() | {"images": {"cam_high": np.zeros(shape, np.uint8)}}))
    reply = ws.recv(timeout=10)
    assert isinstance(reply, str) and "cam_high" in reply and "empty" in reply, reply
    assert "internal" not in reply
    ws.close()


def test_internal_errors_send_a_request_id_and_log_the_details(aloha_sim, caplog):
    policy = fake_policy(aloha_sim)

    real_prepare = policy.prepare

    def broken(obs):
        if "trigger" in obs:
            raise RuntimeError("secret detail /home/operator/.ssh")
        return real_prepare(obs)

    policy.prepare = broken
    with serve(policy, aloha_sim) as thread, caplog.at_level(logging.ERROR, logger="pi0.serve"):
        ws = open_ws(thread, headers=None)
        ws.send(protocol.packb(sim_obs() | {"trigger": 1}))
        reply = ws.recv(timeout=10)
        ws.close()
    assert reply.startswith("Error: internal server error (request id ") and "secret" not in reply, reply
    request_id = reply.split("request id ")[1].split(")")[0]
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert logged and "secret detail" in logged[0].exc_text


# ---------------------------------------------------------------------- 5. errors, auth, limits, logs


def test_error_texts_never_echo_large_client_data(fake_server):
    ws = open_ws(fake_server)
    huge = "<" + "f" * 500_000
    frames = [
        msgpack.packb({"x": {b"__ndarray__": True, b"data": b"", b"dtype": huge, b"shape": [0]}}),
        msgpack.packb({b"k" * 500_000: 1}),
        msgpack.packb({"x": {b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [1] * 20 + ["x" * 9**6]}}),
        msgpack.packb({"x": {b"__npgeneric__": True, b"data": 10**19, b"dtype": "<i1"}}),
        protocol.packb(sim_obs() | {"prompt": "p" * 400_000}),
        protocol.packb(sim_obs() | {"images": {"cam_high": "i" * 400_000}}),
    ]
    for frame in frames:
        ws.send(frame)
        reply = ws.recv(timeout=10)
        assert isinstance(reply, str) and len(reply) <= MAX_REPLY_CHARS, len(reply)
    ws.close()


@pytest.mark.parametrize("headers", [
    [("Authorization", "Api-Key secret"), ("Authorization", "Api-Key secret")],
    [("Authorization", "Api-Key secret"), ("Authorization", "Api-Key wrong")],
    [("Authorization", "Api-Key " + "s" * 6000)],
    [("Authorization", "Api-Key s\u00e9cret")],
    [("Authorization", "Bearer secret")],
    [("Authorization", "")],
])
def test_auth_edge_cases_are_401_without_a_traceback(fake_server, headers, caplog):
    with caplog.at_level(logging.INFO), pytest.raises(InvalidStatus) as info:
        connect(uri(fake_server), additional_headers=headers, open_timeout=10)
    assert info.value.response.status_code == 401
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert b"s" * 100 not in info.value.response.body


def test_refused_connections_warn_at_a_limited_rate(fake_server, caplog):
    with caplog.at_level(logging.WARNING, logger="pi0.serve"):
        for _ in range(20):
            with pytest.raises(InvalidStatus):
                connect(uri(fake_server), additional_headers={"Authorization": "Api-Key nope"}, open_timeout=10)
    warnings = [r for r in caplog.records if r.name == "pi0.serve" and "refused" in r.getMessage()]
    assert 1 <= len(warnings) <= 2, [r.getMessage() for r in warnings]


def test_max_connections_closes_the_extra_one_with_1013(aloha_sim):
    with serve(fake_policy(aloha_sim), aloha_sim, max_connections=2) as thread:
        first, second = open_ws(thread, None), open_ws(thread, None)
        extra = connect(uri(thread), open_timeout=10)
        with pytest.raises(ConnectionClosed) as info:
            extra.recv(timeout=10)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1013
        assert "--max-connections" in info.value.rcvd.reason
        first.close()
        deadline = time.monotonic() + 5
        while thread.server.open_connections > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        third = open_ws(thread, None)  # a slot is free again
        third.send(protocol.packb(sim_obs()))
        assert isinstance(third.recv(timeout=10), bytes)
        second.close()
        third.close()
        assert 'pi0_connections_refused_total{reason="full"} 1.0' in get(thread.port, "/metrics")[1]


def test_idle_connections_are_closed_after_the_timeout(aloha_sim):
    with serve(fake_policy(aloha_sim), aloha_sim, idle_timeout_s=0.3) as thread:
        ws = open_ws(thread, None)
        # Timed from before the request: the server's idle clock starts after its reply, so at least the timeout
        # passes between the two however slowly this machine runs (no upper bound: recv's timeout is the failure).
        start = time.perf_counter()
        ws.send(protocol.packb(sim_obs()))
        assert isinstance(ws.recv(timeout=10), bytes)
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=30)
        assert time.perf_counter() - start >= 0.3
        assert info.value.rcvd is not None and info.value.rcvd.code == 1000 and "idle" in info.value.rcvd.reason
        assert "pi0_connections_closed_idle_total 1.0" in get(thread.port, "/metrics")[1]


def test_idle_connections_do_not_hold_the_batch_window_open(aloha_sim):
    # A window far longer than the replies' timeout: a batch that waited for it would fail the recv, so no clock
    # is read. The only active client is waiting: the batch starts at once (before: it waited the window out).
    with serve(fake_policy(aloha_sim), aloha_sim, batch_window_ms=120_000) as thread:
        idle = [open_ws(thread, None) for _ in range(4)]
        ws = open_ws(thread, None)
        frame = protocol.packb(sim_obs())
        for _ in range(3):
            ws.send(frame)
            assert isinstance(ws.recv(timeout=30), bytes)
        for conn in [ws, *idle]:
            conn.close()


def test_buffered_frames_per_connection_are_bounded(aloha_sim):
    with serve(fake_policy(aloha_sim, delay_s=0.5), aloha_sim, max_buffered_frames=2, warmup=False) as thread:
        flood = open_ws(thread, None)
        frame = protocol.packb(sim_obs())

        def send_all() -> None:
            with contextlib.suppress(ConnectionClosed, OSError):
                for _ in range(12):
                    flood.send(frame)

        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()
        (conn,) = list(thread.server._server.connections)  # websockets internals: its queue of received frames
        # Wait for the server to stop reading (the event), not for a fixed time; the queue is bounded throughout.
        # websockets pauses the transport once more than 2 frames wait, but still parses the rest of the chunk it
        # had already read: one more frame can land after the pause (seen on CI), never the 12 sent.
        bound = 2 + 2
        deadline = time.monotonic() + 60
        while not conn.recv_messages.paused and time.monotonic() < deadline:
            assert len(conn.recv_messages.frames) <= bound
            time.sleep(0.01)
        assert conn.recv_messages.paused and len(conn.recv_messages.frames) <= bound
        time.sleep(0.3)  # paused means paused: nothing more arrives while the first request is still running
        assert len(conn.recv_messages.frames) <= bound
        flood.socket.close()
        sender.join(0.5)


def test_health_body_does_not_carry_the_warm_up_error(aloha_sim):
    # The server stops soon after a failed warm-up; ask its HTTP router directly in that window.
    server = PolicyServer(fake_policy(aloha_sim), embodiment=aloha_sim, port=0)
    server.batcher.failed = RuntimeError("CUDA at /secret/path failed")

    class Connection:
        remote_address = ("127.0.0.1", 1)

        def respond(self, status, body):
            return status, body

    class Request:
        path = "/healthz"

    status, body = server._process_request(Connection(), Request())
    assert status == 500 and "secret" not in body and "log" in body, body


# ------------------------------------------------------------------------------------------ metrics


def test_metrics_in_prometheus_format_per_server(aloha_sim):
    from prometheus_client.parser import text_string_to_metric_families

    with serve(fake_policy(aloha_sim), aloha_sim, api_key="k") as thread, \
            serve(fake_policy(aloha_sim), aloha_sim) as other:
        assert get(thread.port, "/metrics")[0] == 401  # the API key guards the metrics too
        ws = open_ws(thread, {"Authorization": "Api-Key k"})
        for frame in (protocol.packb(sim_obs()), protocol.packb(sim_obs()), b"\xc1", empty_lists(40_000),
                      protocol.packb({"state": np.zeros(14, np.float32)})):
            ws.send(frame)
            ws.recv(timeout=10)
        status, text, headers = get(thread.port, "/metrics", {"Authorization": "Api-Key k"})
        assert status == 200 and headers["Content-Type"].startswith("text/plain; version=")
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        assert samples[("pi0_requests_total", ())] == 5
        assert samples[("pi0_replies_total", ())] == 2
        assert samples[("pi0_errors_total", (("kind", "decode"),))] == 2
        assert samples[("pi0_errors_total", (("kind", "invalid"),))] == 1
        assert samples[("pi0_decode_failures_total", ())] == 2
        assert samples[("pi0_batch_size_count", ())] == 2
        assert samples[("pi0_request_seconds_count", ())] == 2
        assert samples[("pi0_open_connections", ())] == 1
        assert samples[("pi0_ready", ())] == 1
        ws.close()
        other_text = get(other.port, "/metrics")[1]
        assert "pi0_requests_total 0.0" in other_text  # its own registry


def test_fuzzed_frames_get_short_error_texts(fake_server):
    ws = open_ws(fake_server)

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.binary(min_size=1, max_size=2000).map(lambda b: b"\x81\xa1k" + b))
    def check(frame):
        ws.send(frame)
        reply = ws.recv(timeout=10)
        assert isinstance(reply, str) and len(reply) <= MAX_REPLY_CHARS

    check()
    ws.close()


def test_many_clients_connecting_and_vanishing_leave_nothing_behind(aloha_sim):
    with serve(fake_policy(aloha_sim), aloha_sim) as thread:
        def vanish(i: int) -> None:
            sock = socket.create_connection(("127.0.0.1", thread.port))
            if i % 2:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")  # half a handshake
            sock.close()

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(vanish, range(40)))
        ws = open_ws(thread, None)
        ws.send(protocol.packb(sim_obs()))
        assert isinstance(ws.recv(timeout=10), bytes)
        ws.close()
        deadline = time.monotonic() + 5
        while thread.server.open_connections and time.monotonic() < deadline:
            time.sleep(0.02)
        assert thread.server.open_connections == 0
