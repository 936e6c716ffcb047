"""``benchmarks/bench_fast_tokens.py``: tokens per chunk and round-trip error per DCT scale and vocabulary."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from datahelpers import HORIZON, embodiment

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_fast_tokens.py"


def test_the_grid_reports_what_each_tokenizer_costs(datasets, tmp_path):
    from pi0cli.data.stats import compute_norm_stats
    from pi0cli.normstats import save_norm_stats

    emb = embodiment("aloha_sim")
    stats = save_norm_stats(compute_norm_stats(emb, datasets["aloha_sim"], horizon=HORIZON), tmp_path / "assets")
    spec = importlib.util.spec_from_file_location("bench_fast_tokens", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "tokens.json"
    result = bench.main(["--dataset", str(datasets["aloha_sim"]), "--norm-stats", str(stats), "--horizon",
                         str(HORIZON), "--scales", "10,2", "--vocab-sizes", "256,300", "--baseline", "10,256",
                         "--token-accuracy", "0.9", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    rows = {(r["scale"], r["vocab_size"]): r for r in result["rows"]}
    assert set(rows) == {(10.0, 256), (10.0, 300), (2.0, 256), (2.0, 300)}
    coefficients = HORIZON * emb.action_dim
    for scale in (10.0, 2.0):
        assert rows[scale, 256]["tokens_per_chunk"] == coefficients  # no merges: one token per coefficient
        assert rows[scale, 300]["tokens_per_chunk"] < coefficients
    for row in result["rows"]:
        assert row["decode_failures"] == 0
        assert row["whole_chunk_estimate"] == pytest.approx(0.9 ** row["tokens_per_chunk"])
        assert row["tokens_vs_baseline"] == pytest.approx(row["tokens_per_chunk"] / coefficients)
    assert rows[2.0, 300]["mean_abs_error"] > rows[10.0, 300]["mean_abs_error"]  # coarser steps, larger error
