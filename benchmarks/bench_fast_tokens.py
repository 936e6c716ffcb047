"""Benchmark: how many FAST tokens a chunk costs, and what that does to whole-chunk accuracy, per DCT scale and
BPE vocabulary size. Offline and cheap (parquet columns only, no video, no model): it says which tokenizer to
train pi0-FAST with before an hour is spent training it.

A FAST chunk is decoded token by token, so with a per-token accuracy ``p`` (teacher-forced, measured on held-out
demonstrations by ``bench_fast_vs_pi0.py --heldout``) a chunk of ``n`` tokens comes out whole with probability
near ``p ** n`` when errors are independent. Fewer tokens per chunk raise that, and a coarser DCT scale buys fewer
tokens with a larger quantisation error. Baseline, measured in the same run: the shipped tokenizer setting
(scale 10, the ``--vocab-size`` of the baseline preset run). Each row reports its tokens per chunk as a ratio to it.

    .venv/bin/python benchmarks/bench_fast_tokens.py --dataset DEMOS --norm-stats ASSETS_DIR \
        --token-accuracy 0.815 --out fast_tokens.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="LeRobot dataset root")
    parser.add_argument("--embodiment", default="aloha_sim")
    parser.add_argument("--norm-stats", required=True, type=Path, help="norm_stats.json or its directory")
    parser.add_argument("--horizon", type=int, default=10, help="action chunk length (pi0_fast_*_small: 10)")
    parser.add_argument("--scales", default="10,6,4,3,2")
    parser.add_argument("--vocab-sizes", default="512,1024")
    parser.add_argument("--baseline", default="10,512", help="scale,vocab of the baseline row")
    parser.add_argument("--token-accuracy", type=float, default=None,
                        help="measured per-token accuracy p; adds the whole-chunk estimate p ** tokens")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from pi0cli.data.stats import fit_fast_tokenizer
    from pi0cli.normstats import load_norm_stats
    from pi0cli.plugins.manager import get_registry

    emb = get_registry().embodiment(args.embodiment)
    stats = load_norm_stats(args.norm_stats)
    base_scale, base_vocab = (float(x) for x in args.baseline.split(","))
    grid = [(float(s), int(v)) for s in args.scales.split(",") for v in args.vocab_sizes.split(",")]
    if (base_scale, int(base_vocab)) not in grid:
        grid.insert(0, (base_scale, int(base_vocab)))
    rows = []
    for scale, vocab in grid:
        t0 = time.perf_counter()
        _, report = fit_fast_tokenizer(emb, args.dataset, stats, horizon=args.horizon, scale=scale, vocab_size=vocab)
        row = {"scale": scale, "vocab_size": vocab, "tokens_per_chunk": report.mean_tokens,
               "mean_abs_error": report.mean_abs_error, "max_abs_error": report.max_abs_error,
               "decode_failures": report.decode_failures, "chunks": report.chunks,
               "fit_seconds": round(time.perf_counter() - t0, 1)}
        if args.token_accuracy is not None:
            row["whole_chunk_estimate"] = args.token_accuracy ** report.mean_tokens
        rows.append(row)
    base = next(r for r in rows if (r["scale"], r["vocab_size"]) == (base_scale, int(base_vocab)))
    print("| DCT scale | vocab | tokens / chunk | vs baseline | round-trip MAE | round-trip max |"
          + (" whole chunks at p |" if args.token_accuracy is not None else ""))
    print("|---:|---:|---:|---:|---:|---:|" + ("---:|" if args.token_accuracy is not None else ""))
    for r in rows:
        r["tokens_vs_baseline"] = r["tokens_per_chunk"] / base["tokens_per_chunk"]
        extra = f" {100 * r['whole_chunk_estimate']:.1f}% |" if args.token_accuracy is not None else ""
        print(f"| {r['scale']:g} | {r['vocab_size']} | {r['tokens_per_chunk']:.1f} | {r['tokens_vs_baseline']:.2f}x | "
              f"{r['mean_abs_error']:.4f} | {r['max_abs_error']:.3f} |{extra}")
    result = {"dataset": args.dataset, "embodiment": args.embodiment, "horizon": args.horizon,
              "token_accuracy": args.token_accuracy, "baseline": {"scale": base_scale, "vocab_size": base_vocab},
              "rows": rows}
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
