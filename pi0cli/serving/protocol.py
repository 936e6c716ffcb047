"""The wire format of ``pi0 serve``: msgpack with numpy arrays in the reference (openpi) msgpack-numpy layout.

An ndarray travels as a msgpack map with *bytes* keys::

    {b"__ndarray__": True, b"data": <raw C-order bytes>, b"dtype": dtype.str (e.g. "<f4", "|u1"), b"shape": [..]}

and a numpy scalar as ``{b"__npgeneric__": True, b"data": <python value>, b"dtype": dtype.str}``. Strings are
msgpack strings, bytes are msgpack bin. Object, void and complex dtypes are refused in both directions, and
nothing is ever unpickled: decoding only builds dicts, lists, numbers, strings, bytes and numeric arrays.

Decoding is strict: every problem raises :class:`ProtocolError` with one line that names the offending key
path and the fix, which the server sends back to the client as a text frame. Decoded arrays are read-only
views of the message bytes (as in the reference); copy one before writing into it.

This module imports numpy and msgpack only, so the robot-side client can use it without JAX.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

from pi0cli.errors import ObservationError, Pi0Error

NDARRAY_KEY = b"__ndarray__"
NPGENERIC_KEY = b"__npgeneric__"
#: Dtype kinds allowed on the wire: bool, signed/unsigned int, float, and (only for prompts) unicode/bytes.
ALLOWED_KINDS = frozenset("biuf")
MAX_NDIM = 32
MAX_DEPTH = 32
#: Longest prompt accepted in a request (characters).
MAX_PROMPT_CHARS = 4096


class ProtocolError(Pi0Error, ValueError):
    """A message that is not a valid pi0 / openpi request (or reply)."""


# -------------------------------------------------------------------------------------------------- encoding


def _encode_default(obj: Any) -> Any:
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


def _raw_bytes(arr: np.ndarray) -> Any:
    """The array's C-order bytes without a copy (msgpack packs a byte memoryview as bin, like bytes)."""
    if arr.size == 0:
        return b""
    try:
        return arr.data.cast("B")
    except (TypeError, ValueError):  # formats memoryview cannot cast (e.g. non-native byte order)
        return arr.tobytes()


def packb(obj: Any) -> bytes:
    """Serialise ``obj`` (nested dicts/lists of numbers, strings and numpy arrays) to one msgpack message."""
    try:
        return msgpack.packb(obj, default=_encode_default, use_bin_type=True)
    except ProtocolError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot serialise the message: {exc}") from None


class Packer:
    """A reusable packer (same output as :func:`packb`), like ``msgpack_numpy.Packer`` of the reference."""

    def __init__(self) -> None:
        self._packer = msgpack.Packer(default=_encode_default, use_bin_type=True)

    def pack(self, obj: Any) -> bytes:
        try:
            return self._packer.pack(obj)
        except ProtocolError:
            self._packer.reset()
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            self._packer.reset()
            raise ProtocolError(f"cannot serialise the message: {exc}") from None


# -------------------------------------------------------------------------------------------------- decoding


class _HookError(Exception):
    """Raised inside msgpack hooks (msgpack would otherwise wrap or swallow the type)."""


def _decode_dtype(raw: Any, where: str) -> np.dtype:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError:
            raise _HookError(f"{where}: dtype is not an ASCII dtype string") from None
    if not isinstance(raw, str) or not 1 < len(raw) <= 8 or raw[0] not in "<>|=" or not raw[1:].isalnum():
        raise _HookError(f"{where}: dtype must be a numpy dtype string such as '<f4' or '|u1', got {raw!r}")
    try:
        dtype = np.dtype(raw)
    except TypeError:
        raise _HookError(f"{where}: unknown dtype {raw!r}") from None
    if dtype.kind not in ALLOWED_KINDS or dtype.itemsize == 0:
        raise _HookError(f"{where}: dtype {raw!r} is not allowed; send bool, integer or float arrays")
    return dtype


def _object_hook(obj: dict) -> Any:
    if NDARRAY_KEY in obj:
        if set(obj) != {NDARRAY_KEY, b"data", b"dtype", b"shape"}:
            missing = sorted(k.decode(errors="replace") for k in {b"data", b"dtype", b"shape"} - set(obj))
            raise _HookError(f"an __ndarray__ map needs data, dtype and shape (missing {missing or 'none'}, "
                             f"extra {sorted(str(k) for k in set(obj) - {NDARRAY_KEY, b'data', b'dtype', b'shape'})})")
        dtype = _decode_dtype(obj[b"dtype"], "__ndarray__")
        shape = obj[b"shape"]
        if not isinstance(shape, (list, tuple)) or len(shape) > MAX_NDIM or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise _HookError(f"__ndarray__: shape must be a list of at most {MAX_NDIM} non-negative ints, got {shape!r}")
        data = obj[b"data"]
        if not isinstance(data, bytes):
            raise _HookError(f"__ndarray__: data must be msgpack bin (raw bytes), got {type(data).__name__}")
        count = math.prod(shape)
        if count * dtype.itemsize != len(data):
            raise _HookError(f"__ndarray__: shape {list(shape)} of {dtype.str} needs {count * dtype.itemsize} bytes, "
                             f"data has {len(data)}")
        return np.frombuffer(data, dtype=dtype, count=count).reshape(tuple(shape))
    if NPGENERIC_KEY in obj:
        if set(obj) != {NPGENERIC_KEY, b"data", b"dtype"}:
            raise _HookError("an __npgeneric__ map needs exactly data and dtype")
        dtype = _decode_dtype(obj[b"dtype"], "__npgeneric__")
        value = obj[b"data"]
        if not isinstance(value, (bool, int, float)):
            raise _HookError(f"__npgeneric__: data must be a number, got {type(value).__name__}")
        try:
            return dtype.type(value)
        except (OverflowError, ValueError, TypeError) as exc:
            raise _HookError(f"__npgeneric__: {value!r} does not fit {dtype.str}: {exc}") from None
    return obj


def _ext_hook(code: int, data: bytes) -> Any:
    raise _HookError(f"msgpack extension type {code} is not allowed")


def unpackb(message: bytes | bytearray | memoryview) -> Any:
    """Deserialise one message; raises :class:`ProtocolError` for anything that is not plain msgpack-numpy."""
    if isinstance(message, str):
        raise ProtocolError("expected a binary msgpack frame, got a text frame; send msgpack-numpy bytes")
    if not isinstance(message, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"expected bytes, got {type(message).__name__}")
    try:
        obj = msgpack.unpackb(
            message,
            object_hook=_object_hook,
            ext_hook=_ext_hook,
            raw=False,
            strict_map_key=False,
            use_list=True,
            timestamp=0,
        )
    except _HookError as exc:
        raise ProtocolError(f"bad array encoding: {exc}") from None
    except msgpack.ExtraData:
        raise ProtocolError("the frame holds more than one msgpack object; send one map per frame") from None
    except (msgpack.UnpackException, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise ProtocolError(f"not a msgpack message ({type(exc).__name__}: {exc}); send msgpack-numpy bytes") from None
    _check_tree(obj, "", 0)
    return obj


def _check_tree(obj: Any, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ProtocolError(f"message nests deeper than {MAX_DEPTH} levels at {path or 'the top'}")
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise ProtocolError(f"map key {key!r} at {path or 'the top'} is not a string; keys must be str")
            _check_tree(value, f"{path}/{key}" if path else key, depth + 1)
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            _check_tree(value, f"{path}[{i}]", depth + 1)
    elif obj is None or isinstance(obj, (bool, int, float, str, bytes, np.ndarray, np.generic)):
        return
    else:  # msgpack Timestamp and the like
        raise ProtocolError(f"value of type {type(obj).__name__} at {path or 'the top'} is not allowed")


# -------------------------------------------------------------------------------------------------- requests


def decode_request(message: Any, embodiment: Any | None = None) -> dict[str, Any]:
    """Decode and validate one observation request; :class:`ProtocolError` / ``ObservationError`` name the key."""
    obs = unpackb(message)
    return validate_request(obs, embodiment)


def validate_request(obs: Any, embodiment: Any | None = None) -> dict[str, Any]:
    """Check a decoded request: a map of str keys whose arrays are numeric and finite, an optional str
    ``prompt``, and (given an embodiment) the embodiment's own observation contract."""
    if not isinstance(obs, dict):
        raise ProtocolError(f"a request must be a msgpack map of observation keys, got {type(obs).__name__}")
    if not obs:
        raise ProtocolError("the request is an empty map; send the robot's observation")
    prompt = obs.get("prompt")
    if prompt is not None:
        if isinstance(prompt, np.ndarray) and prompt.ndim == 0 and prompt.dtype.kind in "US":
            prompt = str(prompt)
        if not isinstance(prompt, str):
            raise ProtocolError(f"'prompt' must be a string, got {type(prompt).__name__}")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ProtocolError(f"'prompt' has {len(prompt)} characters; at most {MAX_PROMPT_CHARS} are accepted")
    _check_finite(obs, "")
    if embodiment is not None:
        try:
            embodiment.validate_observation(obs)
        except ObservationError:
            raise
        except Exception as exc:  # a plugin's validator that trips over odd input must not crash the server
            raise ObservationError(f"{embodiment.name}: invalid observation ({type(exc).__name__}: {exc})") from None
    return obs


def _check_finite(obj: Any, path: str) -> None:
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            _check_finite(value, f"{path}/{key}" if path else key)
    elif isinstance(obj, np.ndarray):
        if obj.dtype.kind == "f" and obj.size and not np.isfinite(obj).all():
            raise ProtocolError(f"{path!r} holds NaN or infinity; send finite values")
    elif isinstance(obj, (float, np.floating)) and not math.isfinite(float(obj)):
        raise ProtocolError(f"{path!r} is NaN or infinity; send a finite value")


def error_text(exc: BaseException) -> str:
    """The one-line text frame the server sends for a rejected request."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    return f"Error: {message}"
