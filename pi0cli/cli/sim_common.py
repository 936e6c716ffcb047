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
                default_prompt: str | None = None) -> tuple[Any, dict[str, Any]]:
    """A policy answering ``infer(observation)``: loaded from ``checkpoint`` or reached at ``server``
    (``ws://host:port``); returns it with its provenance."""
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

    from pi0cli.client.policy import WebsocketClientPolicy

    url = urlparse(server if "://" in server else f"ws://{server}")
    if url.scheme not in ("ws", "wss") or not url.hostname:
        raise Pi0Error(f"--server {server!r} is not a websocket address; use ws://HOST:PORT")
    policy = WebsocketClientPolicy(url.hostname, url.port or 8000, api_key=api_key)
    return policy, {"server": server, "server_metadata": policy.get_server_metadata()}
