"""What ``pi0 serve`` serves: the :class:`ServedPolicy` protocol.

A JAX :class:`~pi0cli.policy.Policy` and an exported-artifact runtime both fill it in; the server knows nothing
else about them. Every request takes the same path: :meth:`~ServedPolicy.prepare` on a worker thread (input
transforms, per request, off the model thread), then :meth:`~ServedPolicy.run_prepared` on the batcher's thread
with the prepared requests of one batch.

Imports no JAX (nor anything heavy).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from pi0cli.observation_types import Observation, Reply

#: What :meth:`ServedPolicy.prepare` returns. Opaque to the server, which only hands it back to
#: :meth:`ServedPolicy.run_prepared`.
type PreparedRequest = object


@runtime_checkable
class ServedPolicy(Protocol):
    """A policy the server can serve. Thread-safety: ``prepare`` may run on several threads at once;
    ``run_prepared`` and ``warmup`` run on one thread (the batcher's)."""

    @property
    def metadata(self) -> Mapping[str, object]:
        """Sent to every client as the connection's first frame (e.g. ``reset_pose``)."""
        ...

    @property
    def max_batch(self) -> int:
        """The largest batch ``run_prepared`` runs in one model call."""
        ...

    def warmup(self) -> object:
        """Compile (or load) whatever the first request would otherwise wait for; raise if it cannot run."""
        ...

    def prepare(self, obs: Observation, /) -> PreparedRequest:
        """One validated observation -> what the model needs of it; raises a ``Pi0Error`` for bad input."""
        ...

    def run_prepared(self, items: Sequence[PreparedRequest], /, *,
                     return_exceptions: bool = True) -> list[Reply | BaseException]:
        """One reply per prepared item, in order; with ``return_exceptions`` a failed item yields its exception
        and the others are still answered."""
        ...

    def infer(self, obs: Observation, /) -> Reply:
        """One observation -> one reply (``prepare`` then ``run_prepared``), for in-process use."""
        ...


def describe_missing(policy: object) -> list[str]:
    """The :class:`ServedPolicy` members ``policy`` lacks (empty: it can be served)."""
    members = ("metadata", "max_batch", "warmup", "prepare", "run_prepared", "infer")
    return [name for name in members if not hasattr(policy, name)]
