"""Generic transforms: reference formulas and the round-trip properties (hypothesis)."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pi0cli.errors import NormStatsError, ObservationError
from pi0cli.normstats import NormStats, load_norm_stats, save_norm_stats
from pi0cli.transforms import (
    AbsoluteActions,
    DeltaActions,
    InjectDefaultPrompt,
    Normalize,
    PadStatesAndActions,
    Repack,
    ResizeImages,
    Unnormalize,
    bool_mask,
    compose,
    crop_fraction,
    flatten,
    lookup,
    normalize,
    pad_to_dim,
    resize_with_pad,
    stack_trees,
    to_absolute_actions,
    to_delta_actions,
    to_uint8_hwc,
    unflatten,
    unnormalize,
)

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@st.composite
def stats_and_data(draw):
    dim = draw(st.integers(1, 16))
    horizon = draw(st.integers(1, 8))
    mean = draw(hnp.arrays(np.float64, dim, elements=finite))
    std = draw(hnp.arrays(np.float64, dim, elements=st.floats(1e-2, 1e2)))
    q01 = draw(hnp.arrays(np.float64, dim, elements=finite))
    width = draw(hnp.arrays(np.float64, dim, elements=st.floats(1e-2, 1e2)))
    x = draw(hnp.arrays(np.float64, (horizon, dim), elements=finite))
    return NormStats(mean=mean, std=std, q01=q01, q99=q01 + width), x


@given(stats_and_data(), st.booleans())
def test_unnormalize_inverts_normalize(case, quantile):
    stats, x = case
    back = unnormalize(normalize(x, stats, quantile), stats, quantile)
    np.testing.assert_allclose(back, x, rtol=1e-9, atol=1e-9 * (1 + np.abs(x).max()))


def test_normalize_matches_reference_formulas():
    stats = NormStats(mean=[1.0, 2.0], std=[2.0, 4.0], q01=[-1.0, 0.0], q99=[1.0, 10.0])
    x = np.array([3.0, 6.0])
    np.testing.assert_allclose(normalize(x, stats, False), [(3 - 1) / (2 + 1e-6), (6 - 2) / (4 + 1e-6)], rtol=1e-6)
    np.testing.assert_allclose(
        normalize(x, stats, True), [(3 + 1) / (2 + 1e-6) * 2 - 1, (6 - 0) / (10 + 1e-6) * 2 - 1], rtol=1e-6
    )


def test_unnormalize_passes_model_padding_through():
    stats = NormStats(mean=[1.0, 2.0], std=[2.0, 4.0], q01=[-1.0, 0.0], q99=[1.0, 10.0])
    padded = np.array([[0.5, -0.5, 7.0, 8.0]])
    # Quantile mode passes padding through; z-score pads mean with 0 and std with 1 (so scales by 1 + 1e-6),
    # exactly as the reference does.
    np.testing.assert_array_equal(unnormalize(padded, stats, True)[:, 2:], padded[:, 2:])
    np.testing.assert_allclose(unnormalize(padded, stats, False)[:, 2:], padded[:, 2:] * (1 + 1e-6), rtol=1e-7)


def test_normalize_transform_skips_absent_keys_unless_strict():
    stats = {"state": NormStats(mean=[0.0], std=[1.0]), "actions": NormStats(mean=[1.0], std=[1.0])}
    data = {"state": np.array([2.0])}
    assert Normalize(stats)(data)["state"] == pytest.approx(2.0 / (1 + 1e-6))
    with pytest.raises(NormStatsError, match="actions"):
        Unnormalize(stats, strict=True)(data)


def test_quantile_mode_without_quantiles_is_a_clear_error():
    with pytest.raises(NormStatsError, match="q01 and q99"):
        normalize(np.zeros(2), NormStats(mean=[0, 0], std=[1, 1]), use_quantiles=True)


@st.composite
def actions_state_mask(draw):
    dim = draw(st.integers(1, 14))
    mask = tuple(draw(st.lists(st.booleans(), min_size=1, max_size=dim)))
    batch = draw(st.sampled_from([(), (3,)]))
    actions = draw(hnp.arrays(np.float64, (*batch, 5, dim), elements=finite))
    state = draw(hnp.arrays(np.float64, (*batch, dim), elements=finite))
    return actions, state, mask


@given(actions_state_mask())
def test_absolute_inverts_delta(case):
    actions, state, mask = case
    back = to_absolute_actions(to_delta_actions(actions, state, mask), state, mask)
    np.testing.assert_allclose(back, actions, atol=1e-9)


def test_delta_actions_by_hand():
    state = np.array([1.0, 2.0, 3.0])
    actions = np.array([[10.0, 20.0, 30.0], [11.0, 21.0, 31.0]])
    out = DeltaActions(bool_mask(1, -1))({"state": state, "actions": actions})
    np.testing.assert_array_equal(out["actions"], [[9.0, 20.0, 30.0], [10.0, 21.0, 31.0]])
    np.testing.assert_array_equal(actions, [[10.0, 20.0, 30.0], [11.0, 21.0, 31.0]])  # input untouched
    again = AbsoluteActions(bool_mask(1, -1))(out)
    np.testing.assert_array_equal(again["actions"], actions)
    assert bool_mask(6, -1, 6, -1) == (True,) * 6 + (False,) + (True,) * 6 + (False,)


@st.composite
def image_and_target(draw):
    h, w = draw(st.integers(2, 64)), draw(st.integers(2, 64))
    th, tw = draw(st.integers(4, 48)), draw(st.integers(4, 48))
    return h, w, th, tw


@settings(max_examples=60, deadline=None)
@given(image_and_target())
def test_resize_with_pad_keeps_aspect_and_centres(case):
    h, w, th, tw = case
    image = np.full((h, w, 3), 200, dtype=np.uint8)
    out = resize_with_pad(image, th, tw)
    assert out.shape == (th, tw, 3) and out.dtype == np.uint8
    if (h, w) == (th, tw):
        np.testing.assert_array_equal(out, image)
        return
    rows = np.flatnonzero(out[..., 0].any(axis=1))
    cols = np.flatnonzero(out[..., 0].any(axis=0))
    content_h, content_w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    ratio = max(w / tw, h / th)
    assert (content_h, content_w) == (max(1, int(h / ratio)), max(1, int(w / ratio)))
    # One side fills the canvas (less one pixel where float division truncates, as in the reference);
    # the other is centred (floor of half the padding on the top/left).
    assert content_h >= th - 1 or content_w >= tw - 1
    assert rows[0] == (th - content_h) // 2 and cols[0] == (tw - content_w) // 2
    # Aspect ratio kept up to the integer truncation of the resized side.
    if min(content_h, content_w) > 1:
        assert abs(content_w / content_h - w / h) <= (w / h) * (1 / content_h + 1 / content_w) + 1e-9


def test_resize_with_pad_batches_and_floats():
    images = np.random.default_rng(0).random((2, 3, 20, 40, 3)).astype(np.float32)
    out = resize_with_pad(images, 10, 10)
    assert out.shape == (2, 3, 10, 10, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, :, :2], 0.0)  # 20x40 -> 5x10, centred: rows 2..6 hold the image
    assert (out[:, :, 2:7] > 0).any()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.floats(0, 0.9), st.floats(0, 0.9), st.floats(0.01, 1),
       st.floats(0.01, 1))
def test_crop_fraction_cuts_the_window(h, w, top, left, height, width):
    height, width = min(height, 1 - top), min(width, 1 - left)
    image = np.arange(h * w * 3, dtype=np.int64).reshape(h, w, 3)
    out = crop_fraction(image, (top, left, height, width))
    y0, x0 = min(h - 1, round(top * h)), min(w - 1, round(left * w))  # a window past the edge keeps its last pixel
    assert out.shape[-1] == 3 and out.shape[0] >= 1 and out.shape[1] >= 1
    np.testing.assert_array_equal(out, image[y0:y0 + out.shape[0], x0:x0 + out.shape[1]])
    assert abs(out.shape[0] - height * h) <= 1.5 or out.shape[0] == 1
    assert abs(out.shape[1] - width * w) <= 1.5 or out.shape[1] == 1
    np.testing.assert_array_equal(crop_fraction(image, (0, 0, 1, 1)), image)
    batched = crop_fraction(np.stack([image, image]), (top, left, height, width))
    np.testing.assert_array_equal(batched[1], out)


def test_resize_images_transform():
    data = {"image": {"base_0_rgb": np.zeros((480, 640, 3), np.uint8)}, "state": np.zeros(2)}
    assert ResizeImages(224, 224)(data)["image"]["base_0_rgb"].shape == (224, 224, 3)


def test_to_uint8_hwc():
    chw = np.ones((3, 4, 5), np.float32) * 0.5
    out = to_uint8_hwc(chw)
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8 and out[0, 0, 0] == 127
    with pytest.raises(ObservationError, match="3 axes"):
        to_uint8_hwc(np.zeros((4, 5)))


def test_pad_to_dim():
    assert pad_to_dim(np.ones((2, 3)), 5).tolist() == [[1, 1, 1, 0, 0]] * 2
    assert pad_to_dim(np.ones(4), 2).shape == (4,)
    out = PadStatesAndActions(4)({"state": np.ones(2), "actions": np.ones((3, 2))})
    assert out["state"].shape == (4,) and out["actions"].shape == (3, 4)


@given(st.dictionaries(st.text("abc", min_size=1, max_size=3),
                       st.dictionaries(st.text("xyz", min_size=1, max_size=3), st.integers(), max_size=3),
                       max_size=4))
def test_unflatten_inverts_flatten(tree):
    tree = {k: v for k, v in tree.items() if v}
    assert unflatten(flatten(tree)) == tree


def test_flatten_keeps_order_and_leaves_no_reference_cycle():
    class Leaf:
        pass

    leaf = Leaf()
    ref = weakref.ref(leaf)
    gc.disable()  # only reference counting frees now: a cycle through the result would keep the leaf alive
    try:
        flat = flatten({"a": {"b": leaf, "c": {"d": 1}}, "e": 2})
        assert list(flat) == ["a/b", "a/c/d", "e"]
        del flat, leaf
        assert ref() is None
    finally:
        gc.enable()


def test_stack_trees_stacks_or_concatenates():
    trees = [{"x": np.full((2,), i), "n": {"y": np.array(i)}, "s": f"p{i}"} for i in range(3)]
    stacked = stack_trees(trees)
    assert stacked["x"].shape == (3, 2) and stacked["n"]["y"].tolist() == [0, 1, 2]
    assert stacked["s"] == ["p0", "p1", "p2"]
    joined = stack_trees([stacked, stacked], concatenate=True)
    assert joined["x"].shape == (6, 2) and joined["n"]["y"].tolist() == [0, 1, 2] * 2 and len(joined["s"]) == 6


def test_lookup_reads_flat_and_nested_paths():
    assert lookup({"observation/state": 1}, "observation/state") == 1
    assert lookup({"observation": {"state": 2}}, "observation/state") == 2
    with pytest.raises(KeyError):
        lookup({"observation": {}}, "observation/state")


def test_repack_renames_and_reports_missing_keys():
    row = {"observation.state": np.ones(2), "action": np.zeros((3, 2)), "extra": 1}
    out = Repack({"state": "observation.state", "actions": "action", "images/cam": "cam"},
                 optional=frozenset({"images/cam"}))(row)
    assert set(out) == {"state", "actions"}
    with pytest.raises(ObservationError, match="'cam'.*available keys: action, extra, observation.state"):
        Repack({"images/cam": "cam"})(row)


def test_compose_and_default_prompt():
    pipeline = compose(InjectDefaultPrompt("pick"), None, compose(DeltaActions(None)))
    assert len(pipeline.transforms) == 2
    assert pipeline({})["prompt"] == "pick"
    assert pipeline({"prompt": "place"})["prompt"] == "place"


def test_norm_stats_file_round_trip_in_reference_format(tmp_path):
    stats = {"state": NormStats(mean=[0.5, 1.0], std=[1.0, 2.0], q01=[-1.0, 0.0], q99=[1.0, 3.0]),
             "actions": NormStats(mean=[0.0], std=[1.0])}
    path = save_norm_stats(stats, tmp_path / "assets" / "trossen")
    assert path.name == "norm_stats.json"
    import json

    raw = json.loads(path.read_text())
    assert raw["norm_stats"]["actions"] == {"mean": [0.0], "std": [1.0], "q01": None, "q99": None}
    loaded = load_norm_stats(path.parent)
    np.testing.assert_array_equal(loaded["state"].q99, [1.0, 3.0])
    assert not list(path.parent.glob(".*tmp"))  # the atomic write left nothing behind


@pytest.mark.parametrize("text, match", [
    ("{", "not valid JSON"),
    ('{"stats": {}}', "top-level 'norm_stats'"),
    ('{"norm_stats": {"state": {"mean": [1, "x"], "std": [1, 1]}}}', "'mean' must be a list of numbers"),
    ('{"norm_stats": {"state": {"mean": [1, 2], "std": [1]}}}', "differ in shape"),
])
def test_bad_norm_stats_files_give_one_clear_error(tmp_path, text, match):
    (tmp_path / "norm_stats.json").write_text(text)
    with pytest.raises(NormStatsError, match=match):
        load_norm_stats(tmp_path)
    with pytest.raises(NormStatsError, match="no norm stats"):
        load_norm_stats(tmp_path / "missing")
