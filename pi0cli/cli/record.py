"""``pi0 record``: record simulated episodes (scripted demonstrations or policy rollouts) as a LeRobot dataset."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pi0cli.cli import console
from pi0cli.cli.embodiments import complete_embodiment

if TYPE_CHECKING:
    from pi0cli.simulator import Frame


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
    episodes: Annotated[int, typer.Option("--episodes", "-n", min=1, help="Episodes to record.")] = 10,
    task: Annotated[str | None, typer.Option("--task", help="Simulator task (default: the simulator's).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the first episode's scene.")] = 0,
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

    Ctrl-C keeps every episode completed so far; the dataset is never left half-written.
    """
    from pi0cli.cli.sim_common import open_policy, simulated, task_of
    from pi0cli.data.writer import DatasetWriter, embodiment_features, frame_from_observation
    from pi0cli.errors import Pi0Error
    from pi0cli.simulator import checked

    emb, simulator = simulated(embodiment)
    sim_task = task_of(simulator, task)
    sim_options = simulator.parse_options(sim_option or ())
    if scripted == (checkpoint is not None or server is not None) or (checkpoint is not None and server is not None):
        raise Pi0Error("pass one source of actions: --scripted, --checkpoint DIR or --policy ws://HOST:PORT")
    prompt = sim_task.prompt
    source: Iterator[Iterator[Frame]]
    if scripted:
        scripted_episodes = simulator.scripted
        if scripted_episodes is None:
            raise Pi0Error(f"simulator {simulator.name!r} ({emb.name}) has no scripted demonstrations; record "
                           "rollouts of a policy with --checkpoint DIR or --policy ws://HOST:PORT")
        def demonstrations() -> Iterator[Iterator[Frame]]:
            for ep in scripted_episodes(sim_task.name, episodes, start_seed=seed, **sim_options):
                succeeded.append(ep.seed)  # failed seeds are skipped: attempts run from seed to the last one
                yield checked(ep.frames, simulator, emb)

        succeeded: list[int] = []
        source = demonstrations()
    else:
        from pi0cli.client.broker import ActionChunkBroker

        policy, _ = open_policy(emb, checkpoint, server, default_prompt=prompt, connect_timeout=connect_timeout,
                                model=model)

        def rollouts() -> Iterator[Iterator[Frame]]:
            for s in range(seed, seed + episodes):
                broker = ActionChunkBroker(policy, action_horizon=emb.open_loop_steps)
                act = lambda obs, broker=broker: broker.infer(obs)["actions"]  # noqa: E731
                yield checked(simulator.rollout(sim_task.name, s, act, max_steps=None, **sim_options), simulator, emb)

        source = rollouts()
    writer = DatasetWriter(out, fps=emb.control_hz, features=embodiment_features(emb), robot_type=emb.name,
                           overwrite=overwrite)
    try:
        with console.Progress("recording", episodes, unit="episodes") as progress, writer:
            for frames in source:
                for frame in frames:
                    writer.add_frame(frame_from_observation(emb, frame["observation"], frame["action"]), prompt)
                writer.save_episode()
                progress.advance()
    except KeyboardInterrupt:
        # The writer has published the complete episodes (the one under way is dropped) before we get here.
        kept = (f"{Path(out).absolute()} keeps the {writer.episodes} complete episode(s)" if writer.episodes else
                f"no episode was complete, so nothing was written to {Path(out).absolute()}")
        console.err.print(f"interrupted: {kept}; record more into another --out (datasets are written whole, "
                          "not appended to)", markup=False, highlight=False)
        raise typer.Exit(130) from None
    console.out.print(f"wrote {writer.episodes} episodes to {Path(out).absolute()}")
    if scripted and succeeded:
        attempts = succeeded[-1] - seed + 1
        console.out.print(f"scripted demonstrations: {len(succeeded)} of {attempts} attempts succeeded (seeds "
                          f"{seed}-{succeeded[-1]}; only successful ones are recorded)")
