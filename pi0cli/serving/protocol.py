"""The wire format of ``pi0 serve``: msgpack with numpy arrays in the reference (openpi) msgpack-numpy layout.

An ndarray travels as a msgpack map with *bytes* keys::

    {b"__ndarray__": True, b"data": <raw C-order bytes>, b"dtype": dtype.str (e.g. "<f4", "|u1"), b"shape": [..]}

and a numpy scalar as ``{b"__npgeneric__": True, b"data": <python value>, b"dtype": dtype.str}``. Strings are
msgpack strings, bytes are msgpack bin. Object, void and complex dtypes are refused in both directions, and
nothing is ever unpickled: decoding only builds dicts, lists, numbers, strings, bytes and numeric arrays.

Decoding is strict: every problem raises :class:`ProtocolError` with one line that names the offending key
path and the fix, which the server sends back to the client as a text frame (quoting at most a few dozen
characters of what the client sent). Its cost is bounded: a message holds at most ``max_elements`` msgpack
elements and :data:`MAX_DEPTH` levels. Decoded arrays are read-only views of the message bytes (as in the
reference); copy one before writing into it.

The codec only decodes: whether a decoded request is a valid observation (its shapes, NaN, the prompt) is
the embodiment's check (:mod:`pi0cli.observation_check`).

This module imports numpy and msgpack only, so the robot-side client can use it without JAX.
"""

from __future__ import annotations

import math
from typing import cast

import msgpack
import numpy as np

from pi0cli.errors import Pi0Error
from pi0cli.observation_check import KeyPath, key_path_text
from pi0cli.observation_types import Array, Observation, ObservationValue

NDARRAY_KEY = b"__ndarray__"
NPGENERIC_KEY = b"__npgeneric__"
#: Dtype kinds allowed on the wire: bool, signed/unsigned int, float, and (only for prompts) unicode/bytes.
ALLOWED_KINDS = frozenset("biuf")
MAX_NDIM = 32
MAX_DEPTH = 32
#: Most msgpack elements (each container counts 1 plus its length) one message may hold by default.
MAX_ELEMENTS = 2**15
#: Longest error text sent to a client (characters).
MAX_ERROR_CHARS = 300


class ProtocolError(Pi0Error, ValueError):
    """A message that is not a valid pi0 / openpi request (or reply)."""


# -------------------------------------------------------------------------------------------------- encoding


def _encode_default(obj: object) -> object:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in ALLOWED_KINDS:
            raise ProtocolError(f"cannot send an array of dtype {obj.dtype} (kind {obj.dtype.kind!r}); "
                                "only bool, integer and float arrays travel on the wire")
        arr = obj if obj.flags.c_contiguous else obj.copy(order="C")
        return {NDARRAY_KEY: True, b"data": _raw_bytes(arr), b"dtype": arr.dtype.str, b"shape": list(arr.shape)}
    if isinstance(obj, np.generic):
        if obj.dtype.kind not in ALLOWED_KINDS:
            raise ProtocolError(f"cannot send a numpy scalar of dtype {obj.dtype}")
        return {NPGENERIC_KEY: True, b"data": obj.item(), b"dtype": obj.dtype.str}
    if isinstance(obj, tuple):
        return list(obj)
    raise ProtocolError(f"cannot send a value of type {type(obj).__name__}; use dicts, lists, numbers, strings "
                        "and numpy arrays")


def _raw_bytes(arr: Array) -> bytes | memoryview:
    """The array's C-order bytes without a copy (msgpack packs a byte memoryview as bin, like bytes)."""
    if arr.size == 0:
        return b""
    try:
        return arr.data.cast("B")
    except (TypeError, ValueError):  # formats memoryview cannot cast (e.g. non-native byte order)
        return arr.tobytes()


def packb(obj: object) -> bytes:
    """Serialise ``obj`` (nested dicts/lists of numbers, strings and numpy arrays) to one msgpack message."""
    try:
        return cast(bytes, msgpack.packb(obj, default=_encode_default, use_bin_type=True))
    except ProtocolError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot serialise the message: {exc}") from None


class Packer:
    """A reusable packer (same output as :func:`packb`), like ``msgpack_numpy.Packer`` of the reference."""

    def __init__(self) -> None:
        self._packer = msgpack.Packer(default=_encode_default, use_bin_type=True)

    def pack(self, obj: object) -> bytes:
        try:
            return cast(bytes, self._packer.pack(obj))
        except ProtocolError:
            self._packer.reset()
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            self._packer.reset()
            raise ProtocolError(f"cannot serialise the message: {exc}") from None


# -------------------------------------------------------------------------------------------------- decoding


class DecodeError(ProtocolError):
    """A frame that is not one msgpack-numpy message within the decoding limits."""

    kind = "decode"


class _HookError(Exception):
    """Raised inside msgpack hooks (msgpack would otherwise wrap or swallow the type)."""


class _BudgetExceeded(Exception):
    """Raised inside a msgpack hook once the message holds more elements than its budget."""


def clip(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to about ``limit`` characters: what an error text may quote of client data. Long
    strings and bytes are cut before ``repr`` so that quoting them costs nothing."""
    if isinstance(value, (str, bytes, bytearray)) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} {'characters' if isinstance(value, str) else 'bytes'})"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def _decode_dtype(raw: object, where: str) -> np.dtype[np.generic]:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError:
            raise _HookError(f"{where}: dtype is not an ASCII dtype string") from None
    if not isinstance(raw, str) or not 1 < len(raw) <= 8 or raw[0] not in "<>|=" or not raw[1:].isalnum():
        raise _HookError(f"{where}: dtype must be a numpy dtype string such as '<f4' or '|u1', got {clip(raw)}")
    try:
        dtype = np.dtype(raw)
    except TypeError:
        raise _HookError(f"{where}: unknown dtype {raw!r}") from None
    if dtype.kind not in ALLOWED_KINDS or dtype.itemsize == 0:
        raise _HookError(f"{where}: dtype {raw!r} is not allowed; send bool, integer or float arrays")
    return dtype


_NDARRAY_FIELDS = frozenset({NDARRAY_KEY, b"data", b"dtype", b"shape"})
_NPGENERIC_FIELDS = frozenset({NPGENERIC_KEY, b"data", b"dtype"})


def _object_hook(obj: dict[object, object]) -> object:
    if NDARRAY_KEY in obj:
        if obj.keys() != _NDARRAY_FIELDS:
            missing = sorted(k.decode() for k in _NDARRAY_FIELDS - obj.keys())
            extra = len(obj.keys() - _NDARRAY_FIELDS)
            raise _HookError(f"an __ndarray__ map needs data, dtype and shape (missing {missing or 'none'}, "
                             f"{extra} other key(s))")
        dtype = _decode_dtype(obj[b"dtype"], "__ndarray__")
        shape = obj[b"shape"]
        if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(
            type(d) is int and 0 <= d < 2**62 for d in shape
        ):
            raise _HookError(f"__ndarray__: shape must be a list of at most {MAX_NDIM} non-negative ints, "
                             f"got {clip(shape)}")
        data = obj[b"data"]
        if not isinstance(data, bytes):
            raise _HookError(f"__ndarray__: data must be msgpack bin (raw bytes), got {type(data).__name__}")
        count = math.prod(shape)
        if count * dtype.itemsize != len(data):
            raise _HookError(f"__ndarray__: shape {clip(shape)} of {dtype.str} needs {count * dtype.itemsize} "
                             f"bytes, data has {len(data)}")
        try:
            return np.frombuffer(data, dtype=dtype, count=count).reshape(tuple(shape))
        except ValueError as exc:  # e.g. an empty array whose other dimensions overflow numpy's index type
            raise _HookError(f"__ndarray__: shape {clip(shape)} is not a valid numpy shape ({exc})") from None
    if NPGENERIC_KEY in obj:
        if obj.keys() != _NPGENERIC_FIELDS:
            raise _HookError("an __npgeneric__ map needs exactly data and dtype")
        dtype = _decode_dtype(obj[b"dtype"], "__npgeneric__")
        value = obj[b"data"]
        if not isinstance(value, (bool, int, float)):
            raise _HookError(f"__npgeneric__: data must be a number, got {type(value).__name__}")
        try:
            return dtype.type(value)
        except (OverflowError, ValueError, TypeError):
            raise _HookError(f"__npgeneric__: {clip(value)} does not fit {dtype.str}") from None
    return obj


class _Budget:
    """The msgpack hooks of one decoding: every container costs 1 plus its length, until ``left`` runs out.

    msgpack calls the hooks bottom-up as each container is completed, and ``max_array_len`` /
    ``max_map_len`` stop a single container from exceeding the budget before its hook runs, so a message
    is abandoned after about ``2 * max_elements`` Python objects whatever its shape.
    """

    __slots__ = ("left",)

    def __init__(self, max_elements: int):
        self.left = max_elements

    def list_hook(self, value: list[object]) -> list[object]:
        self.left -= len(value) + 1
        if self.left < 0:
            raise _BudgetExceeded
        return value

    def object_hook(self, value: dict[object, object]) -> object:
        self.left -= len(value) + 1
        if self.left < 0:
            raise _BudgetExceeded
        return _object_hook(value)


def _ext_hook(code: int, data: bytes) -> object:
    raise _HookError(f"msgpack extension type {code} is not allowed")


def unpackb(message: bytes | bytearray | memoryview | str, *, max_elements: int = MAX_ELEMENTS) -> ObservationValue:
    """Deserialise one message; raises :class:`DecodeError` for anything that is not plain msgpack-numpy
    within the limits (at most ``max_elements`` msgpack elements, :data:`MAX_DEPTH` levels, str map keys).

    The cost is bounded by ``max_elements`` whatever the frame holds (an array of a million empty lists is
    refused after ``max_elements`` of them), and checking the decoded tree is one pass that builds no
    strings unless it has an error to report.
    """
    obj = _unpack(message, max_elements)
    _check_tree(obj)
    return obj


def _unpack(message: object, max_elements: int) -> ObservationValue:
    if isinstance(message, str):
        raise DecodeError("expected a binary msgpack frame, got a text frame; send msgpack-numpy bytes")
    if not isinstance(message, (bytes, bytearray, memoryview)):
        raise DecodeError(f"expected bytes, got {type(message).__name__}")
    budget = _Budget(max_elements)
    try:
        return cast(ObservationValue, msgpack.unpackb(
            message,
            object_hook=budget.object_hook,
            list_hook=budget.list_hook,
            ext_hook=_ext_hook,
            raw=False,
            strict_map_key=False,
            use_list=True,
            timestamp=0,
            max_array_len=max_elements,
            max_map_len=max_elements,
        ))
    except _BudgetExceeded:
        raise DecodeError(f"the message holds more than {max_elements} msgpack elements (the server's "
                          "--max-message-elements); send arrays as numpy arrays, not as lists") from None
    except _HookError as exc:
        raise DecodeError(f"bad array encoding: {exc}") from None
    except msgpack.ExtraData:
        raise DecodeError("the frame holds more than one msgpack object; send one map per frame") from None
    except msgpack.StackError:
        raise DecodeError(f"message nests deeper than {MAX_DEPTH} levels") from None
    except (msgpack.UnpackException, ValueError, TypeError, OverflowError, RecursionError) as exc:
        if "exceeds max_" in str(exc):
            raise DecodeError(f"the message holds more than {max_elements} msgpack elements (the server's "
                              "--max-message-elements)") from None
        raise DecodeError(f"not a msgpack message ({type(exc).__name__}: {clip(str(exc), 120)}); "
                          "send msgpack-numpy bytes") from None


# Leaves that need no check.
_PLAIN = frozenset({int, bool, float, str, bytes, type(None)})
_CONTAINERS = (dict, list)


def _path(link: KeyPath) -> str:
    return key_path_text(link, root="the top")


def _check_tree(obj: object) -> None:
    """One iterative pass over a decoded message: str map keys, allowed leaf types, depth. Error texts name
    the key path."""
    stack: list[tuple[object, int, KeyPath]] = [(obj, 0, None)]
    while stack:
        value, depth, link = stack.pop()
        kind = type(value)
        if isinstance(value, dict):
            if value and set(map(type, value)) != {str}:
                bad = next(k for k in value if type(k) is not str)
                raise ProtocolError(f"map key {clip(bad)} at {_path(link)} is not a string; keys must be str")
            _check_children(stack, list(value.values()), list(value), depth, link)
        elif isinstance(value, list):
            _check_children(stack, value, None, depth, link)
        elif kind is not np.ndarray and kind not in _PLAIN and not isinstance(value, np.generic):
            raise ProtocolError(f"value of type {kind.__name__} at {_path(link)} is not allowed")  # e.g. Timestamp


def _check_children(stack: list[tuple[object, int, KeyPath]], values: list[object], keys: list[str] | None,
                    depth: int, link: KeyPath) -> None:
    if not values:
        return
    if depth >= MAX_DEPTH:
        raise ProtocolError(f"message nests deeper than {MAX_DEPTH} levels at {_path(link)}")
    if set(map(type, values)) <= _PLAIN:  # the common case: checked at C speed
        return
    for i, item in enumerate(values):
        if type(item) in _PLAIN or (isinstance(item, _CONTAINERS) and not item):
            continue  # an empty container needs no visit (its depth is within the limit, checked above)
        stack.append((item, depth + 1, (link, i if keys is None else keys[i])))


# -------------------------------------------------------------------------------------------------- requests


def decode_request(message: object, *, max_elements: int = MAX_ELEMENTS) -> Observation:
    """Decode one observation request: a msgpack map of str keys (:class:`DecodeError` / :class:`ProtocolError`
    otherwise). Only decodes: whether it is a valid observation is the embodiment's check
    (:meth:`pi0cli.embodiment.Embodiment.validate_observation`)."""
    obs = _unpack(message, max_elements)
    if not isinstance(obs, dict):
        raise ProtocolError(f"a request must be a msgpack map of observation keys, got {type(obs).__name__}")
    _check_tree(obs)
    return obs


def clip_text(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """One line of at most ``limit`` characters (error texts must never echo megabytes of client data)."""
    line = " ".join(text[: limit * 4].split())
    return line if len(line) <= limit else f"{line[: limit - 3]}..."


def error_text(exc: BaseException) -> str:
    """The one-line text frame the server sends for a rejected request (at most ~MAX_ERROR_CHARS characters)."""
    return f"Error: {clip_text(str(exc)) or type(exc).__name__}"
