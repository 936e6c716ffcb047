"""Which instruction a policy gets in simulation: the task's own, or another task's (the language ablation).

:class:`PromptedPolicy` sets the observation's ``prompt`` on its way to the policy. It sits *under* the
action-chunk broker (or the real-time agent), so it runs once per chunk request, not once per control step: a
simulator may render an observation's image lazily (on first read), and the copy made here reads every key.

:func:`prompt_plan` decides the instruction of every task of a selection for ``pi0 eval --prompt-from``:

- no ablation: each task's own instruction (an observation that carries a ``prompt`` keeps it; one without
  gets the task's);
- ``--prompt-from TASK``: every task gets ``TASK``'s instruction;
- ``--prompt-from shifted``: each task gets the instruction of the next task of the selection, cyclically, that
  has a *different* instruction from its own (two tasks may share one); a selection where no such task exists
  is refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pi0cli.client.policy import BasePolicy
from pi0cli.errors import Pi0Error

if TYPE_CHECKING:
    from pi0cli.simulator import SimTask, Simulator

#: ``--prompt-from`` keyword: each task gets another task's instruction from the selection.
SHIFTED = "shifted"


class PromptedPolicy(BasePolicy):
    """Passes each request to ``inner`` with ``prompt`` as the observation's prompt; ``replace=False`` only
    fills it in when the observation has none."""

    def __init__(self, inner: BasePolicy, prompt: str, *, replace: bool = True):
        self.inner, self.prompt, self.replace = inner, prompt, replace

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        if self.replace or not isinstance(obs.get("prompt"), str):
            obs = {**obs, "prompt": self.prompt}
        return self.inner.infer(obs)

    def reset(self) -> None:
        self.inner.reset()

    def __getattr__(self, name: str) -> Any:  # rtc_shape, description, ... of the wrapped policy
        return getattr(self.inner, name)


@dataclasses.dataclass(frozen=True)
class TaskPrompt:
    """The instruction ``task`` is evaluated with and the task it belongs to (``task`` itself unless ablated)."""

    task: str
    prompt: str
    prompt_from: str
    ablated: bool

    def policy(self, inner: BasePolicy) -> PromptedPolicy:
        """``inner`` asked with this instruction (an ablation replaces the observation's own prompt)."""
        return PromptedPolicy(inner, self.prompt, replace=self.ablated)


def prompt_plan(simulator: Simulator, tasks: Sequence[SimTask], prompt_from: str | None) -> tuple[TaskPrompt, ...]:
    """Each task's instruction under ``prompt_from`` (see the module docstring); unknown names and a shift
    with nothing to shift to fail with one line."""
    if prompt_from is None:
        return tuple(TaskPrompt(t.name, t.prompt, t.name, ablated=False) for t in tasks)
    if prompt_from.strip().lower() == SHIFTED:
        plan = []
        for i, task in enumerate(tasks):
            others = [tasks[(i + k) % len(tasks)] for k in range(1, len(tasks))]
            donor = next((o for o in others if o.prompt != task.prompt), None)
            if donor is None:
                raise Pi0Error(f"--prompt-from {SHIFTED} needs another task with a different instruction in the "
                               f"selection; {task.name} has none (select two or more tasks, e.g. --tasks a,b)")
            plan.append(TaskPrompt(task.name, donor.prompt, donor.name, ablated=True))
        return tuple(plan)
    from pi0cli.errors import UnknownNameError

    try:
        donor = simulator.task(prompt_from)
    except UnknownNameError as exc:
        raise UnknownNameError(f"--prompt-from task ({SHIFTED} or a task of {simulator.name})", prompt_from,
                               [SHIFTED, *simulator.task_names]) from exc
    return tuple(TaskPrompt(t.name, donor.prompt, donor.name, ablated=True) for t in tasks)


__all__ = ["SHIFTED", "PromptedPolicy", "TaskPrompt", "prompt_plan"]
