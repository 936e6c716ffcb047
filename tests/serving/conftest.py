"""Fixtures of the serving tests: the ALOHA-sim embodiment, in-process servers around a fake (numpy) policy,
a tiny random-weight checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from serving_helpers import fake_policy


@pytest.fixture(scope="session")
def aloha_sim():
    from pi0_embodiment_aloha import ALOHA_SIM

    return ALOHA_SIM


@pytest.fixture
def fake_server(aloha_sim) -> Iterator[Any]:
    """An in-process server around the fake policy, with an API key and a 1 MiB message limit."""
    from pi0cli.serving.server import PolicyServer, ServerThread

    server = PolicyServer(fake_policy(aloha_sim), embodiment=aloha_sim, port=0, api_key="secret",
                          max_batch=8, batch_window_ms=2.0, max_message_bytes=2**20)
    with ServerThread(server) as thread:
        yield thread


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, aloha_sim):
    """A random-weight tiny pi0 checkpoint for ALOHA sim (action_dim 32, horizon 10)."""
    from pi0cli.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_aloha_sim", aloha_sim)
