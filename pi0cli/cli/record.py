"""``pi0 record``: record simulated episodes (scripted demonstrations or policy rollouts) as a LeRobot dataset."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pi0cli.cli import console
from pi0cli.cli.embodiments import complete_embodiment

if TYPE_CHECKING:
    from pi0cli.simulator import Frame, SimTask


def record(
    embodiment: Annotated[str, typer.Argument(help="A simulated embodiment (e.g. aloha_sim).",
                                              autocompletion=complete_embodiment)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset root to create.")],
    scripted: Annotated[bool, typer.Option(
        "--scripted", help="Record scripted demonstrations (successful ones only).")] = False,
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", help="Record rollouts of the policy in this checkpoint.")] = None,
    server: Annotated[str | None, typer.Option(
        "--policy", "--server", help="Record rollouts of a policy served at ws://HOST:PORT.")] = None,
    episodes: Annotated[int | None, typer.Option(
        "--episodes", "-n", min=1, help="Episodes to record (default 10) of the one --task.")] = None,
    task: Annotated[str | None, typer.Option("--task", help="Simulator task (default: the simulator's).")] = None,
    tasks: Annotated[str | None, typer.Option(
        "--tasks", metavar="SELECTOR",
        help="Several tasks: comma-separated task names and the simulator's task groups (a wrong name lists "
             "them); each task gets --episodes-per-task episodes and every episode its own instruction.")
    ] = None,
    episodes_per_task: Annotated[int | None, typer.Option(
        "--episodes-per-task", metavar="N", help="With --tasks: episodes of each task (default 10).")] = None,
    seed: Annotated[int, typer.Option(
        "--seed", help="Seed of the first episode's scene (of each task). pi0 eval's scenes start at 1000.")] = 0,
    sim_option: Annotated[list[str] | None, typer.Option(
        "--sim-option", metavar="NAME=VALUE",
        help="A setting of the simulator, repeatable (aloha_sim: shadows=true renders shadows, slow on a CPU); "
             "a wrong name lists the simulator's settings.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing dataset at --out.")] = False,
    model: Annotated[str | None, typer.Option(
        "--model", help="Model preset of a checkpoint without pi0_config.json (e.g. a reference openpi one): "
                        "pi0, pi05, ...")] = None,
    connect_timeout: Annotated[float, typer.Option(
        "--connect-timeout", min=0, metavar="SECONDS",
        help="With a served policy: how long to wait for the server to answer.")] = 30.0,
) -> None:
    """Record simulated episodes into a LeRobot dataset (images as video, state, action, task).

    Every episode is written with its own task instruction. A scripted task that fails is skipped and counted;
    the other tasks are still written. Ctrl-C keeps every episode completed so far; the dataset is never left
    half-written.
    """
    from pi0cli.cli.sim_common import episode_count, open_policy, selected_tasks, simulated
    from pi0cli.data.writer import DatasetWriter, embodiment_features, frame_from_observation
    from pi0cli.errors import Pi0Error
    from pi0cli.simulator import ScriptFailed, checked

    emb, simulator = simulated(embodiment)
    selection = selected_tasks(simulator, task, tasks)
    count = episode_count(episodes, episodes_per_task, several=tasks is not None)
    sim_options = simulator.parse_options(sim_option or ())
    if scripted == (checkpoint is not None or server is not None) or (checkpoint is not None and server is not None):
        raise Pi0Error("pass one source of actions: --scripted, --checkpoint DIR or --policy ws://HOST:PORT")
    tallies = {t.name: _Tally() for t in selection}
    # Each item: the task, the episode's instruction (a rollout's frames may carry their own), its frames.
    source: Iterator[tuple[str, str, Iterator[Frame]]]
    if scripted:
        scripted_episodes = simulator.scripted
        if scripted_episodes is None:
            raise Pi0Error(f"simulator {simulator.name!r} ({emb.name}) has no scripted demonstrations; record "
                           "rollouts of a policy with --checkpoint DIR or --policy ws://HOST:PORT")

        def demonstrations() -> Iterator[tuple[str, str, Iterator[Frame]]]:
            for sim_task in selection:
                tally = tallies[sim_task.name]
                try:
                    for ep in scripted_episodes(sim_task.name, count, start_seed=seed, **sim_options):
                        tally.seeds.append(ep.seed)  # failed seeds are skipped: attempts run from seed to the last
                        yield sim_task.name, ep.prompt or sim_task.prompt, checked(ep.frames, simulator, emb)
                except ScriptFailed as exc:  # too few successes: keep what succeeded, go on with the next task
                    tally.short = str(exc)
                except Exception as exc:  # noqa: BLE001 - one task's failure must not drop the others' episodes
                    tally.error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"

        source = demonstrations()
    else:
        from pi0cli.client.broker import ActionChunkBroker
        from pi0cli.evaluation.prompting import PromptedPolicy

        policy, _ = open_policy(emb, checkpoint, server, default_prompt=selection[0].prompt,
                                connect_timeout=connect_timeout, model=model)

        def rollouts() -> Iterator[tuple[str, str, Iterator[Frame]]]:
            for sim_task in selection:
                # An observation without a prompt gets its task's (under the broker: once per chunk).
                prompted = PromptedPolicy(policy, sim_task.prompt, replace=False)
                for s in range(seed, seed + count):
                    broker = ActionChunkBroker(prompted, action_horizon=emb.open_loop_steps)
                    act = lambda obs, broker=broker: broker.infer(obs)["actions"]  # noqa: E731
                    tallies[sim_task.name].seeds.append(s)
                    yield sim_task.name, sim_task.prompt, checked(
                        simulator.rollout(sim_task.name, s, act, max_steps=None, **sim_options), simulator, emb)

        source = rollouts()
    writer = DatasetWriter(out, fps=emb.control_hz, features=embodiment_features(emb), robot_type=emb.name,
                           overwrite=overwrite)
    try:
        with console.Progress("recording", count * len(selection), unit="episodes") as progress, writer:
            for name, prompt, frames in source:
                failed = None
                for frame in _frames(frames, skip_errors=scripted):
                    if isinstance(frame, str):
                        failed = frame
                        break
                    # A scripted episode's own prompt; a rollout's, the prompt its observation carries.
                    own = None if scripted else frame["observation"].get("prompt")
                    writer.add_frame(frame_from_observation(emb, frame["observation"], frame["action"]),
                                     own if isinstance(own, str) and own else prompt)
                if failed is not None:  # the simulator broke this episode: skip it; the task's next ones still come
                    writer.discard_episode()
                    tallies[name].error = failed
                    continue
                writer.save_episode()
                tallies[name].kept += 1
                progress.advance()
    except KeyboardInterrupt:
        # The writer has published the complete episodes (the one under way is dropped) before we get here.
        kept = (f"{Path(out).absolute()} keeps the {writer.episodes} complete episode(s)" if writer.episodes else
                f"no episode was complete, so nothing was written to {Path(out).absolute()}")
        console.err.print(f"interrupted: {kept}; record more into another --out (datasets are written whole, "
                          "not appended to)", markup=False, highlight=False)
        raise typer.Exit(130) from None
    if scripted:
        _report_scripted(tallies, seed, count)
    if writer.episodes == 0:
        raise Pi0Error(f"no episode was recorded, so nothing was written to {Path(out).absolute()}"
                       + "".join(f"; {name}: {t.error or t.short}" for name, t in tallies.items()
                                 if t.error or t.short))
    console.out.print(f"wrote {writer.episodes} episodes of {len(selection)} task(s) to {Path(out).absolute()}")
    errors = {name: t.error for name, t in tallies.items() if t.error}
    if errors:
        raise Pi0Error(f"{len(errors)} task(s) failed and are missing from the dataset or short: "
                       + "; ".join(f"{name}: {error}" for name, error in errors.items()))
    _warn_eval_overlap(tallies, seed, selection)


def _frames(frames: Iterator[Frame], *, skip_errors: bool) -> Iterator[Frame | str]:
    """``frames``; with ``skip_errors`` an error the simulator raises ends them with its one-line message (the
    writer's own errors are not caught here)."""
    try:
        yield from frames
    except Exception as exc:
        if not skip_errors:
            raise
        yield f"{type(exc).__name__}: {' '.join(str(exc).split())}"


class _Tally:
    """One task's recording: the seeds its episodes came from, how many were written, why it fell short."""

    def __init__(self) -> None:
        self.seeds: list[int] = []
        self.kept = 0
        self.short: str | None = None  # the simulator's ScriptFailed message
        self.error: str | None = None  # anything else that stopped the task or skipped an episode


def _report_scripted(tallies: dict[str, _Tally], seed: int, count: int) -> None:
    """Per task: episodes kept, seeds tried, failed seeds (tried minus kept); then the totals."""
    kept = sum(t.kept for t in tallies.values())
    tried = sum(t.seeds[-1] - seed + 1 for t in tallies.values() if t.seeds)
    if len(tallies) > 1:
        from rich.table import Table

        table = Table(title="scripted demonstrations", title_justify="left")
        for column in ("task", "kept", "seeds tried", "failed", "note"):
            table.add_column(column, justify="left" if column in ("task", "note") else "right")
        for name, t in tallies.items():
            attempts = t.seeds[-1] - seed + 1 if t.seeds else 0
            note = t.error or t.short or ("" if t.kept == count else f"{count - t.kept} missing")
            table.add_row(name, f"{t.kept}/{count}", str(attempts), str(attempts - t.kept), console.escape(note))
        console.out.print(table)
    last = max((t.seeds[-1] for t in tallies.values() if t.seeds), default=seed)
    console.out.print(f"scripted demonstrations: {kept} of {tried} attempts succeeded, {tried - kept} failed (seeds "
                      f"{seed}-{last}{' of each task' if len(tallies) > 1 else ''}; only successful ones are recorded)")
    for name, t in tallies.items():
        if t.short:
            console.warn(f"{name}: {t.kept} of {count} episodes recorded: {t.short}")


def _warn_eval_overlap(tallies: dict[str, _Tally], seed: int, selection: tuple[SimTask, ...]) -> None:
    """Say so when recorded scenes reach pi0 eval's default seeds (evaluation would then see training scenes)."""
    from pi0cli.cli.sim_common import EVAL_SEED

    if seed >= EVAL_SEED:
        return
    reached = [name for name, t in tallies.items() if t.seeds and t.seeds[-1] >= EVAL_SEED]
    if reached:
        console.warn(f"the scenes of {', '.join(reached)} reach seed {EVAL_SEED}, where pi0 eval's scenes start: "
                     f"evaluate with --seed above {max(tallies[n].seeds[-1] for n in reached)} to keep them unseen")
