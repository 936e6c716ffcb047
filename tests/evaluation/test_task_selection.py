"""Task selection (``--tasks``) through a simulator's own ``metadata["task_groups"]`` and the language-ablation plan
(``--prompt-from``), on a toy simulator: the core knows no robot's tasks or groups."""

from __future__ import annotations

from typing import Any

import pytest

from pi0cli.errors import Pi0Error, UnknownNameError
from pi0cli.evaluation.prompting import PromptedPolicy, prompt_plan
from pi0cli.simulator import SimTask, Simulator


def _toy(groups: dict[str, list[str]] | None = None) -> Simulator:
    tasks = (SimTask("open-a", "Open A", aliases=("open_a",)), SimTask("close-a", "Close A"),
             SimTask("push", "Push it"), SimTask("push-back", "Push it"))
    return Simulator(name="toy", embodiment="toy", description="", tasks=tasks, rollout=lambda *a, **k: iter(()),
                     metadata={} if groups is None else {"task_groups": groups})


def test_groups_and_names_expand_in_order_without_repeats():
    sim = _toy({"doors": ["open-a", "close-a"], "all": ["open-a", "close-a", "push", "push-back"]})
    assert [t.name for t in sim.select_tasks("push, doors,open_a")] == ["push", "open-a", "close-a"]
    assert [t.name for t in sim.select_tasks("ALL")] == ["open-a", "close-a", "push", "push-back"]
    assert sim.groups_of("push") == ("all",) and sim.groups_of("close-a") == ("doors", "all")


def test_a_simulator_without_groups_takes_task_names():
    sim = _toy()
    assert sim.task_groups == {} and [t.name for t in sim.select_tasks("close-a,push")] == ["close-a", "push"]
    with pytest.raises(UnknownNameError, match="unknown toy task or task group 'doors'"):
        sim.select_tasks("push,doors")
    with pytest.raises(Pi0Error, match="names no task"):
        sim.select_tasks(" , ")


def test_prompt_plan_fixed_shifted_and_own():
    sim = _toy()
    tasks = sim.select_tasks("open-a,push,push-back")
    assert [(p.task, p.prompt, p.ablated) for p in prompt_plan(sim, tasks, None)] == [
        ("open-a", "Open A", False), ("push", "Push it", False), ("push-back", "Push it", False)]
    assert {p.prompt_from for p in prompt_plan(sim, tasks, "close_a".replace("_", "-"))} == {"close-a"}
    # shifted: the next task of the selection whose instruction differs (push-back shares push's).
    assert [(p.task, p.prompt_from) for p in prompt_plan(sim, tasks, "shifted")] == [
        ("open-a", "push"), ("push", "open-a"), ("push-back", "open-a")]
    with pytest.raises(Pi0Error, match="--prompt-from shifted needs another task"):
        prompt_plan(sim, sim.select_tasks("push,push-back"), "shifted")
    with pytest.raises(UnknownNameError, match="'close-b'; did you mean 'close-a'"):
        prompt_plan(sim, tasks, "close-b")


class _Seen:
    def __init__(self) -> None:
        self.prompts: list[Any] = []

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        self.prompts.append(obs.get("prompt"))
        return {}

    def reset(self) -> None:
        pass


def test_prompted_policy_replaces_or_fills_in():
    inner = _Seen()
    PromptedPolicy(inner, "other", replace=True).infer({"prompt": "own"})  # type: ignore[arg-type]
    PromptedPolicy(inner, "task's", replace=False).infer({"prompt": "own"})  # type: ignore[arg-type]
    PromptedPolicy(inner, "task's", replace=False).infer({})  # type: ignore[arg-type]
    assert inner.prompts == ["other", "own", "task's"]
