"""Closed-loop evaluation in simulation: episodes of any registered :class:`~pi0cli.simulator.Simulator` through
the action-chunk broker, success with a confidence interval, per-episode return, mp4 videos and a JSON report
with provenance."""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pi0cli.client.policy import BasePolicy
from pi0cli.evaluation.episode import EpisodeResult, play
from pi0cli.evaluation.realtime import Execution, run_realtime_episode, summary
from pi0cli.models.tokenizer import ACTION_TOKENS_KEY, DECODE_FAILURES_KEY, DECODE_RULE_KEY

if TYPE_CHECKING:
    from pi0cli.embodiment import Embodiment
    from pi0cli.evaluation.prompting import TaskPrompt
    from pi0cli.simulator import OptionValue, Simulator

REPORT_FILENAME = "report.json"


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a success rate (95% by default); sound for small n and rates near 0 or 1."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def run_episode(simulator: Simulator, embodiment: Embodiment, task: str, seed: int, policy: BasePolicy, *,
                open_loop_steps: int, video: Path | None = None,
                sim_options: Mapping[str, OptionValue] | None = None) -> EpisodeResult:
    """One closed-loop episode: the policy is asked for a chunk every ``open_loop_steps`` steps."""
    from pi0cli.client.broker import ActionChunkBroker

    broker = ActionChunkBroker(policy, action_horizon=open_loop_steps)
    return play(simulator, embodiment, task, seed, lambda obs: broker.infer(obs)["actions"], video=video,
                sim_options=sim_options)


def package_versions(extra: Sequence[str] = ()) -> dict[str, str]:
    """Installed versions of pi0, its numerical stack and ``extra`` (e.g. a simulator's packages)."""
    versions = {}
    for name in ("pi0", "jax", "flax", "numpy", "lerobot", *extra):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


class DecodeFailureCounter(BasePolicy):
    """Passes requests through and sums the replies' ``decode_failures`` (pi0-FAST chunks that did not decode
    and were answered with the policy's fallback) and ``action_tokens`` (tokens generated), per decoding rule
    (``fast_decode``); ``seen`` tells whether any reply carried the first."""

    def __init__(self, inner: BasePolicy):
        self.inner, self.decode_failures, self.chunks, self.seen = inner, 0, 0, False
        self.action_tokens = 0
        self.by_rule: dict[str, int] = {}

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        reply = self.inner.infer(obs)
        self.chunks += 1
        if DECODE_FAILURES_KEY in reply:
            self.seen = True
            failed = int(np.asarray(reply[DECODE_FAILURES_KEY]))
            self.decode_failures += failed
            rule = str(reply.get(DECODE_RULE_KEY, "strict"))
            self.by_rule[rule] = self.by_rule.get(rule, 0) + failed
            self.action_tokens += int(np.asarray(reply.get(ACTION_TOKENS_KEY, 0)))
        return reply

    def summary(self) -> dict[str, Any]:
        """The report's pi0-FAST fields (none for a flow-matching policy)."""
        if not self.seen:
            return {}
        return {"decode_failures": self.decode_failures, "decode_failures_by_rule": dict(self.by_rule),
                "chunks": self.chunks, "mean_action_tokens": self.action_tokens / max(self.chunks, 1)}

    def reset(self) -> None:
        self.inner.reset()


def _play_all(simulator: Simulator, embodiment: Embodiment, task: str, seeds: Sequence[int], policy: BasePolicy, *,
              open_loop_steps: int, video_dir: Path | None, on_episode: Callable[[EpisodeResult], None] | None,
              sim_options: Mapping[str, OptionValue] | None, execution: Execution | None) -> list[EpisodeResult]:
    """Every seed of ``task``, an mp4 per episode in ``video_dir`` (none without one)."""
    results = []
    for seed in seeds:
        video = video_dir / f"episode_{seed:05d}.mp4" if video_dir is not None else None
        if execution is None:
            result = run_episode(simulator, embodiment, task, seed, policy, open_loop_steps=open_loop_steps,
                                 video=video, sim_options=sim_options)
        else:
            result = run_realtime_episode(simulator, embodiment, task, seed, policy, execution,
                                          open_loop_steps=open_loop_steps, video=video, sim_options=sim_options)
        results.append(result)
        if on_episode is not None:
            on_episode(result)
    return results


def success_summary(results: Sequence[EpisodeResult]) -> dict[str, Any]:
    """Episodes, successes, success rate with its 95% Wilson interval, and mean return."""
    successes = sum(r.success for r in results)
    low, high = wilson_interval(successes, len(results))
    return {"episodes": len(results), "successes": successes,
            "success_rate": successes / len(results) if results else 0.0, "success_rate_ci95": [low, high],
            "mean_return": float(np.mean([r.episode_return for r in results])) if results else 0.0}


def _write_report(out: Path, report: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{REPORT_FILENAME}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(report, indent=2, default=str))
    tmp.replace(out / REPORT_FILENAME)


def _provenance(simulator: Simulator, provenance: dict[str, Any], seeds: Sequence[int]) -> dict[str, Any]:
    return {**provenance, "simulator": simulator.name, "seeds": list(seeds),
            "packages": package_versions(simulator.packages),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def evaluate(simulator: Simulator, embodiment: Embodiment, task: str, seeds: Sequence[int], policy: BasePolicy, *,
             open_loop_steps: int, out: Path | None, provenance: dict[str, Any], videos: bool = True,
             on_episode: Callable[[EpisodeResult], None] | None = None,
             sim_options: Mapping[str, OptionValue] | None = None,
             execution: Execution | None = None) -> dict[str, Any]:
    """Run every seed of ``task`` in ``simulator`` and return (and write to ``out/report.json``) the report.
    ``execution``: simulated inference latency and an execution strategy (:mod:`pi0cli.evaluation.realtime`)
    instead of the chunk broker; the report then adds smoothness."""
    out = None if out is None else Path(out).absolute()
    policy = counter = DecodeFailureCounter(policy)
    results = _play_all(simulator, embodiment, task, seeds, policy, open_loop_steps=open_loop_steps,
                        video_dir=out / "videos" if (out is not None and videos) else None, on_episode=on_episode,
                        sim_options=sim_options, execution=execution)
    report = {
        "task": task,
        **success_summary(results),
        "open_loop_steps": open_loop_steps,
        **counter.summary(),
        "sim_options": simulator.settings(sim_options or {}),
        **({} if execution is None else summary(results, execution, open_loop_steps)),
        "per_episode": [dataclasses.asdict(r) for r in results],
        "provenance": _provenance(simulator, provenance, seeds),
    }
    if out is not None:
        _write_report(out, report)
    return report


def evaluate_tasks(simulator: Simulator, embodiment: Embodiment, plan: Sequence[TaskPrompt], seeds: Sequence[int],
                   policy: BasePolicy, *, open_loop_steps: int, out: Path | None, provenance: dict[str, Any],
                   videos: bool = True, selector: str | None = None, prompt_from: str | None = None,
                   on_episode: Callable[[str, EpisodeResult], None] | None = None,
                   sim_options: Mapping[str, OptionValue] | None = None,
                   execution: Execution | None = None) -> dict[str, Any]:
    """Every seed of every task of ``plan`` (each with the instruction the plan gives it: see
    :mod:`pi0cli.evaluation.prompting`) and one report: success per task, per task group of the simulator
    (``Simulator.task_groups``, those holding an evaluated task, with how many of their tasks were evaluated)
    and overall (all episodes pooled), each with its 95% Wilson interval; videos in ``out/videos/<task>/``."""
    out = None if out is None else Path(out).absolute()
    counter = DecodeFailureCounter(policy)
    per_task: dict[str, dict[str, Any]] = {}
    everything: list[EpisodeResult] = []
    by_task: dict[str, list[EpisodeResult]] = {}
    for item in plan:
        own = simulator.task(item.task)
        # The instruction is set under the broker (once per chunk request), never per control step.
        shown = None if on_episode is None else functools.partial(on_episode, item.task)
        results = _play_all(simulator, embodiment, item.task, seeds, item.policy(counter),
                            open_loop_steps=open_loop_steps,
                            video_dir=out / "videos" / item.task if (out is not None and videos) else None,
                            on_episode=shown, sim_options=sim_options, execution=execution)
        by_task[item.task] = results
        everything += results
        per_task[item.task] = {**success_summary(results), "groups": list(simulator.groups_of(item.task)),
                               "prompt": item.prompt, "prompt_from": item.prompt_from, "own_prompt": own.prompt,
                               "per_episode": [dataclasses.asdict(r) for r in results]}
    per_group: dict[str, dict[str, Any]] = {}
    for group, members in simulator.task_groups.items():
        evaluated = [task for task in members if task in by_task]
        if evaluated:
            per_group[group] = {**success_summary([r for task in evaluated for r in by_task[task]]),
                                "tasks": evaluated, "tasks_in_group": len(members)}
    overall = success_summary(everything)
    report = {
        "tasks_selector": selector,
        "tasks": [item.task for item in plan],
        "episodes_per_task": len(seeds),
        "prompt_from": prompt_from,
        **overall,
        "overall": overall,
        "per_task": per_task,
        "per_group": per_group,
        "open_loop_steps": open_loop_steps,
        **counter.summary(),
        "sim_options": simulator.settings(sim_options or {}),
        **({} if execution is None else summary(everything, execution, open_loop_steps)),
        "provenance": _provenance(simulator, provenance, seeds),
    }
    if out is not None:
        _write_report(out, report)
    return report
