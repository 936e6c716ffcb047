"""Requests are validated up front: whatever the server's validation accepts, the real inference transforms
take; a finite but huge input never becomes NaN actions (tiny random-weight pi0, transforms without JAX
compilation; the model-side NaN check is in test_policy.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving_helpers import sim_obs

from pi0cli.errors import ObservationError, Pi0Error
from pi0cli.serving import protocol


@pytest.fixture(scope="module")
def policy(tiny_checkpoint, aloha_sim):
    from pi0cli.policy import load_policy

    return load_policy(tiny_checkpoint, embodiment=aloha_sim, batch_sizes=(1,))


_dims = st.integers(0, 40)
_image_shapes = st.one_of(
    st.tuples(st.just(3), _dims, _dims),  # CHW
    st.tuples(_dims, _dims, st.just(3)),  # HWC
    st.tuples(_dims, _dims, _dims),
    st.lists(_dims, min_size=0, max_size=4).map(tuple),
)
_image_dtypes = st.sampled_from(["|u1", "<f2", "<f4", "<f8", "|i1", "<u2", "|b1", ">f4"])
_state_dtypes = st.sampled_from(["<f4", "<f8", "<f2", ">f8", "<i8", "|u1", "|b1", "<u8"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_image_shapes, _image_dtypes, _state_dtypes, st.sampled_from([14, 14, 14, 13]), st.floats(0, 1),
       st.one_of(st.just(1.0), st.floats(-1e300, 1e300)))
def test_whatever_validation_accepts_the_transforms_take(policy, aloha_sim, shape, image_dtype, state_dtype, dim,
                                                          fill, scale):
    image = np.full(shape, fill if np.dtype(image_dtype).kind == "f" else 1, dtype=image_dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        state = (np.linspace(-1, 1, dim) * (scale if np.dtype(state_dtype).kind == "f" else 1)).astype(state_dtype)
    obs = sim_obs() | {"images": {"cam_high": image}, "state": state}
    # Through the wire, as a client sends it.
    frame = protocol.packb(obs)
    try:
        request = protocol.decode_request(frame, aloha_sim)
    except Pi0Error:
        return  # refused up front with a clear error: fine
    try:
        data = policy.prepare(request)
    except ObservationError:
        return  # refused as out of range by the policy (a clear error too)
    assert np.isfinite(np.asarray(data["state"])).all()
    assert all(np.asarray(img).size for img in data["image"].values())


def test_max_input_std_refuses_inputs_far_outside_the_norm_stats(policy):
    from pi0cli.policy.policy import InputRangeError

    state = np.zeros(14, np.float32)
    state[5] = 1e4
    try:
        policy.max_input_std = 6.0
        with pytest.raises(InputRangeError, match="--max-input-std 6"):
            policy.prepare(sim_obs() | {"state": state})
        policy.prepare(sim_obs())  # within range
    finally:
        policy.max_input_std = None
    policy.prepare(sim_obs() | {"state": state})  # off by default
