"""Pieces `pi0 record` and `pi0 eval` share: the simulated robot, and a policy from a checkpoint or a server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pi0cli.errors import Pi0Error


def simulated(embodiment_name: str) -> tuple[Any, str]:
    """The embodiment and its simulator task; embodiments without a simulator are refused clearly."""
    from pi0cli.cli import console

    embodiment = console.registry().embodiment(embodiment_name)
    if not embodiment.simulator:
        raise Pi0Error(f"embodiment {embodiment.name!r} has no simulator; simulated robots: "
                       + ", ".join(n for n, e in console.registry().embodiments.items() if e.simulator))
    return embodiment, embodiment.simulator


def task_of(simulator: str, task: str | None) -> str:
    from pi0cli.sim import TASKS, task_name

    try:
        return task_name(task or simulator)
    except Exception:
        raise Pi0Error(f"unknown task {task!r}; tasks: {', '.join(TASKS)}") from None


def open_policy(embodiment: Any, checkpoint: Path | None, server: str | None, *, api_key: str | None = None,
                default_prompt: str | None = None, connect_timeout: float = 30.0) -> tuple[Any, dict[str, Any]]:
    """A policy answering ``infer(observation)``: loaded from ``checkpoint`` or reached at ``server``
    (``ws://host:port``, waiting up to ``connect_timeout`` seconds and saying so); returns it with its
    provenance."""
    if (checkpoint is None) == (server is None):
        raise Pi0Error("pass exactly one of --checkpoint DIR and --server ws://HOST:PORT")
    if checkpoint is not None:
        import json

        from pi0cli.policy.loading import load_policy, read_checkpoint_config

        policy = load_policy(checkpoint, embodiment=embodiment, default_prompt=default_prompt)
        config = read_checkpoint_config(Path(checkpoint)) or {}
        provenance = {"checkpoint": str(Path(checkpoint).absolute()), "step": Path(checkpoint).name,
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
            policy = WebsocketClientPolicy(uri, None, api_key=api_key, connect_timeout=connect_timeout,
                                           on_wait=waiting)
        except ServerUnreachableError as exc:
            raise Pi0Error(f"{exc}; or wait longer with --connect-timeout SECONDS") from None
    return policy, {"server": server, "server_metadata": policy.get_server_metadata()}
