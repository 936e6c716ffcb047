"""Real-time chunking fields of a request: validated, put through the policy's own input transforms.

A request may carry, beside the observation (all optional; without them the request is plain sampling, so
an unmodified openpi client keeps working)::

    "prev_actions":      float [L, action_dim]  the previous chunk's actions not yet executed when this
                                                observation was taken, in robot units (what the policy
                                                returned), index 0 = the action due now; 1 <= L <= H
    "inference_delay":   int d                  control steps until this reply will be acted on (0 <= d <= H - s)
    "execution_horizon": int s                  H - s actions of the new chunk overlap the tail; default H - L
                                                (every action of the tail), at least H - L

The tail is padded to the model's horizon ``H`` (repeating its last action; padded steps get no weight) and
goes through the same input transforms as training actions (embodiment inputs, delta actions, normalise,
pad to the model's action dim): no robot math here. No JAX in this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from pi0cli.errors import ObservationError
from pi0cli.transforms import Data

PREV_ACTIONS = "prev_actions"
INFERENCE_DELAY = "inference_delay"
EXECUTION_HORIZON = "execution_horizon"
#: The request keys of real-time chunking.
REQUEST_KEYS = (PREV_ACTIONS, INFERENCE_DELAY, EXECUTION_HORIZON)

#: Keys of the model batch that carry RTC (see :class:`pi0cli.models.rtc.RTCInputs`).
MODEL_PREV_ACTIONS = "rtc_prev_actions"
MODEL_INFERENCE_DELAY = "rtc_inference_delay"
MODEL_EXECUTION_HORIZON = "rtc_execution_horizon"
MODEL_KEYS = (MODEL_PREV_ACTIONS, MODEL_INFERENCE_DELAY, MODEL_EXECUTION_HORIZON)


class RTCRequestError(ObservationError):
    """Real-time chunking fields that do not fit the policy."""


@dataclasses.dataclass(frozen=True)
class RTCRequest:
    """The RTC part of one request, checked against the policy's horizon ``H``."""

    prev_actions: np.ndarray[Any, Any]  # [L, D], robot units
    inference_delay: int
    execution_horizon: int


def _integer(value: Any, key: str) -> int:
    arr = np.asarray(value)
    if arr.ndim != 0 or arr.dtype.kind not in "iuf" or (arr.dtype.kind == "f" and float(arr) != int(arr)):
        raise RTCRequestError(f"{key!r} must be a whole number of control steps, got {value!r}")
    return int(arr)


def split_request(obs: Mapping[str, Any], horizon: int | None) -> tuple[dict[str, Any], RTCRequest | None]:
    """``(observation without the RTC keys, its RTC request or None)``; one clear error for bad fields."""
    rest = {k: v for k, v in obs.items() if k not in REQUEST_KEYS}
    if PREV_ACTIONS not in obs:
        extra = [k for k in REQUEST_KEYS if k in obs]
        if extra:
            raise RTCRequestError(f"{extra} given without {PREV_ACTIONS!r}; send the previous chunk's unexecuted "
                                  "actions too, or none of the real-time chunking fields")
        return rest, None
    if horizon is None:
        # e.g. pi0-FAST: its chunks are decoded tokens, with no denoising to guide towards the previous chunk.
        raise RTCRequestError("this policy does not support real-time chunking (only flow-matching pi0 and pi0.5 "
                              "do); drop 'prev_actions' and execute chunks with naive or ensemble instead")
    prev = np.asarray(obs[PREV_ACTIONS])
    if prev.ndim != 2 or prev.dtype.kind not in "iuf" or not 1 <= prev.shape[0] <= horizon:
        raise RTCRequestError(f"{PREV_ACTIONS!r} must be a float array [L, action_dim] with 1 <= L <= {horizon} "
                              f"(the policy's horizon), got shape {prev.shape} of {prev.dtype}")
    length = prev.shape[0]
    delay = _integer(obs.get(INFERENCE_DELAY, 0), INFERENCE_DELAY)
    execution = (_integer(obs[EXECUTION_HORIZON], EXECUTION_HORIZON) if EXECUTION_HORIZON in obs
                 else horizon - length)
    if not horizon - length <= execution <= horizon:
        raise RTCRequestError(f"{EXECUTION_HORIZON!r} is {execution} but must lie in [{horizon - length}, {horizon}] "
                              f"for {length} previous actions and a horizon of {horizon}")
    if not 0 <= delay <= horizon - execution:
        raise RTCRequestError(f"{INFERENCE_DELAY!r} is {delay} but must lie in [0, {horizon - execution}] (the "
                              "overlap with the previous chunk); send fewer delay steps or a longer tail")
    return rest, RTCRequest(prev.astype(np.float32), delay, execution)


def with_prev_actions(obs: Mapping[str, Any], rtc: RTCRequest, horizon: int) -> dict[str, Any]:
    """The observation with the tail as its ``actions`` (padded to ``horizon``), ready for the input transforms."""
    prev = rtc.prev_actions
    padded = np.concatenate([prev, np.repeat(prev[-1:], horizon - prev.shape[0], axis=0)], axis=0)
    return {**obs, "actions": padded}


def transform(input_transform: Callable[[Data], Data], obs: Mapping[str, Any], rtc: RTCRequest | None,
              horizon: int | None) -> Data:
    """``input_transform`` of the observation, with the tail as its actions when ``rtc`` is given (one pass);
    a failure then is most likely the tail's (wrong action dims: the server validated the observation)."""
    if rtc is None or horizon is None:
        return input_transform(dict(obs))
    try:
        return input_transform(with_prev_actions(obs, rtc, horizon))
    except (ValueError, IndexError) as exc:
        raise RTCRequestError(f"{PREV_ACTIONS!r} of shape {rtc.prev_actions.shape} does not fit the robot's actions "
                              f"({exc}); send the unexecuted part of a previous reply's 'actions'") from None


def model_fields(data: Mapping[str, Any], rtc: RTCRequest | None, horizon: int, action_dim: int) -> dict[str, Any]:
    """The model-batch RTC entries of one transformed request (plain rows: no overlap, zero actions)."""
    if rtc is None:
        return {MODEL_PREV_ACTIONS: np.zeros((horizon, action_dim), np.float32),
                MODEL_INFERENCE_DELAY: np.int32(0), MODEL_EXECUTION_HORIZON: np.int32(horizon)}
    actions = np.asarray(data["actions"], dtype=np.float32)
    if actions.shape != (horizon, action_dim):
        raise RTCRequestError(f"the input transforms turned {PREV_ACTIONS!r} into shape {actions.shape}, not "
                              f"{(horizon, action_dim)}; check its action dims against the robot's")
    return {MODEL_PREV_ACTIONS: actions, MODEL_INFERENCE_DELAY: np.int32(rtc.inference_delay),
            MODEL_EXECUTION_HORIZON: np.int32(rtc.execution_horizon)}
