"""Offline evaluation: a policy's action chunks against the recorded ones on held-out dataset episodes.

Every ``stride``-th frame of each episode goes through the policy exactly as a robot observation would (the
embodiment's dataset key map, the episode's task as prompt); the predicted chunk is compared with the recorded
actions of the next ``H`` frames, in the robot's own action units (after the policy's output transforms).
Frames past the end of an episode are padding and do not count.

Reported: mean absolute error per action dimension, per horizon step and overall (plus RMSE), per episode, and
a PNG per episode with the recorded trajectory of every action dimension against the policy's prediction (the
first action of each predicted chunk, and the whole chunk every few frames). The plots need matplotlib, the
``plots`` extra of pi0 (``pip install 'pi0[plots]'``).
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pi0cli.errors import ObservationError, Pi0Error
from pi0cli.observation_types import Observation, Reply

if TYPE_CHECKING:
    from pi0cli.data.lerobot import LeRobotFrames
    from pi0cli.embodiment import Embodiment

REPORT_FILENAME = "offline_report.json"


class OfflineEvalError(Pi0Error):
    """A dataset and a policy that cannot be compared (episodes, dims)."""


class BatchPolicy(Protocol):
    """What offline evaluation needs of a policy: one reply (with ``actions`` [H, A]) per observation."""

    def infer_batch(self, observations: Sequence[Observation], /) -> Sequence[Reply]: ...


def require_matplotlib() -> None:
    """Fail with the install command when matplotlib (the ``plots`` extra) is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        raise Pi0Error("offline evaluation plots need matplotlib: pip install 'pi0[plots]' (or leave out --out)")


def episode_indices(dataset_root: Path, count: int | None, first: int | None) -> list[int]:
    """``count`` episodes starting at ``first`` (default: the last ``count`` episodes of the dataset)."""
    from pi0cli.data.lerobot import read_info

    total = int(read_info(dataset_root)["total_episodes"])
    count = total if count is None else count
    start = total - count if first is None else first
    if count < 1 or start < 0 or start + count > total:
        raise OfflineEvalError(f"dataset {dataset_root} has episodes 0-{total - 1}; cannot take {count} starting at "
                               f"{start} (pass --episodes N and --first-episode K within that range)")
    return list(range(start, start + count))


def evaluate_offline(
    frames: LeRobotFrames,
    policy: BatchPolicy,
    embodiment: Embodiment,
    *,
    stride: int = 5,
    batch_size: int = 8,
    out: Path | None = None,
    provenance: dict[str, Any] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Compare ``policy`` with the recorded actions of ``frames`` (a ``LeRobotFrames`` opened with the
    embodiment's action key and the policy's horizon, restricted to the held-out episodes)."""
    if out is not None:
        require_matplotlib()  # before the policy runs, not after
    action_key = embodiment.action_key
    pad_key = f"{action_key}_is_pad"
    indices = list(range(0, len(frames), max(1, stride)))
    if not indices:
        raise OfflineEvalError("the selected episodes have no frames")
    per_episode: dict[int, dict[str, list]] = {}
    done = 0
    # The trivial baseline a newcomer can trust: hold the current position (every action of the chunk = the
    # state now). Meaningful where actions are absolute positions in the state's units (state dim == action dim).
    hold = embodiment.state_dim == embodiment.action_dim
    hold_error, hold_count = 0.0, 0.0
    for start in range(0, len(indices), batch_size):
        rows = [frames[i] for i in indices[start:start + batch_size]]
        observations = [_observation(row, embodiment) for row in rows]
        results = policy.infer_batch(observations)
        for row, result in zip(rows, results, strict=True):
            recorded = np.asarray(row[action_key], np.float64)
            predicted = np.asarray(result["actions"], np.float64)
            horizon = min(len(recorded), len(predicted))
            if predicted.shape[-1] != recorded.shape[-1]:
                raise OfflineEvalError(f"the policy predicts {predicted.shape[-1]} action dims, the dataset records "
                                       f"{recorded.shape[-1]}; is the checkpoint for {embodiment.name}?")
            pad = np.asarray(row.get(pad_key, np.zeros(len(recorded), bool)), bool)[:horizon]
            ep = per_episode.setdefault(int(row["episode_index"]), {"frame": [], "recorded": [], "predicted": [],
                                                                     "valid": []})
            ep["frame"].append(int(row["frame_index"]))
            ep["recorded"].append(recorded[:horizon])
            ep["predicted"].append(predicted[:horizon])
            ep["valid"].append(~pad)
            if hold:
                state = np.concatenate([np.asarray(row[embodiment.dataset_keys[f.key]], np.float64).reshape(f.dim)
                                        for f in embodiment.state])
                held = np.abs(recorded[:horizon] - state).mean(-1)
                hold_error += float(held[~pad].sum())
                hold_count += float((~pad).sum())
        done += len(rows)
        if on_progress is not None:
            on_progress(done, len(indices))

    report = _summarise(per_episode)
    report.update(stride=stride, frames_compared=len(indices), provenance=dict(provenance or {}),
                  hold_position_mae=hold_error / hold_count if hold and hold_count else None)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        report["plots"] = [str(plot_episode(out / f"episode_{ep:04d}.png", ep, data, embodiment))
                           for ep, data in sorted(per_episode.items())]
        tmp = out / f".{REPORT_FILENAME}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(report, indent=2))
        os.replace(tmp, out / REPORT_FILENAME)
    return report


def heldout_loss(frames: LeRobotFrames, models: Mapping[str, Any], example: Callable[[dict[str, Any]], dict[str, Any]],
                 *, stride: int = 5, batch_size: int = 8, seed: int = 0) -> dict[str, float]:
    """Mean flow-matching loss (the training objective, without augmentation) of each model on every
    ``stride``-th frame; ``example`` is the training pipeline (dataset row -> model example). Every model sees
    the same noise and flow times, so the numbers compare the models, not the draws."""
    import jax
    from flax import nnx

    from pi0cli.models.observation import Observation
    from pi0cli.transforms import stack_trees

    def jitted(model: Any) -> Callable[[jax.Array, dict[str, Any]], jax.Array]:
        graphdef, state = nnx.split(model)

        @jax.jit
        def loss(state: nnx.State, rng: jax.Array, batch: dict[str, Any]) -> jax.Array:
            module = nnx.merge(graphdef, state)
            return module.compute_loss(rng, Observation.from_dict(batch), batch["actions"]).mean(-1)  # [B]

        return lambda rng, batch: loss(state, rng, batch)

    losses = {name: jitted(model) for name, model in models.items()}
    indices = list(range(0, len(frames), max(1, stride)))
    if not indices:
        raise OfflineEvalError("the selected episodes have no frames")
    totals = dict.fromkeys(models, 0.0)
    key = jax.random.key(seed)
    for number, start in enumerate(range(0, len(indices), batch_size)):
        batch = stack_trees([example(frames[i]) for i in indices[start:start + batch_size]])
        rng = jax.random.fold_in(key, number)
        for name, loss in losses.items():
            totals[name] += float(loss(rng, batch).sum())
    return {name: total / len(indices) for name, total in totals.items()}


def _observation(row: dict[str, Any], embodiment: Embodiment) -> Observation:
    """A dataset frame as the robot would have sent it, through the embodiment's one observation check."""
    obs = embodiment.repack(row)
    obs.pop("actions", None)
    if row.get("prompt"):
        obs["prompt"] = row["prompt"]
    try:
        return embodiment.validate_observation(obs)
    except ObservationError as exc:
        raise OfflineEvalError(f"episode {row.get('episode_index')} frame {row.get('frame_index')} of the dataset is "
                               f"not a valid {embodiment.name} observation ({exc}); fix the dataset or evaluate "
                               "other episodes") from None


def _errors(recorded: np.ndarray, predicted: np.ndarray, valid: np.ndarray) -> dict[str, Any]:
    """recorded/predicted [N, H, A], valid [N, H] -> MAE per dim, per step, overall, and RMSE."""
    err = np.abs(predicted - recorded)
    w = valid.astype(np.float64)
    n = max(float(w.sum()), 1.0)
    return {
        "mae": float((err.mean(-1) * w).sum() / n),
        "rmse": float(np.sqrt(((err ** 2).mean(-1) * w).sum() / n)),
        "mae_per_dim": [float(v) for v in (err * w[..., None]).sum((0, 1)) / n],
        "mae_per_step": [float(v) for v in (err.mean(-1) * w).sum(0) / np.maximum(w.sum(0), 1.0)],
    }


def _summarise(per_episode: dict[int, dict[str, list]]) -> dict[str, Any]:
    horizon = min(len(r) for ep in per_episode.values() for r in ep["recorded"])
    stacked = {ep: {k: np.stack([x[:horizon] for x in data[k]]) for k in ("recorded", "predicted", "valid")}
               for ep, data in per_episode.items()}
    everything = {k: np.concatenate([s[k] for s in stacked.values()]) for k in ("recorded", "predicted", "valid")}
    return {
        "episodes": sorted(per_episode),
        "horizon": horizon,
        **_errors(everything["recorded"], everything["predicted"], everything["valid"]),
        "per_episode": {str(ep): {k: v for k, v in _errors(s["recorded"], s["predicted"], s["valid"]).items()
                                  if k in ("mae", "rmse")} for ep, s in stacked.items()},
    }


def plot_episode(path: Path, episode: int, data: dict[str, list], embodiment: Embodiment,
                 chunk_every: int = 4) -> Path:
    """PNG: per action dimension, the recorded trajectory, the first predicted action at each evaluated frame,
    and every ``chunk_every``-th predicted chunk drawn over the frames it covers."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = np.asarray(data["frame"])
    recorded = np.stack([r[0] for r in data["recorded"]])
    predicted_first = np.stack([p[0] for p in data["predicted"]])
    dims = recorded.shape[-1]
    cols = min(dims, 4)
    rows = -(-dims // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.2 * rows), squeeze=False, sharex=True)
    for d in range(dims):
        ax = axes[d // cols][d % cols]
        ax.plot(frames, recorded[:, d], color="black", lw=1.2, label="recorded")
        ax.plot(frames, predicted_first[:, d], color="tab:red", lw=0.9, ls="--", label="predicted (first)")
        for j in range(0, len(frames), chunk_every):
            chunk = data["predicted"][j][:, d]
            ax.plot(frames[j] + np.arange(len(chunk)), chunk, color="tab:blue", lw=0.6, alpha=0.6)
        ax.set_title(f"{embodiment.name} action[{d}]", fontsize=8)
        ax.tick_params(labelsize=6)
    for d in range(dims, rows * cols):
        axes[d // cols][d % cols].axis("off")
    axes[0][0].legend(fontsize=6, loc="best")
    fig.suptitle(f"episode {episode}: recorded vs predicted actions (blue: predicted chunks)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def open_frames(dataset: str | os.PathLike[str], embodiment: Embodiment, horizon: int,
                episodes: Sequence[int]) -> LeRobotFrames:
    from pi0cli.data.lerobot import LeRobotFrames

    return LeRobotFrames(dataset, action_key=embodiment.action_key, action_horizon=horizon, episodes=episodes)
