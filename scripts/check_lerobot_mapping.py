"""Show that the pi0 <-> LeRobot weight-name mapping is complete for the full-size pi0 and pi0.5, using abstract
shapes only (``jax.eval_shape`` on our side, a ``meta``-device LeRobot model on theirs: nothing is allocated).

    .venv/bin/python scripts/check_lerobot_mapping.py          # exit 1 if any name or shape disagrees
"""

from __future__ import annotations

import sys


def check(model_type: str) -> list[str]:
    import jax
    import torch
    from flax import nnx

    from pi0cli.convert.checkpoints import lerobot_config
    from pi0cli.convert.lerobot_names import EMBED_TOKENS, from_lerobot, to_lerobot
    from pi0cli.convert.verify import _lerobot_module
    from pi0cli.models.config import preset
    from pi0cli.models.params import export_flat
    from pi0cli.models.pi0 import Pi0

    config = preset(model_type, dtype="float32")
    ours = jax.eval_shape(lambda: export_flat(Pi0(config, nnx.Rngs(0))))
    mapped = jax.eval_shape(lambda p: to_lerobot(p, config), ours)
    module = _lerobot_module(config)
    with torch.device("meta"):
        model = (module.PI05Pytorch if config.pi05 else module.PI0Pytorch)(lerobot_config(config))
    theirs = {f"model.{k}": tuple(v.shape) for k, v in model.state_dict().items()}
    tied = f"model.{EMBED_TOKENS}"  # LeRobot's loader fills it from lm_head (one tied tensor)
    problems = [f"LeRobot has {k} {s}, the mapping gives none" for k, s in theirs.items()
                if k not in mapped and k != tied]
    problems += [f"the mapping gives {k}, LeRobot has no such weight" for k in mapped if k not in theirs]
    problems += [f"{k}: mapping {tuple(v.shape)} vs LeRobot {theirs[k]}" for k, v in mapped.items()
                 if k in theirs and tuple(v.shape) != theirs[k]]
    back = jax.eval_shape(lambda sd: from_lerobot(sd, config),
                          {k: jax.ShapeDtypeStruct(s, "float32") for k, s in theirs.items() if k != tied})
    problems += [f"round trip lost {k}" for k in ours if k not in back]
    problems += [f"round trip changed {k}: {ours[k].shape} -> {back[k].shape}" for k in ours
                 if k in back and ours[k].shape != back[k].shape]
    count = sum(v.size for v in ours.values())
    print(f"{model_type}: {len(ours)} pi0 arrays ({count:,} parameters) <-> {len(theirs)} LeRobot weights: "
          + ("complete, every shape matches" if not problems else f"{len(problems)} problem(s)"))
    return problems


def main() -> int:
    problems = [p for model_type in ("pi0", "pi05") for p in check(model_type)]
    for problem in problems[:40]:
        print("  " + problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
