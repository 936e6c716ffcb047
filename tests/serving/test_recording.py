"""`pi0 serve --record`: memory released at once, a queue bounded in bytes, failures counted and logged once,
no temp files left, keys that cannot collide, a size cap for unknown keys, one-line errors at start-up."""

from __future__ import annotations

import gc
import logging
import threading
import weakref

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from serving_helpers import fake_policy, sim_obs
from websockets.sync.client import connect

from pi0cli.errors import Pi0Error
from pi0cli.serving import protocol
from pi0cli.serving.recording import Recorder, load_record, load_records, record_files, save_record
from pi0cli.serving.server import PolicyServer, ServerThread

REPLY = {"actions": np.zeros((2, 3), np.float32), "policy_timing": {"infer_ms": 1.5}}


@pytest.fixture
def no_gc():
    """The cycle collector off: memory must come back through reference counting alone."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_a_recorded_request_is_released_as_soon_as_it_is_written(tmp_path, no_gc):
    recorder = Recorder(tmp_path / "rec")
    big = np.zeros(2**20, np.uint8)
    alive = weakref.ref(big)
    recorder.record({"state": np.zeros(3, np.float32), "extra": {"blob": big}}, REPLY)
    del big
    recorder.close()  # every queued record written, the writer thread gone
    assert len(record_files(tmp_path / "rec")) == 1
    # Before: the recursive flatten closure made a reference cycle holding the whole request.
    assert alive() is None


def test_memory_is_released_through_the_server_too(aloha_sim, tmp_path, no_gc):
    recorder = Recorder.for_embodiment(tmp_path / "rec", aloha_sim)
    seen: list[weakref.ref] = []
    real_record = recorder.record

    def spy(request, reply, nbytes=None):
        seen.append(weakref.ref(request["state"]))
        return real_record(request, reply, nbytes)

    setattr(recorder, "record", spy)  # noqa: B010 - a spy on the instance
    with ServerThread(PolicyServer(fake_policy(aloha_sim), embodiment=aloha_sim, port=0, recorder=recorder)) as t:
        with connect(f"ws://127.0.0.1:{t.port}", compression=None, max_size=None) as ws:
            ws.recv(timeout=10)
            for i in range(5):
                ws.send(protocol.packb(sim_obs(i)))
                ws.recv(timeout=10)
            assert recorder.flush(10)
            # Every request but the one the connection answered last is gone already.
            assert sum(ref() is not None for ref in seen) <= 1
    assert len(record_files(tmp_path / "rec")) == 5
    assert all(ref() is None for ref in seen)


def test_the_queue_is_bounded_in_bytes_and_drops_are_counted(tmp_path, caplog):
    recorder = Recorder(tmp_path / "rec", max_queue_bytes=int(3.5 * 2**20))
    gate = threading.Event()
    real_write = recorder._write

    def slow_write(*args):
        gate.wait(10)
        real_write(*args)

    setattr(recorder, "_write", slow_write)  # noqa: B010 - a slow disk
    with caplog.at_level(logging.WARNING, logger="pi0.serve.record"):
        accepted = [recorder.record({"x": np.zeros(2**20, np.uint8)}, REPLY) for _ in range(10)]
    assert sum(accepted) == 3 and recorder.dropped_queue_full == 7
    assert recorder.stats()["queue_bytes"] <= 3.5 * 2**20
    assert len([r for r in caplog.records if "does not keep up" in r.getMessage()]) == 1
    gate.set()
    recorder.close()
    assert recorder.saved == 3 and recorder.stats()["queue_bytes"] == 0


def test_write_failures_are_counted_logged_once_and_leave_no_temp_files(tmp_path, caplog, monkeypatch):
    recorder = Recorder(tmp_path / "rec")

    def full_disk(handle, **arrays):
        handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    with caplog.at_level(logging.ERROR, logger="pi0.serve.record"):
        for i in range(4):
            recorder.record({"state": np.full(3, i, np.float32)}, REPLY)
        recorder.close()
    assert recorder.failed_writes == 4 and recorder.saved == 0
    errors = [r.getMessage() for r in caplog.records]
    assert len(errors) == 1 and "No space left on device" in errors[0], errors
    assert list((tmp_path / "rec").iterdir()) == []  # no .tmp file left behind


def test_write_failures_and_drops_appear_in_metrics(aloha_sim, tmp_path, monkeypatch):
    recorder = Recorder(tmp_path / "rec")
    monkeypatch.setattr(recorder, "_write", lambda *a: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with ServerThread(PolicyServer(fake_policy(aloha_sim), embodiment=aloha_sim, port=0, recorder=recorder)) as t:
        with connect(f"ws://127.0.0.1:{t.port}", compression=None, max_size=None) as ws:
            ws.recv(timeout=10)
            for i in range(3):
                ws.send(protocol.packb(sim_obs(i)))
                ws.recv(timeout=10)
        recorder.flush(10)
        text = t.server.metrics.render().decode()
    assert 'pi0_record_dropped_total{reason="write_failed"} 3.0' in text
    assert 'pi0_record_dropped_total{reason="queue_full"} 0.0' in text
    assert "pi0_record_saved_total 0.0" in text


def test_flat_and_nested_keys_do_not_collide(tmp_path):
    request = {"a/b": np.array([1.0]), "a": {"b": np.array([2.0])}, "%2F": np.array([3.0]), "x%y": "z"}
    save_record(tmp_path / "request_00000000.npz", request, REPLY)
    back = load_record(tmp_path / "request_00000000.npz")["inputs"]
    assert back["a/b"][0] == 1.0 and back["a"]["b"][0] == 2.0 and back["%2F"][0] == 3.0 and back["x%y"] == "z"


_keys = st.text(alphabet=st.sampled_from("ab/%_.\x00 é"), min_size=1, max_size=5)
_trees = st.recursive(st.integers(-3, 3).map(lambda i: np.array([i], np.int64)),
                      lambda c: st.dictionaries(_keys, c, min_size=1, max_size=4), max_leaves=12)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(_keys, _trees, min_size=1, max_size=4))
def test_any_request_keys_round_trip(tmp_path_factory, request):
    path = tmp_path_factory.mktemp("rt") / "request_00000000.npz"
    save_record(path, request, REPLY)
    back = load_record(path)["inputs"]

    def same(a, b):
        if isinstance(a, dict):
            assert isinstance(b, dict) and set(a) == set(b)
            for k in a:
                same(a[k], b[k])
        else:
            np.testing.assert_array_equal(a, b)

    same(request, back)


def test_unknown_keys_are_capped_known_keys_are_not(aloha_sim, tmp_path):
    recorder = Recorder.for_embodiment(tmp_path / "rec", aloha_sim, max_unknown_key_bytes=1000)
    obs = sim_obs() | {"debug": {"dump": np.zeros(5000, np.uint8)}, "note": "short"}
    recorder.record(obs, REPLY)
    recorder.close()
    (record,) = load_records(tmp_path / "rec")
    assert record["inputs"]["images"]["cam_high"].shape == (3, 224, 224)  # known: kept whatever its size
    assert "debug" not in record["inputs"] and record["inputs"]["note"] == "short"
    assert record["omitted"] == {"debug/dump": 5000}
    assert recorder.omitted_keys == 1


def test_a_directory_that_cannot_be_created_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(Pi0Error) as info:
        Recorder(blocker / "rec")
    message = str(info.value)
    assert "\n" not in message and str(blocker / "rec") in message and "--record" in message


def test_stale_temp_files_are_removed_and_numbering_continues(tmp_path):
    directory = tmp_path / "rec"
    directory.mkdir()
    (directory / ".request_00000007.npz.tmp").write_bytes(b"half")
    save_record(directory / "request_00000003.npz", {"s": np.zeros(1)}, REPLY)
    (directory / "request_notes.npz").write_bytes(b"")  # not a record: ignored
    recorder = Recorder(directory)
    recorder.record({"s": np.ones(1)}, REPLY)
    recorder.close()
    assert sorted(p.name for p in directory.iterdir()) == ["request_00000003.npz", "request_00000004.npz",
                                                            "request_notes.npz"]
