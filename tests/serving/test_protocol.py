"""The msgpack-numpy codec: reference layout, round trips, strict decoding, compatibility with openpi-client."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pi0cli.serving import protocol
from pi0cli.serving.protocol import ProtocolError

NUMERIC = ["?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"]
DTYPES = [np.dtype(c) for c in NUMERIC] + [np.dtype(">" + c) for c in NUMERIC if c not in ("?", "i1", "u1")]


def test_reference_layout():
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    raw = msgpack.unpackb(protocol.packb({"a": arr, "s": np.int16(7), "p": "hi"}), raw=False, strict_map_key=False)
    assert raw["a"] == {b"__ndarray__": True, b"data": arr.tobytes(), b"dtype": "<f4", b"shape": [2, 3]}
    assert raw["s"] == {b"__npgeneric__": True, b"data": 7, b"dtype": "<i2"}
    assert raw["p"] == "hi"


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(DTYPES).flatmap(
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))))
def test_round_trip_every_numeric_dtype_and_shape(arr):
    out = protocol.unpackb(protocol.packb({"x": arr, "nested": {"y": [arr]}}))
    for got in (out["x"], out["nested"]["y"][0]):
        assert got.dtype == arr.dtype and got.shape == arr.shape
        np.testing.assert_array_equal(got, arr)


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(DTYPES), st.integers(0, 100))
def test_numpy_scalars_round_trip(dtype, value):
    scalar = np.array(value % 2 if dtype.kind == "b" else value).astype(dtype)[()]
    got = protocol.unpackb(protocol.packb(scalar))
    # np.float64 subclasses float, so msgpack sends it as a plain float (as the reference does).
    if isinstance(scalar, float):
        assert isinstance(got, float)
    else:
        assert isinstance(got, np.generic) and got.dtype.kind == scalar.dtype.kind
        assert got.dtype.itemsize == scalar.dtype.itemsize
    assert got == scalar


def test_compatible_with_openpi_client_both_ways():
    msgpack_numpy = pytest.importorskip("openpi_client.msgpack_numpy")
    obs: dict[str, Any] = {"images": {"cam": np.zeros((3, 4, 5), np.uint8)}, "state": np.ones(14, np.float32),
                           "prompt": "go", "step": np.int64(3), "flag": True, "list": [1, 2.5, "x"]}
    ours = protocol.unpackb(msgpack_numpy.Packer().pack(obs))
    np.testing.assert_array_equal(ours["images"]["cam"], obs["images"]["cam"])
    assert ours["prompt"] == "go" and ours["step"] == 3 and ours["list"] == [1, 2.5, "x"]
    theirs = msgpack_numpy.unpackb(protocol.packb(obs))
    np.testing.assert_array_equal(theirs["state"], obs["state"])
    assert theirs["step"] == 3
    assert protocol.packb(obs) == msgpack_numpy.Packer().pack(obs)  # byte-identical frames


@pytest.mark.parametrize("value", [np.zeros(2, complex), np.array(["a"], object), np.zeros(2, [("a", "f4")]),
                                   object(), {1, 2}])
def test_refuses_to_encode_non_numeric(value):
    with pytest.raises(ProtocolError):
        protocol.packb({"x": value})


def _nd(data=b"\0" * 4, dtype="<f4", shape=(1,), **extra):
    return {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": list(shape), **extra}


@pytest.mark.parametrize("frame, words", [
    (b"\xc1", "not a msgpack"),
    (b"", "not a msgpack"),
    (msgpack.packb(1) + msgpack.packb(2), "more than one"),
    (msgpack.packb({"x": _nd(dtype="|O8")}), "dtype"),
    (msgpack.packb({"x": _nd(dtype="<c8", data=b"\0" * 8)}), "not allowed"),
    (msgpack.packb({"x": _nd(dtype="|V4")}), "not allowed"),
    (msgpack.packb({"x": _nd(dtype="nonsense")}), "dtype"),
    (msgpack.packb({"x": _nd(shape=(2,))}), "needs 8 bytes"),
    (msgpack.packb({"x": _nd(shape=(-1,))}), "shape"),
    (msgpack.packb({"x": _nd(data="text")}), "data must be"),
    (msgpack.packb({"x": {b"__ndarray__": True, b"data": b""}}), "missing"),
    (msgpack.packb({"x": {b"__npgeneric__": True, b"data": "s", b"dtype": "<f4"}}), "number"),
    (msgpack.packb({"x": msgpack.ExtType(5, b"pickle")}), "extension"),
    (msgpack.packb({1: 2}), "not a string"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_strict_decoding(frame, words):
    with pytest.raises(ProtocolError, match=words):
        protocol.unpackb(frame)


class _Trap:
    """Unpickling this object records it: the payload a pickle-based decoder would run."""

    fired: list[str] = []

    def __reduce__(self):
        return (_Trap.fired.append, ("unpickled",))


def test_decoding_never_unpickles(monkeypatch):
    import pickle

    payload = pickle.dumps(_Trap())
    used = []

    def spy(*args, **kwargs):
        used.append(args)
        raise AssertionError("pickle used")

    for name in ("loads", "load", "Unpickler"):
        monkeypatch.setattr(pickle, name, spy)
    monkeypatch.setattr(np, "load", spy)
    # What msgpack-numpy-style decoders unpickle: object arrays and object scalars carrying a pickle.
    frames = [
        msgpack.packb({"x": _nd(data=payload, dtype="|O", shape=(1,))}),
        msgpack.packb({"x": _nd(data=payload, dtype="O", shape=())}),
        msgpack.packb({"x": _nd(data=payload, dtype="|O8", shape=(1,))}),
        msgpack.packb({"x": {b"__npgeneric__": True, b"data": payload, b"dtype": "|O"}}),
        msgpack.packb([{"x": _nd(data=payload, dtype="|V" + str(len(payload)), shape=(1,))}]),
        msgpack.packb({"x": msgpack.ExtType(1, payload)}),
        payload,
    ]
    for frame in frames:
        with pytest.raises(ProtocolError):
            protocol.unpackb(frame)
    assert not used and not _Trap.fired
    assert protocol.unpackb(protocol.packb({"x": np.zeros(3)}))["x"].shape == (3,)


def test_text_frames_are_rejected():
    with pytest.raises(ProtocolError, match="text frame"):
        protocol.unpackb("hello")


def test_decode_request_only_decodes():
    """The codec checks the wire format, nothing about the robot: NaN, shapes and prompts are the
    embodiment's check (tests/serving/test_validation.py)."""
    obs = {"state": np.full(14, np.nan, np.float32), "prompt": 3, "images": {"cam_high": np.zeros((0, 0, 3))}}
    decoded = protocol.decode_request(protocol.packb(obs))
    assert np.isnan(decoded["state"]).all() and decoded["prompt"] == 3
    with pytest.raises(ProtocolError, match="must be a msgpack map"):
        protocol.decode_request(protocol.packb([1]))
    with pytest.raises(ProtocolError, match="not a string"):
        protocol.decode_request(msgpack.packb({1: 2}))
