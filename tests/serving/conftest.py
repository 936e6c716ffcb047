"""Fixtures of the serving tests: in-process servers around a fake (numpy) policy (the ALOHA-sim embodiment and
the tiny checkpoint are tests/conftest.py's, shared with the policy tests)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from serving_helpers import fake_policy


@pytest.fixture
def fake_server(aloha_sim) -> Iterator[Any]:
    """An in-process server around the fake policy, with an API key and a 1 MiB message limit."""
    from pi0cli.serving.server import PolicyServer, ServerThread

    server = PolicyServer(fake_policy(aloha_sim), embodiment=aloha_sim, port=0, api_key="secret",
                          max_batch=8, batch_window_ms=2.0, max_message_bytes=2**20)
    with ServerThread(server) as thread:
        yield thread
