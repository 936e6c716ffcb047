"""Will it fit? Compiled peak memory per device of the built-in presets and of the memory planner's plans.

Everything is compiled abstractly (``jax.eval_shape`` + ``lower().compile().memory_analysis()``): nothing is
allocated, so full-size models are measured on a laptop CPU (whose program upcasts bfloat16: an estimate).

    python benchmarks/bench_memory.py                 # full-size peaks at batch 32 vs the targets
    python benchmarks/bench_memory.py --fsdp 8        # the full fine-tune planned over 8 forced host devices
    python benchmarks/bench_memory.py --speed         # steps/s of pi0_aloha_sim_small: planner vs default
    python benchmarks/bench_memory.py --write-peaks   # regenerate the table the preset descriptions read

One full-size compile at a time (each takes tens of seconds and a few GiB of host memory).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fsdp", type=int, default=0, help="force this many host devices and plan over them")
    parser.add_argument("--speed", action="store_true", help="steps/s of the small CPU preset")
    parser.add_argument("--write-peaks", action="store_true", help="regenerate each plugin's peaks.json")
    parser.add_argument("--robot", default="aloha", help="robot whose full-size presets are measured")
    return parser.parse_args()


ARGS = _args()
if ARGS.fsdp:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={ARGS.fsdp}"

import jax  # noqa: E402

from pi0cli.plugins.manager import get_registry  # noqa: E402
from pi0cli.training import peaks  # noqa: E402
from pi0cli.training.config import TrainConfig  # noqa: E402
from pi0cli.training.dryrun import dry_run  # noqa: E402
from pi0cli.training.planner import GiB, Plan, format_bytes, plan_memory  # noqa: E402


def _memory_key(config: TrainConfig) -> TrainConfig:
    """Presets that differ only in names, data or schedule compile to the same program."""
    return dataclasses.replace(config, name="", embodiment="", dataset=None, description="", default_prompt=None,
                               policy_metadata={}, num_train_steps=1, delta_action_mask=None)


def write_peaks() -> None:
    """Each plugin's peaks.json (beside its module): the peaks of the presets it registers."""
    registry = get_registry()
    seen: dict[str, int] = {}
    tables: dict[Path, dict[str, peaks.PresetPeak]] = {}
    for name, config in sorted(registry.presets.items()):
        if config.model.model_type not in ("pi0", "pi05"):
            print(f"{name}: skipped (the trainer's dry-run builds pi0 / pi0.5 models)")
            continue
        key = repr(_memory_key(config))
        if key not in seen:
            start = time.perf_counter()
            seen[key] = dry_run(config).peak_bytes
            print(f"{name}: {format_bytes(seen[key])} ({time.perf_counter() - start:.0f} s)", flush=True)
        plugin = registry.plugin_manager.get_plugin(registry.provider("preset", name).name)
        path = Path(plugin.__file__).with_name(peaks.PEAKS_FILENAME)
        tables.setdefault(path, {})[name] = peaks.PresetPeak(seen[key], config.batch_size, jax.device_count(),
                                                             jax.default_backend())
    for path, table in tables.items():
        peaks.write_peaks(path, table)
        print(f"wrote {path} ({len(table)} presets)")
    print(f"{len(seen)} compiles")


def _row(label: str, peak: int, target: float | None) -> None:
    verdict = "" if target is None else ("  ok" if peak <= target * GiB else f"  OVER {target:g} GiB")
    print(f"{label:<58} {format_bytes(peak):>11}{'' if target is None else f'  (target <= {target:g} GiB)'}"
          f"{verdict}", flush=True)


def full_size(robot: str) -> None:
    registry = get_registry()
    print(f"backend {jax.default_backend()}, {jax.device_count()} device(s), batch 32, jax {jax.__version__}")
    for suffix, target in (("_lora", 24.0), ("_lora_lowmem", 16.0)):
        config = registry.preset(f"pi0_{robot}{suffix}")
        _row(f"pi0_{robot}{suffix} (preset as shipped)", dry_run(config).peak_bytes, target)
    full = registry.preset(f"pi0_{robot}")
    _row(f"pi0_{robot} (full fine-tune as shipped)", dry_run(full).peak_bytes, None)
    result = plan_memory(full, 60 * GiB, on_compile=lambda p, b: print(f"  compiled {_short(p)}: {format_bytes(b)}",
                                                                        flush=True))
    _row(f"pi0_{robot} planned for 60 GiB: {_short(result.plan)}", result.peak_bytes, 60.0)
    print(f"  extra FLOPs {result.extra_flops:+.0%}; {result.backend_note}")


def fsdp(robot: str, devices: int) -> None:
    full = get_registry().preset(f"pi0_{robot}")
    print(f"backend {jax.default_backend()}, {jax.device_count()} forced host devices, batch {full.batch_size}")
    result = plan_memory(full, 12 * GiB, on_compile=lambda p, b: print(f"  compiled {_short(p)}: {format_bytes(b)}",
                                                                        flush=True))
    _row(f"pi0_{robot} planned for 12 GiB/device over {devices}: {_short(result.plan)}", result.peak_bytes, 12.0)
    print(f"  extra FLOPs {result.extra_flops:+.0%}; {result.backend_note}")


def _short(plan: Plan) -> str:
    base = Plan(fsdp_devices=plan.fsdp_devices, freeze_vision=plan.freeze_vision, ema=plan.ema)
    changes = [f"{f.name}={getattr(plan, f.name)}" for f in dataclasses.fields(plan)
               if getattr(plan, f.name) != getattr(base, f.name)]
    return ", ".join(changes) or "no trades"


def speed() -> None:
    from pi0cli.training.planner import measure_speed

    config = get_registry().preset("pi0_aloha_sim_small")
    budget = 1 * GiB
    result = plan_memory(config, budget, measure_steps=10)
    print(f"pi0_aloha_sim_small, batch {config.batch_size}, budget {format_bytes(budget)}; measured variants:")
    for plan, rate in result.measured:
        print(f"  {_short(plan):<60} {rate:6.2f} steps/s")
    # Interleave the two once more so machine load hits both alike.
    default, planned = [], []
    for _ in range(3):
        default.append(measure_speed(config, 10, repeats=1))
        planned.append(measure_speed(result.config, 10, repeats=1))
    d, p = max(default), max(planned)
    print(f"today's default {d:.2f} steps/s; planner's choice ({_short(result.plan)}) {p:.2f} steps/s: "
          f"{p / d:.2f}x (target >= 1.2x)")


def main() -> None:
    if ARGS.write_peaks:
        write_peaks()
    elif ARGS.speed:
        speed()
    elif ARGS.fsdp:
        fsdp(ARGS.robot, ARGS.fsdp)
    else:
        full_size(ARGS.robot)


if __name__ == "__main__":
    main()
