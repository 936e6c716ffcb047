"""What a newcomer trips over in the first hour, driven through the real CLI in subprocesses."""

from __future__ import annotations

import socket
import time

import pytest
from plugin_helpers import run_pi0

from pi0cli.client.policy import ServerUnreachableError, WebsocketClientPolicy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- waiting for a policy server


def test_client_reports_each_wait_and_gives_up_at_the_timeout():
    waits: list[float] = []
    start = time.monotonic()
    with pytest.raises(ServerUnreachableError, match=r"after 1 s"):
        WebsocketClientPolicy(f"ws://127.0.0.1:{_free_port()}", None, connect_timeout=1.0, retry_interval=0.2,
                              on_wait=lambda waited, last: waits.append(waited))
    assert time.monotonic() - start < 3
    assert waits and waits == sorted(waits) and waits[-1] < 1.5


@pytest.mark.parametrize("command", [
    ("eval", "aloha_sim", "--server"),
    ("record", "aloha_sim", "--out", "{tmp}/demos", "--policy"),
])
def test_waiting_for_a_server_says_what_and_how_long_then_fails_once(command, tmp_path):
    args = [part.format(tmp=tmp_path) for part in command]
    start = time.monotonic()
    result = run_pi0(*args, f"ws://127.0.0.1:{_free_port()}", "--connect-timeout", "1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert time.monotonic() - start < 60
    assert "connecting to the policy server at ws://127.0.0.1:" in result.stderr
    assert "waiting up to 1 s" in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "--connect-timeout" in error[0] and "pi0 serve" in error[0], result.stderr
    assert "Traceback" not in result.stderr
