"""The one check of a robot observation against an embodiment's contract.

Serving (every request), offline evaluation (every dataset frame), simulators and the plugin conformance
check all call it, through :meth:`pi0cli.embodiment.Embodiment.validate_observation` (or
:func:`check_observation` without an embodiment). In order, each failure one :class:`ObservationError`
naming the key and the fix:

- the observation is a non-empty map;
- no float anywhere in it is NaN or infinite: one pass over the whole tree, because keys the embodiment does
  not declare (real-time chunking's ``prev_actions``) reach the policy too;
- every required camera is present, an HxWx3 or 3xHxW numpy array without an empty dimension, uint8 or
  float in [0, 1];
- every state field is a numeric vector of its declared size;
- ``prompt``, if present, is a string of at most :data:`MAX_PROMPT_CHARS` characters.

Cameras and state fields are found by :func:`pi0cli.transforms.lookup` (the one path lookup, which the
transforms use too): nested maps and flat ``a/b`` keys pass or fail alike. Keys the embodiment does not
declare are otherwise left alone. Without an embodiment only the robot-independent rules apply.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, cast

import numpy as np

from pi0cli.errors import ObservationError
from pi0cli.observation_types import Array, Observation
from pi0cli.transforms import lookup

if TYPE_CHECKING:
    from pi0cli.embodiment import Embodiment

#: Longest prompt accepted (characters).
MAX_PROMPT_CHARS = 4096
#: Deepest nesting walked (decoded requests nest at most 32 levels; this stops a map that contains itself).
MAX_DEPTH = 64

_MISSING = object()
#: (parent link, key or index): a path into the observation, built into text only for an error.
#: (parent link, key or index): a path into nested data, built into text only for an error message.
type KeyPath = tuple[KeyPath, object] | None
_PLAIN = frozenset({int, bool, str, bytes, type(None)})
_NUMBERS = frozenset({int, bool, float})


def check_observation(obs: object, embodiment: Embodiment | None = None) -> Observation:
    """``obs`` as an :data:`~pi0cli.observation_types.Observation` if it satisfies the rules of the module
    docstring (``embodiment``'s contract included, when given); otherwise raise :class:`ObservationError`."""
    where = f"{embodiment.name}: " if embodiment is not None else ""
    if not isinstance(obs, Mapping):
        raise ObservationError(f"{where}an observation must be a map of keys to arrays, got {type(obs).__name__}")
    if not obs:
        raise ObservationError(f"{where}the observation is an empty map; send the robot's observation")
    _check_finite(obs, where)
    if embodiment is not None:
        for cam in embodiment.cameras:
            image = _find(obs, cam.key)
            if image is _MISSING:
                if cam.required:
                    raise ObservationError(f"{where}observation has no image {cam.key!r}; send it as a uint8 HxWx3 "
                                           "(or 3xHxW) array")
                continue
            _check_image(where, cam.key, image)
        for field in embodiment.state:
            value = _find(obs, field.key)
            if value is _MISSING:
                raise ObservationError(f"{where}observation has no {field.key!r}; send a float vector of {field.dim}")
            _check_vector(where, field.key, value, field.dim)
    if "prompt" in obs:
        prompt = obs["prompt"]
        if not isinstance(prompt, str):
            raise ObservationError(f"{where}'prompt' must be a string, got {type(prompt).__name__}")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ObservationError(f"{where}'prompt' has {len(prompt)} characters; at most {MAX_PROMPT_CHARS} are "
                                   "accepted")
    return obs if isinstance(obs, dict) else dict(obs)


def _find(obs: Mapping[str, object], path: str) -> object:
    try:
        return lookup(obs, path)
    except KeyError:
        return _MISSING


def _check_image(where: str, key: str, image: object) -> None:
    if not isinstance(image, np.ndarray):
        raise ObservationError(f"{where}image {key!r} must be a numpy array (uint8 HxWx3 or 3xHxW), got "
                               f"{type(image).__name__}")
    if image.ndim != 3 or 3 not in (image.shape[0], image.shape[-1]):
        raise ObservationError(f"{where}image {key!r} must be HxWx3 or 3xHxW, got shape {image.shape}")
    if image.size == 0:
        raise ObservationError(f"{where}image {key!r} has shape {image.shape}, with an empty dimension; send a "
                               "non-empty HxWx3 (or 3xHxW) image")
    if image.dtype == np.uint8:
        return
    if image.dtype.kind != "f":
        raise ObservationError(f"{where}image {key!r} must be uint8 or float in [0, 1], got dtype {image.dtype}")
    if image.min() < 0.0 or image.max() > 1.0:  # finite: checked before
        raise ObservationError(f"{where}float image {key!r} must hold values in [0, 1]; send uint8 or scale it")


def _check_vector(where: str, key: str, value: object, dim: int) -> None:
    arr: Array | None = None
    if isinstance(value, np.ndarray):
        arr = value
    elif isinstance(value, (list, tuple, int, float, np.generic)):
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError, OverflowError):  # ragged or odd lists
            arr = None
    if arr is None or arr.dtype.kind not in "fiub":
        raise ObservationError(f"{where}{key!r} must be a numeric vector of {dim}, got {type(value).__name__}")
    if arr.shape != (dim,):
        raise ObservationError(f"{where}{key!r} must have shape ({dim},), got {arr.shape}")


def _check_finite(obs: Mapping[str, object], where: str) -> None:
    """One iterative pass: every float, float array and numpy float scalar is finite. Containers of plain
    leaves are checked at C speed, and key paths are built only for the error text (a hostile request may
    hold tens of thousands of elements)."""
    stack: list[tuple[object, int, KeyPath]] = [(obs, 0, None)]
    while stack:
        value, depth, link = stack.pop()
        keyed: Mapping[object, object] | None = None
        if isinstance(value, (list, tuple)):  # concrete types first: Mapping's ABC check is slower
            items: Sequence[object] = value
        elif isinstance(value, (dict, Mapping)):
            items, keyed = list(value.values()), value
        elif _finite_leaf(value):
            continue
        else:
            raise ObservationError(f"{where}{key_path_text(link)} holds NaN or infinity; send finite values")
        kinds = set(map(type, items))
        if kinds <= _PLAIN or (kinds <= _NUMBERS and all(map(math.isfinite, cast("list[float]", items)))):
            continue
        if depth >= MAX_DEPTH:
            raise ObservationError(f"{where}the observation nests deeper than {MAX_DEPTH} levels at "
                                   f"{key_path_text(link)}")
        keys: Sequence[object] = range(len(items)) if keyed is None else list(keyed)
        for key, item in zip(keys, items, strict=True):
            kind = type(item)
            if kind in _PLAIN or ((kind is list or kind is dict) and not item):
                continue  # nothing in it can be NaN
            stack.append((item, depth + 1, (link, key)))


def _finite_leaf(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, np.ndarray):
        return value.dtype.kind not in "fc" or not value.size or bool(np.isfinite(value).all())
    if isinstance(value, (np.floating, np.complexfloating)):
        return bool(np.isfinite(value))
    return True


def key_path_text(link: KeyPath, *, root: str = "the observation") -> str:
    """``a/b[0]/c`` for a :data:`KeyPath` (quoted, clipped at 200 characters); ``root`` names the empty path."""
    parts: list[str] = []
    while link is not None:
        link, key = link
        parts.append(f"[{key}]" if isinstance(key, int) else f"/{key}")
    text = "".join(reversed(parts)).lstrip("/")
    if not text:
        return root
    return repr(text) if len(text) <= 200 else f"{text[:200]!r}..."
