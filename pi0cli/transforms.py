"""Generic data transforms shared by training and inference.

A transform is any callable ``dict -> dict`` over a *data dict*: a nested mapping whose leaves are numpy
arrays, numbers or strings. Transforms are frozen dataclasses (hashable, printable, pure): they never mutate
their input. Robot-specific transforms live in the embodiment plugins and are built from these pieces.

Paths address nested leaves with ``/`` ("images/cam_high"). A flat key that itself contains ``/`` (DROID's
"observation/joint_position") is found by the same path, so robots may send either form.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from pi0cli.errors import NormStatsError, ObservationError
from pi0cli.normstats import NormStats

Data = dict[str, Any]

#: Epsilon of the reference normalisation formulas (added to std and to the quantile range).
NORM_EPS = 1e-6


class Transform(Protocol):
    def __call__(self, data: Data) -> Data: ...


# ----------------------------------------------------------------------------------------------- paths


def flatten(data: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """Flatten nested mappings into one level with ``sep``-joined keys (leaves are kept as they are).

    Walks with an explicit stack, not a recursive closure: a closure that refers to itself is a reference
    cycle, which keeps every tree it flattened alive until the cycle collector runs.
    """
    flat: dict[str, Any] = {}
    stack: list[tuple[str, Iterator[tuple[Any, Any]]]] = [("", iter(data.items()))]
    while stack:
        prefix, items = stack[-1]
        for key, value in items:
            path = f"{prefix}{sep}{key}" if prefix else str(key)
            if isinstance(value, Mapping):
                stack.append((path, iter(value.items())))
                break
            flat[path] = value
        else:
            stack.pop()
    return flat


def unflatten(flat: Mapping[str, Any], sep: str = "/") -> Data:
    """Inverse of :func:`flatten`: ``{"a/b": 1}`` becomes ``{"a": {"b": 1}}``."""
    nested: Data = {}
    for path, value in flat.items():
        *parents, leaf = path.split(sep)
        node = nested
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"path {path!r} runs through the leaf {part!r}")
            node = child
        node[leaf] = value
    return nested


def strip_value_leaves(tree: Mapping[str, Any]) -> dict[str, Any]:
    """Replace every ``{"value": leaf}`` node by ``leaf`` (the layout of trained reference checkpoints)."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            if set(v) == {"value"} and not isinstance(v["value"], Mapping):
                out[k] = v["value"]
            else:
                out[k] = strip_value_leaves(v)
        else:
            out[k] = v
    return out


def stack_trees(trees: Sequence[Mapping[str, Any]], *, concatenate: bool = False) -> Data:
    """Trees of the same nested keys -> one tree: array leaves stacked on a new leading axis (or, with
    ``concatenate``, joined along the existing one). Stacking turns string leaves into a list; concatenating
    chains list leaves (the stacked strings of each part).

    The one batching helper: examples -> a training batch, requests -> a model batch, worker chunks -> a batch.
    """
    first = trees[0]
    out: Data = {}
    for key, value in first.items():
        leaves = [tree[key] for tree in trees]
        if isinstance(value, Mapping):
            out[key] = stack_trees(leaves, concatenate=concatenate)
        elif isinstance(value, str) and not concatenate:
            out[key] = leaves
        elif isinstance(value, list) and concatenate:
            out[key] = [x for leaf in leaves for x in leaf]
        else:
            arrays = [np.asarray(leaf) for leaf in leaves]
            out[key] = np.concatenate(arrays) if concatenate else np.stack(arrays)
    return out


def has_path(data: Mapping[str, Any], path: str) -> bool:
    try:
        lookup(data, path)
    except KeyError:
        return False
    return True


def lookup(data: Mapping[str, Any], path: str) -> Any:
    """The leaf at ``path`` whether the data is nested, flat with ``/`` keys, or a mix of both."""
    if path in data:
        return data[path]
    parts = path.split("/")
    for cut in range(1, len(parts)):
        head = "/".join(parts[:cut])
        node = data.get(head)
        if isinstance(node, Mapping):
            try:
                return lookup(node, "/".join(parts[cut:]))
            except KeyError:
                continue
    raise KeyError(path)


# --------------------------------------------------------------------------------------------- compose


@dataclasses.dataclass(frozen=True)
class Compose:
    """Apply transforms in order."""

    transforms: tuple[Transform, ...] = ()

    def __call__(self, data: Data) -> Data:
        for transform in self.transforms:
            data = transform(data)
        return data

    def __iter__(self) -> Iterator[Transform]:
        return iter(self.transforms)


def compose(*transforms: Transform | None) -> Compose:
    """One transform running ``transforms`` left to right; ``None`` entries are skipped, nesting flattened."""
    flat: list[Transform] = []
    for transform in transforms:
        if transform is None:
            continue
        if isinstance(transform, Compose):
            flat.extend(transform.transforms)
        else:
            flat.append(transform)
    return Compose(tuple(flat))


@dataclasses.dataclass(frozen=True)
class KeepKeys:
    """Run ``inner`` and carry ``keys`` of its input past it (robot transforms drop what they don't know)."""

    inner: Transform
    keys: tuple[str, ...]

    def __call__(self, data: Data) -> Data:
        out = self.inner(data)
        for key in self.keys:
            if key in data and key not in out:
                out = {**out, key: data[key]}
        return out


@dataclasses.dataclass(frozen=True)
class Repack:
    """Rename leaves: ``structure`` maps each output path to the input path it takes its value from.

    Used to turn a dataset row (``observation.state``, ``action``, ...) into the robot's observation keys.
    Leaves not named in ``structure`` are dropped; output paths in ``optional`` may be missing from the data.
    """

    structure: Mapping[str, str]
    optional: frozenset[str] = frozenset()

    def __call__(self, data: Data) -> Data:
        out: dict[str, Any] = {}
        for new_path, old_path in self.structure.items():
            try:
                out[new_path] = lookup(data, old_path)
            except KeyError:
                if new_path in self.optional:
                    continue
                available = ", ".join(sorted(flatten(data))) or "none"
                raise ObservationError(
                    f"key {old_path!r} (for {new_path!r}) is missing; available keys: {available}. "
                    "Fix the dataset key map or the data."
                ) from None
        return unflatten(out)


@dataclasses.dataclass(frozen=True)
class InjectDefaultPrompt:
    """Set ``prompt`` when the data has none."""

    prompt: str | None

    def __call__(self, data: Data) -> Data:
        if self.prompt is None or "prompt" in data:
            return data
        return {**data, "prompt": self.prompt}


# --------------------------------------------------------------------------------------------- actions


def _mask_array(mask: Sequence[bool]) -> np.ndarray:
    return np.asarray(mask, dtype=bool)


def to_delta_actions(actions: np.ndarray, state: np.ndarray, mask: Sequence[bool]) -> np.ndarray:
    """Actions ``[..., H, D]`` relative to ``state`` ``[..., S]`` on the dims where ``mask`` is True.

    ``mask`` covers the first ``len(mask)`` dims; the rest stay absolute (as in the reference).
    """
    return _shift_actions(actions, state, mask, sign=-1.0)


def to_absolute_actions(actions: np.ndarray, state: np.ndarray, mask: Sequence[bool]) -> np.ndarray:
    """Inverse of :func:`to_delta_actions`."""
    return _shift_actions(actions, state, mask, sign=1.0)


def _shift_actions(actions: np.ndarray, state: np.ndarray, mask: Sequence[bool], sign: float) -> np.ndarray:
    mask_arr = _mask_array(mask)
    dims = mask_arr.shape[0]
    actions = np.array(actions, copy=True)
    state = np.asarray(state)
    if actions.shape[-1] < dims or state.shape[-1] < dims:
        raise ObservationError(
            f"delta mask covers {dims} dims but actions have {actions.shape[-1]} and state {state.shape[-1]}; "
            "the mask must not be longer than the action and state vectors"
        )
    offset = np.where(mask_arr, state[..., :dims], 0).astype(actions.dtype)
    actions[..., :dims] += sign * offset[..., None, :]
    return actions


# DeltaActions and AbsoluteActions mirror each other line for line on purpose: an inverse pair of transforms,
# each a declaration around one pure function (to_delta_actions / to_absolute_actions).
@dataclasses.dataclass(frozen=True)
class DeltaActions:
    """Make masked action dims relative to the current state (training and inference inputs)."""

    mask: tuple[bool, ...] | None

    def __call__(self, data: Data) -> Data:
        if self.mask is None or "actions" not in data:
            return data
        return {**data, "actions": to_delta_actions(data["actions"], data["state"], self.mask)}


@dataclasses.dataclass(frozen=True)
class AbsoluteActions:
    """Inverse of :class:`DeltaActions` (inference outputs; needs the state the chunk started from)."""

    mask: tuple[bool, ...] | None

    def __call__(self, data: Data) -> Data:
        if self.mask is None or "actions" not in data:
            return data
        return {**data, "actions": to_absolute_actions(data["actions"], data["state"], self.mask)}


def bool_mask(*runs: int) -> tuple[bool, ...]:
    """``bool_mask(6, -1, 6, -1)``: 6 True, 1 False, 6 True, 1 False (positive = True, negative = False)."""
    out: list[bool] = []
    for run in runs:
        out.extend([run > 0] * abs(run))
    return tuple(out)


# ------------------------------------------------------------------------------------------- normalize


def normalize(x: np.ndarray, stats: NormStats, use_quantiles: bool) -> np.ndarray:
    """Reference normalisation of the first ``x.shape[-1]`` dims (z-score, or quantile to [-1, 1])."""
    x = np.asarray(x)
    dims = x.shape[-1]
    if use_quantiles:
        q01, q99 = _quantiles(stats)
        q01, q99 = q01[..., :dims], q99[..., :dims]
        return (x - q01) / (q99 - q01 + NORM_EPS) * 2.0 - 1.0
    return (x - stats.mean[..., :dims]) / (stats.std[..., :dims] + NORM_EPS)


def unnormalize(x: np.ndarray, stats: NormStats, use_quantiles: bool) -> np.ndarray:
    """Inverse of :func:`normalize`; dims beyond the stats (model padding) pass through unchanged."""
    x = np.asarray(x)
    if use_quantiles:
        q01, q99 = _quantiles(stats)
        dims = min(q01.shape[-1], x.shape[-1])
        q01, q99 = q01[..., :dims], q99[..., :dims]
        head = (x[..., :dims] + 1.0) / 2.0 * (q99 - q01 + NORM_EPS) + q01
        return np.concatenate([head, x[..., dims:]], axis=-1)
    dims = x.shape[-1]
    mean = pad_to_dim(stats.mean, dims, value=0.0)[..., :dims]
    std = pad_to_dim(stats.std, dims, value=1.0)[..., :dims]
    return x * (std + NORM_EPS) + mean


def _quantiles(stats: NormStats) -> tuple[np.ndarray, np.ndarray]:
    if stats.q01 is None or stats.q99 is None:
        raise NormStatsError(
            "quantile normalisation needs q01 and q99, but these norm stats have none; "
            "recompute them with `pi0 norm-stats` or use z-score normalisation"
        )
    return stats.q01, stats.q99


@dataclasses.dataclass(frozen=True)
class Normalize:
    """Normalise the leaves named in ``stats`` (e.g. ``state``, ``actions``); absent leaves are skipped
    unless ``strict``."""

    stats: Mapping[str, NormStats]
    use_quantiles: bool = False
    strict: bool = False

    def __call__(self, data: Data) -> Data:
        return _apply_stats(data, self.stats, self.strict, lambda x, s: normalize(x, s, self.use_quantiles))


@dataclasses.dataclass(frozen=True)
class Unnormalize:
    """Inverse of :class:`Normalize`."""

    stats: Mapping[str, NormStats]
    use_quantiles: bool = False
    strict: bool = False

    def __call__(self, data: Data) -> Data:
        return _apply_stats(data, self.stats, self.strict, lambda x, s: unnormalize(x, s, self.use_quantiles))


def _apply_stats(
    data: Data, stats: Mapping[str, NormStats], strict: bool, fn: Callable[[np.ndarray, NormStats], np.ndarray]
) -> Data:
    flat = flatten(data)
    for key, key_stats in stats.items():
        if key not in flat:
            if strict:
                raise NormStatsError(f"norm stats name {key!r} but the data has no such key; keys: {sorted(flat)}")
            continue
        flat[key] = fn(flat[key], key_stats)
    return unflatten(flat)


# ---------------------------------------------------------------------------------------------- shapes


def pad_to_dim(x: np.ndarray, dim: int, axis: int = -1, value: float = 0.0) -> np.ndarray:
    """Pad ``x`` with ``value`` along ``axis`` up to ``dim`` (no-op when already that long or longer)."""
    x = np.asarray(x)
    current = x.shape[axis]
    if current >= dim:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, dim - current)
    return np.pad(x, widths, constant_values=value)


@dataclasses.dataclass(frozen=True)
class PadStatesAndActions:
    """Zero-pad ``state`` and ``actions`` on their last axis to the model's action dim."""

    dim: int

    def __call__(self, data: Data) -> Data:
        out = {**data, "state": pad_to_dim(data["state"], self.dim)}
        if "actions" in data:
            out["actions"] = pad_to_dim(data["actions"], self.dim)
        return out


@dataclasses.dataclass(frozen=True)
class SliceActions:
    """Keep the first ``dim`` action dims (drops the model's padding); other leaves are dropped too."""

    dim: int

    def __call__(self, data: Data) -> Data:
        return {"actions": np.asarray(data["actions"])[..., : self.dim]}


# ---------------------------------------------------------------------------------------------- images


def to_uint8_hwc(image: np.ndarray) -> np.ndarray:
    """Images ``[..., H, W, 3]`` or ``[..., 3, H, W]`` as uint8 HWC: floats in [0, 1] are scaled by 255."""
    image = np.asarray(image)
    if image.ndim < 3:
        raise ObservationError(f"an image must have 3 axes (HWC or CHW), got shape {image.shape}")
    if np.issubdtype(image.dtype, np.floating):
        image = (255.0 * image).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = image.astype(np.uint8)
    if image.shape[-3] == 3 and image.shape[-1] != 3:
        image = np.moveaxis(image, -3, -1)
    return image


def crop_fraction(images: np.ndarray, window: tuple[float, float, float, float]) -> np.ndarray:
    """Cut ``window`` = (top, left, height, width), fractions of the image, out of ``[..., H, W, C]`` images
    (edges rounded to whole pixels, at least one pixel)."""
    images = np.asarray(images)
    h, w = images.shape[-3:-1]
    top, left, height, width = window
    y0, x0 = min(h - 1, int(round(top * h))), min(w - 1, int(round(left * w)))
    y1, x1 = max(y0 + 1, min(h, int(round((top + height) * h)))), max(x0 + 1, min(w, int(round((left + width) * w))))
    return images[..., y0:y1, x0:x1, :]


def resize_with_pad(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``[..., H, W, C]`` images to fit ``height x width`` keeping the aspect ratio, then centre them
    on a zero canvas (bilinear, as the reference client; a no-op at the target size).

    uint8 images go through PIL exactly as the reference does; float images are resized per channel.
    """
    images = np.asarray(images)
    if images.shape[-3:-1] == (height, width):
        return images
    batch_shape = images.shape[:-3]
    flat = images.reshape(-1, *images.shape[-3:])
    out = np.stack([_resize_one(image, height, width) for image in flat])
    return out.reshape(*batch_shape, *out.shape[-3:])


def _resize_one(image: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image  # lazy: PIL is only needed when an image actually changes size

    cur_h, cur_w, channels = image.shape
    ratio = max(cur_w / width, cur_h / height)
    # At least one pixel: extreme aspect ratios would otherwise collapse a side to zero.
    new_h, new_w = max(1, int(cur_h / ratio)), max(1, int(cur_w / ratio))
    if image.dtype == np.uint8:
        resized = np.asarray(Image.fromarray(image.squeeze(-1) if channels == 1 else image).resize(
            (new_w, new_h), resample=Image.Resampling.BILINEAR
        ))
        resized = resized.reshape(new_h, new_w, channels)
    else:
        planes = [
            np.asarray(Image.fromarray(image[..., c].astype(np.float32), mode="F").resize(
                (new_w, new_h), resample=Image.Resampling.BILINEAR
            ))
            for c in range(channels)
        ]
        resized = np.stack(planes, axis=-1).astype(image.dtype)
    canvas = np.zeros((height, width, channels), dtype=image.dtype)
    top, left = max(0, (height - new_h) // 2), max(0, (width - new_w) // 2)
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas


@dataclasses.dataclass(frozen=True)
class ResizeImages:
    """Resize-with-pad every image in ``data["image"]`` to ``height x width``."""

    height: int
    width: int

    def __call__(self, data: Data) -> Data:
        images = {slot: resize_with_pad(image, self.height, self.width) for slot, image in data["image"].items()}
        return {**data, "image": images}
