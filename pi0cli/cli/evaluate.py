"""``pi0 eval``: closed-loop success rate of a policy in simulation, or offline action error on dataset episodes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pi0cli.cli import console
from pi0cli.cli.embodiments import complete_embodiment
from pi0cli.cli.sim_common import check_state_input
from pi0cli.models.fast_decode import DEFAULT_FAST_DECODE, FAST_DECODE_RULES

if TYPE_CHECKING:
    from pi0cli.client.policy import BasePolicy
    from pi0cli.embodiment import Embodiment
    from pi0cli.evaluation.realtime import Execution


def evaluate(
    embodiment: Annotated[str | None, typer.Argument(
        help="A simulated embodiment (e.g. aloha_sim); with --dataset any robot (default: the checkpoint's).",
        autocompletion=complete_embodiment)] = None,
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", help="Evaluate the policy in this checkpoint.")] = None,
    server: Annotated[str | None, typer.Option("--server", help="Evaluate a policy served at ws://HOST:PORT.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="Model preset of a checkpoint without pi0_config.json (e.g. a reference openpi one): "
                        "pi0, pi05, ...")] = None,
    episodes: Annotated[int | None, typer.Option(
        "--episodes", "-n", min=1, help="Episodes to run (default 10); with --dataset, held-out episodes to compare "
                                        "(default: all).")] = None,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="Offline: compare the checkpoint's action chunks with this LeRobot dataset's recorded "
                          "actions (root or repo id) instead of running the simulator.")] = None,
    first_episode: Annotated[int | None, typer.Option(
        "--first-episode", min=0, help="With --dataset: the first episode to compare (default: the last --episodes "
                                       "of the dataset).")] = None,
    stride: Annotated[int, typer.Option("--stride", min=1, help="With --dataset: compare every Nth frame.")] = 5,
    vs_initial: Annotated[bool, typer.Option(
        "--vs-initial", help="With --dataset: also evaluate the weights the checkpoint's training run started from "
                             "(re-created from its seed): its action error and the held-out loss of both, to "
                             "show what training changed.")] = False,
    seed: Annotated[int, typer.Option(
        "--seed", help="Seed of the first episode (of each task). Default 1000: pi0 record starts at 0 and tries "
                       "seeds upward, so these scenes stay unseen while a recording tries fewer than 1000 seeds per "
                       "task (pi0 record warns when it reaches them).")] = 1000,
    task: Annotated[str | None, typer.Option("--task", help="Simulator task (default: the simulator's).")] = None,
    tasks: Annotated[str | None, typer.Option(
        "--tasks", metavar="SELECTOR",
        help="Several tasks: comma-separated task names and the simulator's task groups (a wrong name lists "
             "them). One report: success per task, per group and overall, each with its 95% interval; "
             "videos in videos/<task>/.")] = None,
    episodes_per_task: Annotated[int | None, typer.Option(
        "--episodes-per-task", metavar="N",
        help="With --tasks: episodes of each task (default 10), on the scenes of seeds --seed .. --seed+N-1.")
    ] = None,
    prompt_from: Annotated[str | None, typer.Option(
        "--prompt-from", metavar="TASK|shifted",
        help="Language ablation: every episode gets TASK's instruction instead of its own; 'shifted' gives each "
             "task the instruction of the next task of the selection (cyclically) whose instruction differs. The "
             "report records each task's prompt.")] = None,
    open_loop_steps: Annotated[int | None, typer.Option(
        "--open-loop-steps", min=1, help="Actions of each chunk executed before the policy is asked again "
                                         "(default: the embodiment's).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write report.json and videos/ here.")] = None,
    videos: Annotated[bool, typer.Option("--videos/--no-videos", help="Save an mp4 per episode (with --out).")] = True,
    sim_option: Annotated[list[str] | None, typer.Option(
        "--sim-option", metavar="NAME=VALUE",
        help="A setting of the simulator, repeatable (aloha_sim: shadows=true renders shadows, slow on a CPU); "
             "a wrong name lists the simulator's settings.")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", help="API key of the server.")] = None,
    connect_timeout: Annotated[float, typer.Option(
        "--connect-timeout", min=0, metavar="SECONDS",
        help="With a served policy: how long to wait for the server to answer.")] = 30.0,
    execution: Annotated[str | None, typer.Option(
        "--execution", metavar="sync|naive|ensemble|rtc",
        help="Execute chunks under simulated inference latency (--latency-ms): sync pauses the simulator while "
             "the policy thinks; naive switches to a chunk when it arrives; ensemble averages overlapping chunks; "
             "rtc is real-time chunking. The report adds boundary jumps and jerk. Default: the plain chunk broker.")
    ] = None,
    latency_ms: Annotated[float, typer.Option(
        "--latency-ms", min=0, metavar="MS", help="With --execution: the policy's simulated inference latency; the "
                                                  "simulator keeps stepping meanwhile (deterministic).")] = 0.0,
    real_time: Annotated[bool, typer.Option(
        "--real-time", help="With --execution: no simulated latency; the policy (e.g. a live --server) thinks on a "
                            "worker thread while the simulator steps at the control rate in wall-clock time.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    fast_decode: Annotated[str, typer.Option(
        "--fast-decode", metavar="strict|lenient|constrained",
        help="A pi0-FAST --checkpoint's token decoding (see pi0 serve --fast-decode; a --server has its own).",
    )] = DEFAULT_FAST_DECODE,
    state_input: Annotated[str | None, typer.Option(
        "--state-input", metavar="visible|hidden",
        help="A --checkpoint's state input: hidden runs it without the robot's state (for a model trained with "
             "state dropout); default: the checkpoint's (visible).",
    )] = None,
) -> None:
    """Run closed-loop episodes and report the success rate with a 95% confidence interval; or, with --dataset,
    report the action error per dimension and horizon step on recorded episodes, with plots."""
    if fast_decode not in FAST_DECODE_RULES:
        raise typer.BadParameter(f"{fast_decode!r} is not strict, lenient or constrained", param_hint="--fast-decode")
    check_state_input(state_input)
    if state_input is not None and server is not None:
        raise typer.BadParameter("a --server has its own state input (pi0 serve --state-input); drop --state-input",
                                 param_hint="--state-input")
    if dataset is not None:
        _offline(embodiment, checkpoint, server, dataset, episodes, first_episode, stride, out, as_json, model,
                 vs_initial, fast_decode, state_input)
        return
    if embodiment is None:
        raise typer.BadParameter("name the simulated embodiment (e.g. aloha_sim), or pass --dataset",
                                 param_hint="EMBODIMENT")
    from pi0cli.cli.sim_common import episode_count

    episodes = episode_count(episodes, episodes_per_task, several=tasks is not None)
    if (latency_ms or real_time) and execution is None:
        raise typer.BadParameter("--latency-ms and --real-time need --execution sync|naive|ensemble|rtc",
                                 param_hint="--execution")
    from pi0cli.evaluation.realtime import Execution

    setting = None if execution is None else Execution(execution, latency_ms, real_time=real_time)
    from pi0cli.cli.sim_common import open_policy, selected_tasks, simulated
    from pi0cli.evaluation.closed_loop import evaluate as run
    from pi0cli.evaluation.episode import EpisodeResult
    from pi0cli.evaluation.prompting import prompt_plan

    emb, simulator = simulated(embodiment)
    selection = selected_tasks(simulator, task, tasks)
    sim_task = selection[0]
    several = tasks is not None or prompt_from is not None
    plan = prompt_plan(simulator, selection, prompt_from) if several else ()
    sim_options = simulator.parse_options(sim_option or ())  # record and evaluate with the same settings
    policy, provenance = open_policy(emb, checkpoint, server, api_key=api_key, default_prompt=sim_task.prompt,
                                     connect_timeout=connect_timeout, model=model, fast_decode=fast_decode,
                                     state_input=state_input)
    if setting is not None and setting.strategy == "rtc" and getattr(policy, "rtc_shape", ()) is None:
        from pi0cli.errors import Pi0Error

        # A loaded policy says up front; a server answers an RTC request with the same advice.
        raise Pi0Error(f"--execution rtc needs a flow-matching model (pi0 or pi0.5): this checkpoint's model "
                       f"({policy.description.split(' ')[0]}) cannot inpaint a chunk; use --execution naive or "
                       "ensemble")

    if setting is not None:
        setting = _fit_horizon(setting, policy, emb, open_loop_steps)

    def show(result: EpisodeResult) -> None:
        mark = "[green]success[/green]" if result.success else "[red]failure[/red]"
        console.err.print(f"episode seed {result.seed}: {mark}  return {result.episode_return:.0f}  "
                          f"{result.steps} steps  {result.seconds:.1f} s")

    if several:
        from pi0cli.evaluation.closed_loop import evaluate_tasks

        def show_task(name: str, result: EpisodeResult) -> None:
            console.err.print(f"{console.escape(name)} ", end="")
            show(result)

        report = evaluate_tasks(simulator, emb, plan, list(range(seed, seed + episodes)), policy,
                                open_loop_steps=open_loop_steps or emb.open_loop_steps, out=out,
                                provenance={"embodiment": emb.name, **provenance}, videos=videos,
                                selector=tasks or sim_task.name, prompt_from=prompt_from, on_episode=show_task,
                                sim_options=sim_options, execution=setting)
    else:
        report = run(simulator, emb, sim_task.name, list(range(seed, seed + episodes)), policy,
                     open_loop_steps=open_loop_steps or emb.open_loop_steps, out=out,
                     provenance={"embodiment": emb.name, **provenance}, videos=videos, on_episode=show,
                     sim_options=sim_options,
                     execution=setting)
    if as_json:
        console.out.print_json(json.dumps(report, default=str))
        return
    if several:
        _success_table(report)
    low, high = report["success_rate_ci95"]
    console.out.print(f"{'overall ' if several else ''}success rate {report['success_rate']:.0%} "
                      f"({report['successes']}/{report['episodes']}), "
                      f"95% CI {low:.0%}-{high:.0%}; mean return {report['mean_return']:.1f}"
                      + (f"; report {Path(out) / 'report.json'}" if out else ""))
    if "decode_failures" in report:
        rules = ", ".join(f"{n} with {rule} decoding" for rule, n in report.get("decode_failures_by_rule", {}).items())
        console.out.print(f"pi0-FAST: {report['decode_failures']}/{report['chunks']} chunks did not decode (zeros "
                          f"executed{'; ' + rules if rules else ''}); {report['mean_action_tokens']:.1f} tokens "
                          "generated per chunk")
    if setting is not None:
        latency = "real latency" if setting.real_time else f"{setting.latency_ms:g} ms"
        console.out.print(f"{setting.strategy} at {latency}: boundary jump mean "
                          f"{report['mean_boundary_jump']:.3g} (max {report['max_boundary_jump']:.3g}), mean step "
                          f"{report['mean_step']:.3g}, jerk {report['mean_jerk']:.3g}; "
                          f"{report['mean_control_seconds']:.1f} s per episode on the control clock")
        starved, steps = report.get("starved_steps", 0), sum(e["steps"] for e in report["per_episode"])
        if starved:
            console.out.print(f"[yellow]{starved} of {steps} steps starved[/yellow] (no action ready: the last one "
                              "was held while the next chunk was on its way)")


def _success_table(report: dict) -> None:
    """Success per task, per group and overall, each with its 95% Wilson interval (and, under a language
    ablation, whose instruction each task got)."""
    from rich.table import Table

    ablated = report.get("prompt_from") is not None
    title = "success" + (f" with --prompt-from {report['prompt_from']}" if ablated else "")
    table = Table(title=title, title_justify="left")
    table.add_column("task / group")
    if ablated:
        table.add_column("instruction of")
    for column in ("successes", "rate", "95% CI"):
        table.add_column(column, justify="right")

    def row(name: str, stats: dict, instruction: str = "", *, bold: bool = False) -> None:
        low, high = stats["success_rate_ci95"]
        cells = [console.escape(name), *([console.escape(instruction)] if ablated else []),
                 f"{stats['successes']}/{stats['episodes']}", f"{stats['success_rate']:.0%}", f"{low:.0%}-{high:.0%}"]
        table.add_row(*(f"[bold]{c}[/bold]" for c in cells) if bold else cells)

    for name, stats in report["per_task"].items():
        row(name, stats, stats["prompt_from"])
    if report["per_group"]:
        table.add_section()
        for name, stats in report["per_group"].items():
            covered = len(stats["tasks"])
            part = "" if covered == stats["tasks_in_group"] else f" ({covered} of {stats['tasks_in_group']} tasks)"
            row(f"group {name}{part}", stats)
    table.add_section()
    row("overall", report["overall"], bold=True)
    console.out.print(table)


def _fit_horizon(setting: Execution, policy: BasePolicy, emb: Embodiment, open_loop_steps: int | None) -> Execution:
    """``setting`` with an execution horizon that leaves each chunk actions for the simulated latency (see
    :func:`~pi0cli.evaluation.realtime.workable_horizon`), the change or the doubt said on stderr."""
    import dataclasses

    import numpy as np

    from pi0cli.evaluation.realtime import delay_ticks, workable_horizon

    if setting.real_time or setting.strategy == "sync" or not setting.latency_ms:
        return setting  # real latency is unknown up front; sync waits; no latency never starves
    chunk = len(np.asarray(policy.infer(emb.example_observation(0))["actions"]))  # the first episode compiles it anyway
    requested = open_loop_steps or emb.open_loop_steps
    horizon, note = workable_horizon(chunk, delay_ticks(setting.latency_ms, emb.control_hz), requested,
                                     explicit=open_loop_steps is not None)
    if note is not None:
        (console.warn if horizon == requested else console.err.print)(note)
    return dataclasses.replace(setting, execution_horizon=horizon)


def _offline(embodiment: str | None, checkpoint: Path | None, server: str | None, dataset: str,
             episodes: int | None, first_episode: int | None, stride: int, out: Path | None, as_json: bool,
             model: str | None = None, vs_initial: bool = False, fast_decode: str = DEFAULT_FAST_DECODE,
             state_input: str | None = None) -> None:
    from pi0cli.checkpoint import read_checkpoint_config
    from pi0cli.data.lerobot import resolve_dataset
    from pi0cli.errors import Pi0Error
    from pi0cli.evaluation.offline import (
        episode_indices,
        evaluate_offline,
        heldout_loss,
        open_frames,
        require_matplotlib,
    )
    from pi0cli.policy.load import load_policy, load_training_pipeline

    if checkpoint is None or server is not None:
        raise Pi0Error("offline evaluation (--dataset) needs --checkpoint DIR (a served policy answers one "
                       "observation at a time; point at its checkpoint instead)")
    from pi0cli.cli.checkpoints import step_dir

    checkpoint = step_dir(checkpoint)
    saved = read_checkpoint_config(checkpoint) or {}
    name = embodiment or saved.get("embodiment")
    if name is None:
        raise Pi0Error(f"{checkpoint} does not say which robot it drives; name the embodiment: "
                       "pi0 eval ROBOT --dataset ...")
    emb = console.registry().embodiment(name)
    _, root = resolve_dataset(dataset)
    if not root.is_dir():
        raise Pi0Error(f"dataset {dataset!r} is not a local LeRobot dataset ({root} does not exist)")
    chosen = episode_indices(root, episodes, first_episode)
    if _trained_on(saved, root):
        console.warn(f"episodes {chosen[0]}-{chosen[-1]} of {root} are training episodes of this checkpoint (it "
                     "trained on the whole dataset): the error shows how well it fits them, not how it generalises; "
                     "record held-out episodes (e.g. `pi0 record ... --seed 1000`) and pass those as --dataset")
    if out is not None:
        require_matplotlib()
    with console.err.status(f"loading {checkpoint}"):
        policy = load_policy(checkpoint, embodiment=emb, model=model, batch_sizes=(1, 8),
                             fast_decode=fast_decode,  # type: ignore[arg-type]  # eval() checked both
                             state_input=state_input)  # type: ignore[arg-type]
        initial = load_policy(checkpoint, embodiment=emb, model=model, batch_sizes=(1, 8), initial_weights=True,
                              fast_decode=fast_decode,  # type: ignore[arg-type]
                              state_input=state_input) if vs_initial else None  # type: ignore[arg-type]
    horizon = len(policy.infer(emb.example_observation(0))["actions"])
    frames = open_frames(dataset, emb, horizon, chosen)
    with console.Progress("offline eval", unit="frames") as progress:
        report = evaluate_offline(
            frames, policy, emb, stride=stride, out=out,
            provenance={"checkpoint": str(Path(checkpoint).absolute()), "dataset": str(root), "embodiment": emb.name,
                        "episodes": chosen, "config": saved},
            on_progress=lambda done, total: progress.update(done, total=total))
    if initial is not None:
        with console.Progress("offline eval, initial weights", unit="frames") as progress:
            before = evaluate_offline(frames, initial, emb, stride=stride,
                                      on_progress=lambda done, total: progress.update(done, total=total))
        report["initial_weights"] = {k: before[k] for k in ("mae", "rmse", "mae_per_dim", "mae_per_step")}
        with console.err.status("held-out loss of the initial and the trained weights"):
            trained_model, pipeline = load_training_pipeline(checkpoint, embodiment=emb, model=model)
            initial_model, _ = load_training_pipeline(checkpoint, embodiment=emb, model=model, initial_weights=True)
            report["heldout_loss"] = heldout_loss(frames, {"initial": initial_model, "trained": trained_model},
                                                  pipeline.training_inputs(), stride=stride)
    if as_json:
        console.out.print_json(json.dumps(report, default=str))
        return
    fmt = lambda values: "  ".join(f"{i}:{v:.3g}" for i, v in enumerate(values))  # noqa: E731
    console.out.print(f"MAE per horizon step  {fmt(report['mae_per_step'])}")
    console.out.print(f"MAE per action dim    {fmt(report['mae_per_dim'])}")
    console.out.print(f"action MAE {report['mae']:.4f}, RMSE {report['rmse']:.4f} over {report['frames_compared']} "
                      f"frames of episodes {chosen[0]}-{chosen[-1]}"
                      + (f"; report and plots in {out}" if out else ""))
    held = report.get("hold_position_mae")
    if held:
        console.out.print(f"holding the current position instead: action MAE {held:.4f} (the policy's error is "
                          f"{report['mae'] / held:.0%} of it)")
    if "heldout_loss" in report:
        loss = report["heldout_loss"]
        console.out.print(f"held-out loss (the training objective, no augmentation) with the run's initial weights "
                          f"{loss['initial']:.4f} -> trained {loss['trained']:.4f}")
    if "initial_weights" in report:
        console.out.print(_learning_verdict(report["initial_weights"]["mae"], report["mae"], held))


def _learning_verdict(initial: float, trained: float, held: float | None) -> str:
    """One line a newcomer can trust: the held-out error before and after training, and where it stands."""
    line = f"held-out action MAE with the run's initial weights {initial:.4f} -> trained {trained:.4f}"
    # Within 5% is no evidence either way (a few steps move the weights without changing what they predict).
    if trained < 0.95 * initial:
        lower = f"{initial / trained:.1f}x lower" if trained > 0 else "lower"
        line += f" ({lower}: training learned from the demonstrations)"
    elif trained <= 1.05 * initial:
        line += " (within 5%: training has not changed it measurably yet)"
    else:
        line += " (higher: training has not improved on these episodes)"
    if held:
        line += ("; it also beats holding still" if trained < held else
                 f"; holding still ({held:.4f}) is still better: closed-loop success needs longer training")
    return line


def _trained_on(saved: dict, root: Path) -> bool:
    """Whether the checkpoint's recorded training dataset is the dataset at ``root``."""
    for key in ("dataset_root", "dataset"):
        value = saved.get(key)
        if value and Path(value).expanduser().is_dir() and Path(value).expanduser().resolve() == root.resolve():
            return True
    return False
