"""``pi0 norm-stats``: exact normalisation statistics of a LeRobot dataset, from its parquet columns only.

Statistics are over what the model trains on before padding: each frame's state and its chunk of
``--horizon`` actions, after the embodiment's input transform and delta actions. Quantiles are exact:
numpy's default ``np.quantile`` (linear interpolation) over every float32 value of a dimension.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pi0cli.cli import console
from pi0cli.cli.embodiments import complete_embodiment

if TYPE_CHECKING:
    from pi0cli.models.config import Pi0Config


def _default_horizon(embodiment) -> int:
    from pi0cli.models.config import preset

    try:
        return preset(embodiment.default_model).action_horizon
    except Exception:  # an embodiment naming a model without a preset (pi0_fast): the reference default
        return 50


def norm_stats(
    embodiment: Annotated[str | None, typer.Argument(help="Embodiment whose transforms and key map apply.",
                                                     autocompletion=complete_embodiment)] = None,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", "-d", help="LeRobot dataset: a local root or a repo id in the local cache.")] = None,
    mixture: Annotated[Path | None, typer.Option(
        "--mixture", help="Mixture file (as for pi0 train --mixture): one norm_stats.json per embodiment, over "
                          "all of its datasets; instead of EMBODIMENT --dataset.")] = None,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Assets directory; writes <out>/<asset_id>/norm_stats.json.")] = Path("assets"),
    horizon: Annotated[int | None, typer.Option(
        "--horizon", help="Action chunk length (default: --preset's, else the embodiment's default model's "
                          "action_horizon).")] = None,
    preset: Annotated[str | None, typer.Option(
        "--preset", help="Training preset the stats are for: its action horizon is the default --horizon.")] = None,
    check: Annotated[Path | None, typer.Option(
        "--check", help="Report how an existing norm_stats.json fits the dataset instead of writing one.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    fast_tokenizer: Annotated[bool, typer.Option(
        "--fast-tokenizer", help="Also fit a pi0-FAST action tokenizer on the normalised action chunks; writes "
                                 "<out>/<asset_id>/fast_tokenizer/ and reports its round-trip error.")] = False,
    vocab_size: Annotated[int | None, typer.Option(
        "--vocab-size", min=2,
        help="FAST tokenizer vocabulary (BPE ids; default 1024, or what fits a small --preset's model).")] = None,
    scale: Annotated[float, typer.Option(
        "--scale", help="FAST DCT quantisation scale (round-trip error <= 0.5*sqrt(H)/scale).")] = 10.0,
) -> None:
    """Compute exact mean, std, q01 and q99 of state and actions (no video is decoded)."""
    from pi0cli.data.stats import check_norm_stats, compute_norm_stats, load_columns, summarize
    from pi0cli.errors import Pi0Error
    from pi0cli.normstats import load_norm_stats, save_norm_stats

    if mixture is not None:
        if embodiment is not None or dataset is not None or check is not None or fast_tokenizer:
            raise Pi0Error("--mixture names the datasets and their embodiments: drop EMBODIMENT, --dataset, "
                           "--check and --fast-tokenizer")
        _mixture_stats(mixture, out, horizon, preset, as_json)
        return
    if embodiment is None or dataset is None:
        raise Pi0Error("name the embodiment and its dataset (pi0 norm-stats EMBODIMENT --dataset ROOT), or pass "
                       "--mixture mix.toml")
    emb = console.registry().embodiment(embodiment)
    if preset is not None:
        train_preset = console.registry().preset(preset)
        if train_preset.embodiment != emb.name:
            raise Pi0Error(f"preset {preset!r} trains embodiment {train_preset.embodiment!r}, not {emb.name!r}; "
                           f"run `pi0 norm-stats {train_preset.embodiment} --preset {preset} ...`")
        horizon = horizon or train_preset.model.action_horizon
        if fast_tokenizer:
            fits = _fast_vocab_for(train_preset.model)
            if vocab_size is not None and vocab_size > fits:
                # Caught here, not an hour later when `pi0 train` builds the model's tokenizer.
                raise Pi0Error(f"--vocab-size {vocab_size} does not fit preset {preset!r}: its model leaves room "
                               f"for {fits} FAST ids beside its text ids; pass --vocab-size {fits} or less (or "
                               "leave it out to get that size)")
            vocab_size = vocab_size or fits
    if check is not None and horizon is None:
        from pi0cli.normstats import norm_stats_path, read_computed_for

        # Stats are compared over the chunks they were computed over: another horizon shows drift that is not there.
        recorded = (read_computed_for(norm_stats_path(check)) or {}).get("horizon")
        horizon = recorded if isinstance(recorded, int) else None
    horizon = horizon or _default_horizon(emb)
    with console.err.status(f"reading {dataset} ..."):
        data = load_columns(emb, dataset)
    with console.Progress(f"{emb.name} norm stats", data.num_frames, unit="frames", transient=True) as progress:
        advance = _two_passes(progress, data.num_frames)
        if check is not None:
            existing = load_norm_stats(check)
            reports, _ = check_norm_stats(emb, dataset, existing, horizon=horizon, progress=advance, data=data)
        else:
            stats = compute_norm_stats(emb, dataset, horizon=horizon, progress=advance, data=data)
    if check is not None:
        _print_check(reports, summarize(reports), as_json, horizon)
        return
    from pi0cli.data.lerobot import resolve_dataset

    computed_for = {"embodiment": emb.name, "asset_id": emb.asset_id, "horizon": horizon, "dataset": str(dataset),
                    "dataset_root": str(resolve_dataset(dataset)[1]), "frames": data.num_frames,
                    "episodes": data.num_episodes, **({"preset": preset} if preset else {})}
    path = save_norm_stats(stats, out / emb.asset_id, computed_for=computed_for)
    fast: dict = {}
    if fast_tokenizer:
        from pi0cli.data.stats import fit_fast_tokenizer
        from pi0cli.models.fast_tokenizer import ASSET_DIR

        with console.err.status(f"fitting the FAST tokenizer on {dataset} ..."):
            tok, report = fit_fast_tokenizer(emb, dataset, stats, horizon=horizon, vocab_size=vocab_size or 1024,
                                             scale=scale)
        fast = {"fast_tokenizer": str(tok.save(path.parent / ASSET_DIR)), "vocab_size": tok.vocab_size,
                "chunks": report.chunks,
                "max_abs_error": report.max_abs_error, "mean_abs_error": report.mean_abs_error,
                "tokens_per_chunk": report.mean_tokens, "dct_coefficients": report.raw_coefficients,
                "compression": report.compression, "decode_failures": report.decode_failures}
    if as_json:
        console.out.print_json(json.dumps({"path": str(path), "frames": data.num_frames, "episodes": data.num_episodes,
                                           "horizon": horizon, **{k: v.to_json() for k, v in stats.items()},
                                           **({"fast": fast} if fast else {})}))
        return
    if fast:
        console.out.print(f"wrote {fast['fast_tokenizer']}: {fast['tokens_per_chunk']:.1f} tokens per chunk for "
                          f"{fast['dct_coefficients']} DCT coefficients ({fast['compression']:.1f}x), round trip "
                          f"max {fast['max_abs_error']:.4f} / mean {fast['mean_abs_error']:.4f} (normalised units) "
                          f"over {fast['chunks']} chunks")
    console.out.print(f"wrote {path} ({data.num_frames} frames, {data.num_episodes} episodes, action chunks of "
                      f"{horizon})")


def _mixture_stats(path: Path, out: Path, horizon: int | None, preset: str | None, as_json: bool) -> None:
    """``--mixture``: one stats file per embodiment, at ``<out>/<asset_id>/``, where ``pi0 train --mixture``
    looks."""
    from pi0cli.data.mixture import read_mixture, resolve_embodiments
    from pi0cli.data.mixture_stats import mixture_norm_stats
    from pi0cli.normstats import save_norm_stats

    registry = console.registry()
    spec = read_mixture(path)
    embodiments = resolve_embodiments(spec, registry.embodiment)
    horizon = horizon or (registry.preset(preset).model.action_horizon if preset else None)
    if horizon is None:
        horizons = {_default_horizon(e) for e in embodiments.values()}
        if len(horizons) > 1:
            from pi0cli.errors import Pi0Error

            raise Pi0Error(f"the mixture's robots default to different action horizons ({sorted(horizons)}); pass "
                           "--preset PRESET (the one you train) or --horizon N")
        horizon = horizons.pop()
    with console.err.status(f"reading the datasets of {path} ..."):
        results = mixture_norm_stats(spec, embodiments, horizon=horizon)
    written: list[dict[str, Any]] = []
    for result in results:
        emb = result.embodiment
        computed_for = {"embodiment": emb.name, "asset_id": emb.asset_id, "horizon": horizon, "mixture": str(path),
                        "dataset": ", ".join(s.dataset for s in result.sources), "frames": result.frames,
                        "episodes": result.episodes, **({"preset": preset} if preset else {})}
        stats_path = save_norm_stats(result.stats, out / emb.asset_id, computed_for=computed_for)
        written.append({"embodiment": emb.name, "path": str(stats_path), "frames": result.frames,
                        "episodes": result.episodes, "datasets": [s.dataset for s in result.sources]})
    if as_json:
        console.out.print_json(json.dumps({"horizon": horizon, "written": written}))
        return
    for row in written:
        console.out.print(f"wrote {row['path']} for {row['embodiment']} ({row['frames']} frames, {row['episodes']} "
                          f"episodes of {len(row['datasets'])} dataset(s), action chunks of {horizon})")


def _two_passes(progress: console.Progress, frames: int) -> Callable[[int], None]:
    """``advance(n)`` for statistics that read every frame twice: the frames of the current pass, and which."""
    seen = 0

    def advance(n: int) -> None:
        nonlocal seen
        seen += n
        second = seen > frames
        progress.fields["pass"] = "2/2" if second else "1/2"  # "pass" is a keyword: no update(pass=...)
        progress.update(seen - frames if second else seen)

    return advance


def _print_check(reports, summary, as_json: bool, horizon: int) -> None:
    if as_json:
        console.out.print_json(json.dumps({
            "dims": [{"key": r.key, "dim": r.dim, "clip_rate": r.clip_rate, "near_constant": r.near_constant,
                      "drift": r.drift, "drifted": r.drifted} for r in reports],
            "horizon": horizon, **summary,
        }))
        return
    from rich.table import Table

    table = Table("key", "dim", "clip rate", "drift (std)", "flags", title="Norm stats check", title_justify="left")
    for r in reports:
        flags = ", ".join(f for f, on in (("near-constant", r.near_constant), ("drifted", r.drifted)) if on)
        clip = f"{100 * r.clip_rate:.2f}%"
        table.add_row(r.key, str(r.dim), f"[red]{clip}[/red]" if r.clip_rate > 0.05 else clip, f"{r.drift:.2f}",
                      f"[yellow]{flags}[/yellow]" if flags else "")
    console.out.print(table)
    console.out.print(
        f"max clip rate {100 * summary['max_clip_rate']:.2f}%; near-constant: "
        f"{', '.join(summary['near_constant']) or 'none'}; "
        f"drifted by more than one std: {', '.join(summary['drifted']) or 'none'} (action chunks of {horizon})"
    )


def _fast_vocab_for(model: Pi0Config) -> int:
    """The FAST vocabulary ``pi0 train`` would fit for this model: the small CPU models carry a tiny prompt
    tokenizer and leave room for fewer FAST ids than PaliGemma's vocabulary."""
    from pi0cli.models.config import PALIGEMMA_VOCAB_SIZE
    from pi0cli.models.tokenizer import fast_vocab_that_fits
    from pi0cli.training.tiny_tokenizer import TINY_TOKENIZER_VOCAB

    vocab = model.vlm.vocab_size
    return fast_vocab_that_fits(vocab, vocab if vocab == PALIGEMMA_VOCAB_SIZE else TINY_TOKENIZER_VOCAB)
