"""Pieces `pi0 record` and `pi0 eval` share: the simulated robot, and a policy from a checkpoint or a server."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pi0cli.errors import Pi0Error
from pi0cli.models.fast_decode import DEFAULT_FAST_DECODE

if TYPE_CHECKING:
    from pi0cli.embodiment import Embodiment
    from pi0cli.simulator import SimTask, Simulator


def simulated(embodiment_name: str) -> tuple[Embodiment, Simulator]:
    """The embodiment and the simulator a plugin registered for it; embodiments without one are refused with
    the list of robots that have one."""
    from pi0cli.cli import console

    registry = console.registry()
    embodiment = registry.embodiment(embodiment_name)
    simulator = registry.simulator_for(embodiment.name)
    if simulator is None:
        have = sorted(s.embodiment for s in registry.simulators.values() if s.embodiment in registry.embodiments)
        raise Pi0Error(f"embodiment {embodiment.name!r} has no simulator; simulated robots: "
                       + (", ".join(have) or "none (install a plugin that registers a simulator)"))
    return embodiment, simulator


def task_of(simulator: Simulator, task: str | None) -> SimTask:
    """The simulator's task called ``task`` (default: its default task); an unknown one lists its own tasks."""
    return simulator.task(task)


#: The first scene ``pi0 eval`` runs by default. ``pi0 record`` starts at seed 0 and tries seeds upward, each task
#: from ``--seed`` (a scene is a function of task and seed), so evaluation sees scenes the recording did not use as
#: long as a recording tries fewer than this many seeds per task; ``pi0 record`` warns when it reaches them.
EVAL_SEED = 1000


def selected_tasks(simulator: Simulator, task: str | None, tasks: str | None) -> tuple[SimTask, ...]:
    """The tasks of ``--task NAME`` (one; default: the simulator's) or ``--tasks SELECTOR`` (task names and the
    simulator's task groups, comma-separated); both at once is refused."""
    if task is not None and tasks is not None:
        raise Pi0Error("pass --task NAME (one task) or --tasks SELECTOR (several), not both")
    return simulator.select_tasks(tasks) if tasks is not None else (simulator.task(task),)


def episode_count(episodes: int | None, episodes_per_task: int | None, *, several: bool, default: int = 10) -> int:
    """Episodes per task: ``--episodes`` for one ``--task``, ``--episodes-per-task`` (either for one task)."""
    if episodes_per_task is not None and episodes_per_task < 1:
        raise Pi0Error(f"--episodes-per-task must be at least 1, got {episodes_per_task}")
    if episodes is not None and episodes_per_task is not None:
        raise Pi0Error("pass --episodes N or --episodes-per-task N, not both")
    if several and episodes is not None:
        raise Pi0Error("with --tasks, say how many episodes each task gets: --episodes-per-task N")
    return episodes_per_task or episodes or default


def check_state_input(state_input: str | None) -> None:
    """``--state-input`` is visible, hidden or left out."""
    import typer

    from pi0cli.models.config import STATE_INPUTS

    if state_input is not None and state_input not in STATE_INPUTS:
        raise typer.BadParameter(f"{state_input!r} is not {' or '.join(STATE_INPUTS)}", param_hint="--state-input")


def open_policy(embodiment: Embodiment, checkpoint: Path | None, server: str | None, *, api_key: str | None = None,
                default_prompt: str | None = None, connect_timeout: float = 30.0,
                model: str | None = None, fast_decode: str = DEFAULT_FAST_DECODE,
                state_input: str | None = None) -> tuple[Any, dict[str, Any]]:
    """A policy answering ``infer(observation)``: loaded from ``checkpoint`` or reached at ``server``
    (``ws://host:port``, waiting up to ``connect_timeout`` seconds and saying so); returns it with its
    provenance. ``fast_decode``: a pi0-FAST checkpoint's decoding rule; ``state_input``: a checkpoint's state
    input (None: its own; a server has its own of both)."""
    if (checkpoint is None) == (server is None):
        raise Pi0Error("pass exactly one of --checkpoint DIR and --server ws://HOST:PORT")
    if checkpoint is not None:
        import json

        from pi0cli.checkpoint import read_checkpoint_config
        from pi0cli.cli.checkpoints import step_dir
        from pi0cli.policy.load import load_policy

        checkpoint = step_dir(checkpoint)  # an experiment folder: its latest complete step, said on stderr

        policy = load_policy(checkpoint, embodiment=embodiment, model=model, default_prompt=default_prompt,
                             fast_decode=fast_decode,  # type: ignore[arg-type]  # FastActionOutputs checks it
                             state_input=state_input)  # type: ignore[arg-type]  # check_state_input checked it
        config = read_checkpoint_config(Path(checkpoint)) or {}
        provenance = {"checkpoint": str(Path(checkpoint).absolute()), "step": Path(checkpoint).name,
                      **({"state_input": state_input} if state_input is not None else {}),
                      "config": json.loads(json.dumps(config)), "dataset": config.get("dataset")}
        return policy, provenance
    from urllib.parse import urlparse

    from pi0cli.cli import console
    from pi0cli.client.policy import ServerUnreachableError, WebsocketClientPolicy

    assert server is not None
    url = urlparse(server if "://" in server else f"ws://{server}")
    if url.scheme not in ("ws", "wss") or not url.hostname:
        raise Pi0Error(f"--server {server!r} is not a websocket address; use ws://HOST:PORT")
    uri = f"{url.scheme}://{url.hostname}:{url.port or 8000}"
    message = f"connecting to the policy server at {uri} (waiting up to {connect_timeout:g} s)"
    if not console.err.is_terminal:  # a log gets one line instead of the spinner
        console.err.print(message)
    with console.err.status(message) as status:

        def waiting(waited: float, last: BaseException | None) -> None:
            why = f": {' '.join(str(last).split())}" if last is not None else ""
            status.update(f"waiting for the policy server at {uri}: {waited:.0f} s of {connect_timeout:g} s{why} "
                          "(start it with `pi0 serve`)")

        try:
            client = WebsocketClientPolicy(uri, None, api_key=api_key, connect_timeout=connect_timeout,
                                           on_wait=waiting)
        except ServerUnreachableError as exc:
            raise Pi0Error(f"{exc}; or wait longer with --connect-timeout SECONDS") from None
    return client, {"server": server, "server_metadata": client.get_server_metadata()}
