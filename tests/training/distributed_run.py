"""A tiny training run for the sharding tests, as a script: ``python distributed_run.py OUT_JSON [options]``.

Run with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` for several CPU devices, or several times
with ``--coordinator``/``--process-id`` for a multi-process run through ``jax.distributed``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from train_helpers import fake_batches, tiny_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--exp-dir", required=True)
    parser.add_argument("--fsdp", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--coordinator")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--save-interval", type=int, default=1000)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()

    from pi0cli.training.sharding import init_distributed

    init_distributed(args.coordinator, args.num_processes, args.process_id)
    import jax

    from pi0cli.training import trainer
    from pi0cli.training.checkpoints import Assets

    config = tiny_config(num_train_steps=args.steps, log_interval=1, fsdp_devices=args.fsdp, fsdp_min_bytes=1024,
                         save_interval=args.save_interval, max_to_keep=2)
    batches = fake_batches(config, process=jax.process_index(), processes=jax.process_count())
    result = trainer.run(config, exp_dir=Path(args.exp_dir), batches=batches, assets=Assets({}, {}),
                          resume=args.resume)
    Path(args.out).write_text(json.dumps({"losses": result.losses, "devices": jax.device_count(),
                                          "processes": jax.process_count()}))


if __name__ == "__main__":
    main()
