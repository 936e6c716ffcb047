"""Mixture files and the weighted batch order: parsing errors, frequencies, determinism, no early repeats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pi0cli.data.loader import Shard
from pi0cli.data.mixture import MixtureError, MixtureOrder, read_mixture, source_counts


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mix.toml"
    path.write_text(text)
    return path


def test_a_mixture_file_reads_into_sources(tmp_path):
    spec = read_mixture(_write(tmp_path, """
[[dataset]]
path = "a"
embodiment = "aloha_sim"
weight = 3
prompt = "pick it"
[[dataset]]
repo_id = "user/b"
embodiment = "metaworld"
[[dataset]]
path = "/abs/c"
embodiment = "metaworld"
weight = 0.0
"""))
    a, b, c = spec.sources
    assert (a.dataset, a.embodiment, a.weight, a.prompt) == (str(tmp_path / "a"), "aloha_sim", 3.0, "pick it")
    assert (b.dataset, b.weight, b.prompt) == ("user/b", 1.0, None)
    assert c.dataset == "/abs/c"
    assert spec.probabilities.tolist() == [0.75, 0.25, 0.0]
    assert spec.names == ("aloha_sim", "metaworld#2", "metaworld#3")


@pytest.mark.parametrize(("body", "message"), [
    ('path = "a"\nembodiment = "x"\nweight = -1', r"dataset #1 \(.*a\): weight -1 is negative; use a weight >= 0"),
    ('path = "a"\nembodiment = "x"\nweight = 0', r"every weight is zero; give at least one dataset a positive"),
    ('path = "a"\nweight = 1', r"dataset #1 \(.*a\): no embodiment; add embodiment"),
    ('embodiment = "x"', r"dataset #1: give exactly one of path .* or repo_id"),
    ('path = "a"\nembodiment = "x"\nwieght = 2', r"dataset #1: unknown key 'wieght'"),
    ('path = "a"\nembodiment = "x"\nweight = "heavy"', r"weight must be a number, got 'heavy'"),
])
def test_bad_entries_name_the_entry_and_the_fix(tmp_path, body, message):
    with pytest.raises(MixtureError, match=message):
        read_mixture(_write(tmp_path, "[[dataset]]\n" + body + "\n"))


def test_a_missing_or_empty_file_is_one_error(tmp_path):
    with pytest.raises(MixtureError, match="not found"):
        read_mixture(tmp_path / "nope.toml")
    with pytest.raises(MixtureError, match=r"no \[\[dataset\]\] entries"):
        read_mixture(_write(tmp_path, "title = 'x'\n"))
    with pytest.raises(MixtureError, match="cannot be read"):
        read_mixture(_write(tmp_path, "[[dataset]\n"))


def test_sources_are_drawn_in_proportion_to_the_weights(tmp_path):
    """Chi-square goodness of fit with a fixed seed: 2 degrees of freedom, 13.8 is the 0.1% critical value."""
    spec = read_mixture(_write(tmp_path, "".join(
        f'[[dataset]]\npath = "{n}"\nembodiment = "e{n}"\nweight = {w}\n' for n, w in (("a", 5), ("b", 3), ("c", 2)))))
    order = MixtureOrder([100, 7, 50], spec.probabilities.tolist(), batch_size=16, seed=3)
    counts = np.array(list(source_counts(spec, order, steps=500).values()), dtype=float)
    expected = counts.sum() * spec.probabilities
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 13.8, (counts, expected)
    # A biased draw fails the same bound: the test can tell.
    skewed = counts + np.array([-240.0, 120.0, 120.0])
    assert float(((skewed - expected) ** 2 / expected).sum()) > 13.8


def test_the_order_depends_only_on_seed_and_step_and_stays_in_each_source():
    sizes, p = [30, 5], [0.5, 0.5]
    a = MixtureOrder(sizes, p, batch_size=8, seed=1)
    b = MixtureOrder(sizes, p, batch_size=8, seed=1)
    late = [b.global_indices(s) for s in (40, 3, 17)]  # queried out of order, on a fresh object
    assert all(np.array_equal(x, a.global_indices(s)) for x, s in zip(late, (40, 3, 17), strict=True))
    assert not np.array_equal(a.global_indices(3), MixtureOrder(sizes, p, batch_size=8, seed=2).global_indices(3))
    for step in range(50):
        idx, src = a.global_indices(step), a.sources(step)
        assert np.all((src == 0) == (idx < 30)) and idx.min() >= 0 and idx.max() < 35


def test_a_source_does_not_repeat_a_frame_within_its_epoch():
    order = MixtureOrder([40, 1000], [0.5, 0.5], batch_size=8, seed=0)
    # Source 0 advances one permutation of its 40 frames every 40 stream positions (5 steps of 8).
    for start in range(0, 40, 5):
        drawn = np.concatenate([order.global_indices(s) for s in range(start, start + 5)])
        small = drawn[drawn < 40]
        assert len(small) == len(set(small.tolist())), small


def test_each_process_loads_its_slice():
    full = MixtureOrder([20, 20], [0.3, 0.7], batch_size=8, seed=0)
    parts = [MixtureOrder([20, 20], [0.3, 0.7], batch_size=8, seed=0, shard=Shard(p, 2)) for p in range(2)]
    for step in range(5):
        assert np.array_equal(np.concatenate([o.local_indices(step) for o in parts]), full.global_indices(step))
