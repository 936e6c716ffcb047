"""The ``Embodiment`` contract every robot plugin fills in.

An embodiment says everything pi0 needs to know about one robot: what it observes (cameras and state
vectors, in its own key names), what it does (action dims, control rate, which dims are deltas, gripper
convention), how its LeRobot datasets name things, and the transforms between its native observations and
the model's format. The same declaration is checked when recording, training, serving and evaluating, so a
mismatch surfaces before a robot moves.

The model's format, produced by ``inputs`` and consumed by ``outputs``::

    {"image": {slot: uint8 [H, W, 3]}, "image_mask": {slot: bool}, "state": float32 [S],
     "actions": float32 [H, A] (training only), "prompt": str (optional)}

Robot-specific steps (sign flips, gripper units) are composed with the generic :class:`RobotInputs` /
:class:`RobotOutputs` below, which do the camera-to-slot and state bookkeeping common to all robots.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from pi0cli.errors import ContractError, ObservationError
from pi0cli.models.config import IMAGE_KEYS
from pi0cli.models.families import family_names
from pi0cli.observation_check import check_observation
from pi0cli.observation_types import Array, Observation
from pi0cli.transforms import Data, Repack, Transform, has_path, lookup, to_uint8_hwc

#: The model's image slots (pi0 / pi0.5), in the order the model consumes them (the models' own list).
MODEL_IMAGE_SLOTS: tuple[str, ...] = IMAGE_KEYS


@dataclasses.dataclass(frozen=True)
class Camera:
    """One camera of the robot.

    ``key`` is its path in the robot's observation; ``slot`` the model image slot it feeds (``None``:
    accepted but unused, like ALOHA's ``cam_low``). A camera that is not ``required`` may be missing from an
    observation: its slot is then filled with zeros and masked out. ``height``/``width`` is the native
    resolution and ``channels_first`` the layout the robot sends (both layouts are accepted).
    """

    key: str
    slot: str | None
    required: bool = True
    height: int = 224
    width: int = 224
    channels_first: bool = False

    @property
    def wrist(self) -> bool:
        return self.slot is not None and is_wrist_slot(self.slot)


def is_wrist_slot(slot: str) -> bool:
    """Wrist cameras (by the model's slot name) are neither cropped nor geometrically augmented."""
    return "wrist" in slot


@dataclasses.dataclass(frozen=True)
class StateField:
    """One proprioceptive vector in the robot's observation; the model state is their concatenation."""

    key: str
    dim: int


@dataclasses.dataclass(frozen=True)
class Embodiment:
    """A robot, as pi0 sees it. Frozen: build a new one with :func:`dataclasses.replace`."""

    name: str
    description: str
    state: tuple[StateField, ...]
    action_dim: int
    control_hz: float
    cameras: tuple[Camera, ...]
    inputs: Transform
    outputs: Transform
    asset_id: str
    #: robot observation path -> LeRobot dataset column; ``"actions"`` names the action column.
    dataset_keys: Mapping[str, str]
    #: which of the first action dims are relative to the state (``None``: all absolute).
    delta_action_mask: tuple[bool, ...] | None = None
    gripper: str = ""
    default_prompt: str | None = None
    default_checkpoint: str | None = None
    default_model: str = "pi0"
    #: actions executed from each predicted chunk before asking again (the action-chunk broker's horizon).
    open_loop_steps: int = 10
    #: extra metadata the policy server sends on connect (e.g. ``reset_pose``).
    metadata: Mapping[str, object] = dataclasses.field(default_factory=dict)
    #: makes an example observation from a numpy Generator; by default one is built from the declaration.
    example: Callable[[np.random.Generator], Observation] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dataset_keys", MappingProxyType(dict(self.dataset_keys)))
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))
        object.__setattr__(self, "state", tuple(self.state))
        object.__setattr__(self, "cameras", tuple(self.cameras))
        if self.delta_action_mask is not None:
            object.__setattr__(self, "delta_action_mask", tuple(bool(v) for v in self.delta_action_mask))
        self._check()

    def _check(self) -> None:
        def fail(problem: str) -> None:
            raise ContractError(f"embodiment {self.name!r}: {problem}")

        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum() or self.name != self.name.lower():
            fail("name must be lower-case letters, digits, '_' or '-'")
        if not self.state or any(f.dim <= 0 for f in self.state):
            fail("declare at least one state field, each with a positive dim")
        if self.action_dim <= 0:
            fail(f"action_dim must be positive, got {self.action_dim}")
        if not (self.control_hz > 0 and math.isfinite(self.control_hz)):
            fail(f"control_hz must be a positive number, got {self.control_hz}")
        if self.open_loop_steps <= 0:
            fail(f"open_loop_steps must be positive, got {self.open_loop_steps}")
        if not any(c.slot for c in self.cameras):
            fail("at least one camera must feed a model image slot")
        slots = [c.slot for c in self.cameras if c.slot is not None]
        if len(slots) != len(set(slots)):
            fail(f"two cameras feed the same model slot: {slots}")
        for cam in self.cameras:
            if cam.slot is not None and cam.slot not in MODEL_IMAGE_SLOTS:
                fail(f"camera {cam.key!r} feeds unknown slot {cam.slot!r}; slots are {', '.join(MODEL_IMAGE_SLOTS)}")
            if cam.height <= 0 or cam.width <= 0:
                fail(f"camera {cam.key!r} needs a positive resolution")
        keys = [c.key for c in self.cameras] + [f.key for f in self.state]
        if len(keys) != len(set(keys)):
            fail(f"camera and state keys must be distinct: {keys}")
        if self.delta_action_mask is not None and len(self.delta_action_mask) > min(self.action_dim, self.state_dim):
            fail(
                f"delta_action_mask has {len(self.delta_action_mask)} entries but action_dim is {self.action_dim} "
                f"and state_dim {self.state_dim}; it may cover at most the shorter of the two"
            )
        if "actions" not in self.dataset_keys:
            fail("dataset_keys must map 'actions' to the dataset's action column")
        missing = [k for k in [c.key for c in self.cameras if c.required] + [f.key for f in self.state]
                   if k not in self.dataset_keys]
        if missing:
            fail(f"dataset_keys has no column for {missing}")
        if self.default_model not in family_names():  # any registered model family, as Pi0Config accepts
            fail(f"default_model must be one of {family_names()}, got {self.default_model!r}")
        if not self.asset_id:
            fail("asset_id must name the norm-stats asset directory")

    # ---------------------------------------------------------------------------------------- derived

    @property
    def state_dim(self) -> int:
        return sum(f.dim for f in self.state)

    @property
    def action_key(self) -> str:
        """The dataset column holding actions (chunked by delta timestamps when training)."""
        return self.dataset_keys["actions"]

    @property
    def repack(self) -> Repack:
        """Dataset row -> robot observation plus ``actions`` (optional cameras may be absent)."""
        optional = frozenset(c.key for c in self.cameras if not c.required)
        return Repack(dict(self.dataset_keys), optional=optional)

    def example_observation(self, seed: int = 0) -> Observation:
        """A valid observation for this robot (random images and state), as a client would send it."""
        rng = np.random.default_rng(seed)
        if self.example is not None:
            return self.example(rng)
        obs: Observation = {}
        for cam in self.cameras:
            shape = (3, cam.height, cam.width) if cam.channels_first else (cam.height, cam.width, 3)
            obs[cam.key] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        for field in self.state:
            obs[field.key] = rng.uniform(-1.0, 1.0, size=(field.dim,)).astype(np.float32)
        if self.default_prompt:
            obs["prompt"] = self.default_prompt
        return obs

    # ---------------------------------------------------------------------------------------- checks

    def validate_observation(self, obs: object) -> Observation:
        """``obs`` if it satisfies this robot's contract; otherwise :class:`ObservationError` naming the first
        key that breaks it (the one check serving, offline evaluation and simulators share:
        :mod:`pi0cli.observation_check`)."""
        return check_observation(obs, self)

    @property
    def observation_keys(self) -> frozenset[str]:
        """The observation paths this robot's contract reads: its cameras, its state fields and ``prompt``."""
        return frozenset([c.key for c in self.cameras] + [f.key for f in self.state] + ["prompt"])

    def describe(self) -> dict[str, Any]:
        """The whole contract as JSON-ready data (``pi0 embodiments show --json``; values of many kinds)."""
        return {
            "name": self.name,
            "description": self.description,
            "state_dim": self.state_dim,
            "action_dim": self.action_dim,
            "control_hz": self.control_hz,
            "state": [{"key": f.key, "dim": f.dim} for f in self.state],
            "cameras": [dataclasses.asdict(c) for c in self.cameras],
            "delta_action_mask": list(self.delta_action_mask) if self.delta_action_mask is not None else None,
            "gripper": self.gripper,
            "dataset_keys": dict(self.dataset_keys),
            "default_prompt": self.default_prompt,
            "default_checkpoint": self.default_checkpoint,
            "default_model": self.default_model,
            "asset_id": self.asset_id,
            "open_loop_steps": self.open_loop_steps,
            "metadata": _jsonable(dict(self.metadata)),
            "inputs": describe_transform(self.inputs),
            "outputs": describe_transform(self.outputs),
        }


def describe_transform(transform: object) -> str:
    """A one-line summary of a transform: the steps of a composition, small settings shown inline."""
    from pi0cli.transforms import Compose

    if isinstance(transform, Compose):
        return " -> ".join(describe_transform(t) for t in transform.transforms) or "(identity)"
    if dataclasses.is_dataclass(transform):
        values = {f.name: getattr(transform, f.name) for f in dataclasses.fields(transform)}
        if all(isinstance(v, (int, float, str, bool, type(None))) for v in values.values()):
            return repr(transform)
        return type(transform).__name__
    return _callable_name(transform) or repr(transform)


def _callable_name(fn: object) -> str | None:
    if fn is None:
        return None
    return getattr(fn, "__qualname__", None) or repr(fn)


def _jsonable(value: object) -> object:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


# ------------------------------------------------------------------------------------ generic robot IO


@dataclasses.dataclass(frozen=True)
class RobotInputs:
    """Robot observation -> model format: cameras into slots (absent ones zero and masked), state fields
    concatenated, ``actions`` and ``prompt`` passed through. Compose robot-specific steps after it.

    Works on one frame or on a batch (leading axes on every array; masks stay per slot scalars)."""

    cameras: tuple[Camera, ...]
    state: tuple[StateField, ...]

    def __call__(self, data: Data) -> Data:
        images: dict[str, Array] = {}
        masks: dict[str, np.bool_] = {}
        for cam in self.cameras:
            if cam.slot is None or not has_path(data, cam.key):
                continue
            images[cam.slot] = to_uint8_hwc(lookup(data, cam.key))
            masks[cam.slot] = np.True_
        if not images:
            keys = [c.key for c in self.cameras if c.slot]
            raise ObservationError(f"no camera image in the observation; expected one of {keys}")
        reference = next(iter(images.values()))
        for slot in MODEL_IMAGE_SLOTS:
            if slot not in images:
                images[slot] = np.zeros_like(reference)
                masks[slot] = np.False_
        # Last-axis concatenation keeps this usable on batches ([B, dim] fields) as well as single frames.
        state = np.concatenate(
            [np.atleast_1d(np.asarray(lookup(data, f.key), dtype=np.float32)) for f in self.state], axis=-1
        )
        out: Data = {
            "image": {slot: images[slot] for slot in MODEL_IMAGE_SLOTS},
            "image_mask": {slot: masks[slot] for slot in MODEL_IMAGE_SLOTS},
            "state": state,
        }
        if "actions" in data:
            out["actions"] = np.asarray(data["actions"], dtype=np.float32)
        if "prompt" in data:
            prompt = data["prompt"]
            out["prompt"] = prompt.decode() if isinstance(prompt, bytes) else str(prompt)
        return out

