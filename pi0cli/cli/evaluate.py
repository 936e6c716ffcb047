"""``pi0 eval``: closed-loop success rate of a policy in simulation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pi0cli.cli import console
from pi0cli.cli.embodiments import complete_embodiment


def evaluate(
    embodiment: Annotated[str, typer.Argument(help="A simulated embodiment (e.g. aloha_sim).", autocompletion=complete_embodiment)],
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="Evaluate the policy in this checkpoint.")] = None,
    server: Annotated[str | None, typer.Option("--server", help="Evaluate a policy served at ws://HOST:PORT.")] = None,
    episodes: Annotated[int, typer.Option("--episodes", "-n", min=1, help="Episodes to run.")] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the first episode (default: scenes not used by `pi0 record`'s defaults).")] = 1000,
    task: Annotated[str | None, typer.Option("--task", help="Simulator task (default: the embodiment's).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write report.json and videos/ here.")] = None,
    videos: Annotated[bool, typer.Option("--videos/--no-videos", help="Save an mp4 per episode (with --out).")] = True,
    shadows: Annotated[bool, typer.Option("--shadows/--no-shadows", help="Render shadows; match what the policy was trained on.")] = False,
    api_key: Annotated[str | None, typer.Option("--api-key", help="API key of the server.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Run closed-loop episodes and report the success rate with a 95% confidence interval."""
    from pi0cli.cli.sim_common import open_policy, simulated, task_of
    from pi0cli.evaluation.closed_loop import evaluate as run
    from pi0cli.sim import PROMPTS

    emb, simulator = simulated(embodiment)
    task = task_of(simulator, task)
    policy, provenance = open_policy(emb, checkpoint, server, api_key=api_key, default_prompt=PROMPTS[task])

    def show(result) -> None:
        mark = "[green]success[/green]" if result.success else "[red]failure[/red]"
        console.err.print(f"episode seed {result.seed}: {mark}  return {result.episode_return:.0f}  "
                          f"{result.steps} steps  {result.seconds:.1f} s")

    report = run(task, list(range(seed, seed + episodes)), policy, open_loop_steps=emb.open_loop_steps, out=out,
                 provenance={"embodiment": emb.name, **provenance}, videos=videos, on_episode=show, shadows=shadows)
    if as_json:
        console.out.print_json(json.dumps(report, default=str))
        return
    low, high = report["success_rate_ci95"]
    console.out.print(f"success rate {report['success_rate']:.0%} ({report['successes']}/{report['episodes']}), "
                      f"95% CI {low:.0%}-{high:.0%}; mean return {report['mean_return']:.1f}"
                      + (f"; report {Path(out) / 'report.json'}" if out else ""))
