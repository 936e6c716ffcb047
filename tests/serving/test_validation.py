"""One validator (the embodiment's ``validate_observation``) for every request: it names the problem, finds
cameras and state under nested and flat keys alike, and whatever it accepts the real inference transforms take;
a finite but huge input never becomes NaN actions (tiny random-weight pi0, transforms without JAX compilation;
the model-side NaN check is in tests/policy/test_policy.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving_helpers import sim_obs

from pi0cli.errors import ObservationError, Pi0Error
from pi0cli.observation_check import MAX_PROMPT_CHARS, check_observation
from pi0cli.serving import protocol
from pi0cli.transforms import flatten, unflatten


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
        request = aloha_sim.validate_observation(protocol.decode_request(frame))
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


@pytest.mark.parametrize("change, words", [
    (lambda o: {**o, "state": np.full(14, np.nan, np.float32)}, "aloha_sim: 'state' holds NaN or infinity"),
    (lambda o: {**o, "prev_actions": [[0.0, float("inf")]]}, "'prev_actions[0][1]' holds NaN"),
    (lambda o: {**o, "images": {"cam_high": np.full((3, 4, 4), np.nan, np.float32)}}, "'images/cam_high' holds NaN"),
    (lambda o: {**o, "prompt": 3}, "'prompt' must be a string, got int"),
    (lambda o: {**o, "prompt": None}, "'prompt' must be a string"),
    (lambda o: {**o, "prompt": "x" * (MAX_PROMPT_CHARS + 1)}, f"at most {MAX_PROMPT_CHARS}"),
    (lambda o: {**o, "state": np.zeros(13, np.float32)}, "'state' must have shape (14,), got (13,)"),
    (lambda o: {**o, "state": [[1.0], [2.0, 3.0]]}, "numeric vector of 14"),
    (lambda o: {"state": o["state"]}, "no image 'images/cam_high'"),
    (lambda o: {**o, "images": {"cam_high": np.zeros((0, 0, 3), np.uint8)}}, "with an empty dimension"),
    (lambda o: {**o, "images": {"cam_high": np.zeros((5, 5), np.uint8)}}, "HxWx3 or 3xHxW"),
    (lambda o: {**o, "images": {"cam_high": np.full((3, 4, 4), 2.0, np.float32)}}, "in [0, 1]"),
    (lambda o: [o], "must be a map"),
    (lambda o: {}, "empty map"),
])
def test_the_validator_names_the_key_and_the_fix(aloha_sim, change, words):
    aloha_sim.validate_observation(sim_obs())
    with pytest.raises(ObservationError) as info:
        aloha_sim.validate_observation(change(sim_obs()))
    assert words in str(info.value)


def test_without_an_embodiment_only_the_robot_independent_rules_apply():
    assert check_observation({"anything": np.zeros((0, 1))})  # no robot: no camera or state rules
    with pytest.raises(ObservationError, match="'a/b' holds NaN"):
        check_observation({"a": {"b": np.float32("nan")}})
    with pytest.raises(ObservationError, match="'prompt' must be a string"):
        check_observation({"prompt": b"bytes"})


def droid_forms(droid):
    """DROID's example observation with flat ``observation/...`` keys, and the same nested."""
    flat = droid.example_observation(0)
    assert "observation/exterior_image_1_left" in flat
    return {"flat": flat, "nested": unflatten(flatten(flat))}


@pytest.fixture(scope="module")
def droid():
    from pi0_embodiment_droid import DROID

    return DROID


@pytest.mark.parametrize("form", ["flat", "nested"])
@pytest.mark.parametrize("shape", [(0, 0, 3), (180, 0, 3), (3, 0, 320)])
def test_flat_and_nested_keys_are_validated_alike(droid, form, shape):
    """Regression: an empty image under DROID's flat key used to pass the server's check (which followed
    nested keys only) while the nested form was refused."""
    obs = droid_forms(droid)[form]
    droid.validate_observation(obs)
    key = "observation/exterior_image_1_left"
    bad = ({**obs, key: np.zeros(shape, np.uint8)} if form == "flat" else
           {**obs, "observation": {**obs["observation"], "exterior_image_1_left": np.zeros(shape, np.uint8)}})
    with pytest.raises(ObservationError, match=f"image '{key}' has shape .* with an empty dimension"):
        droid.validate_observation(bad)


def test_the_server_refuses_a_flat_key_empty_image(droid):
    from serving_helpers import fake_policy
    from websockets.sync.client import connect

    from pi0cli.serving.server import PolicyServer, ServerThread

    with ServerThread(PolicyServer(fake_policy(droid), embodiment=droid, port=0)) as thread:
        with connect(f"ws://127.0.0.1:{thread.port}", open_timeout=10) as ws:
            ws.recv(timeout=10)  # metadata
            for form, obs in droid_forms(droid).items():
                ws.send(protocol.packb(obs))
                assert isinstance(ws.recv(timeout=30), bytes), form
            flat = droid_forms(droid)["flat"] | {"observation/wrist_image_left": np.zeros((0, 0, 3), np.uint8)}
            ws.send(protocol.packb(flat))
            reply = ws.recv(timeout=30)
    assert isinstance(reply, str) and "'observation/wrist_image_left' has shape (0, 0, 3)" in reply, reply
