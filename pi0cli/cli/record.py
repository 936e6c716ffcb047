"""``pi0 record``: record simulated episodes (scripted demonstrations or policy rollouts) as a LeRobot dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pi0cli.cli import console
from pi0cli.cli.embodiments import complete_embodiment


def record(
    embodiment: Annotated[str, typer.Argument(help="A simulated embodiment (e.g. aloha_sim).", autocompletion=complete_embodiment)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset root to create.")],
    scripted: Annotated[bool, typer.Option("--scripted", help="Record scripted demonstrations (successful ones only).")] = False,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="Record rollouts of the policy in this checkpoint.")] = None,
    server: Annotated[str | None, typer.Option("--policy", "--server", help="Record rollouts of a policy served at ws://HOST:PORT.")] = None,
    episodes: Annotated[int, typer.Option("--episodes", "-n", min=1, help="Episodes to record.")] = 10,
    task: Annotated[str | None, typer.Option("--task", help="Simulator task (default: the embodiment's).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the first episode's scene.")] = 0,
    shadows: Annotated[bool, typer.Option("--shadows/--no-shadows", help="Render shadows (slow on a CPU; gym-aloha's default look).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing dataset at --out.")] = False,
    connect_timeout: Annotated[float, typer.Option(
        "--connect-timeout", min=0, metavar="SECONDS",
        help="With a served policy: how long to wait for the server to answer.")] = 30.0,
) -> None:
    """Record simulated episodes into a LeRobot dataset (images as video, state, action, task).

    Ctrl-C keeps every episode completed so far; the dataset is never left half-written.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pi0cli.cli.sim_common import open_policy, simulated, task_of
    from pi0cli.data.writer import DatasetWriter, embodiment_features, frame_from_observation
    from pi0cli.errors import Pi0Error
    from pi0cli.sim import PROMPTS

    emb, simulator = simulated(embodiment)
    task = task_of(simulator, task)
    if scripted == (checkpoint is not None or server is not None) or (checkpoint is not None and server is not None):
        raise Pi0Error("pass one source of actions: --scripted, --checkpoint DIR or --policy ws://HOST:PORT")
    prompt = PROMPTS[task]
    render = {"shadows": shadows}
    if scripted:
        from pi0cli.sim.episodes import scripted_episodes

        source = ((ep.seed, ep.frames) for ep in scripted_episodes(task, episodes, start_seed=seed, **render))
    else:
        from pi0cli.client.broker import ActionChunkBroker
        from pi0cli.sim.episodes import rollout

        policy, _ = open_policy(emb, checkpoint, server, default_prompt=prompt, connect_timeout=connect_timeout)

        def rollouts():
            for s in range(seed, seed + episodes):
                broker = ActionChunkBroker(policy, action_horizon=emb.open_loop_steps)
                yield s, rollout(task, s, lambda obs: broker.infer(obs)["actions"], **render)

        source = rollouts()
    progress = Progress(TextColumn("[bold]recording"), BarColumn(), MofNCompleteColumn(), TextColumn("episodes"),
                        TimeElapsedColumn(), console=console.err)
    with progress, DatasetWriter(out, fps=emb.control_hz, features=embodiment_features(emb), robot_type=emb.name,
                                 overwrite=overwrite) as writer:
        job = progress.add_task("record", total=episodes)
        for _, frames in source:
            for frame in frames:
                writer.add_frame(frame_from_observation(emb, frame["observation"], frame["action"]), prompt)
            writer.save_episode()
            progress.advance(job)
    console.out.print(f"wrote {writer.episodes} episodes to {Path(out).absolute()}")
