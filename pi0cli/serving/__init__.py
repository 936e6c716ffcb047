"""``pi0 serve``: the openpi-compatible websocket policy server.

- ``served``: the :class:`~pi0cli.serving.served.ServedPolicy` protocol, all the server knows of a policy.
- ``protocol``: the msgpack-numpy codec (reference layout); it only decodes (numpy + msgpack only). Requests
  are validated by the embodiment's one check (:mod:`pi0cli.observation_check`).
- ``batching``: the dynamic batcher (requests of many connections in one model call).
- ``server``: the websocket loop (metadata frame, one path per request, error frames).
- ``endpoints``: ``/healthz``, ``/metrics`` and the API key of the handshake.
- ``limits``: the connection cap, the rejected-bytes budget and rate-limited warnings.
- ``recording``: ``--record DIR`` (npz files, no pickle) and :func:`~pi0cli.serving.recording.load_records`.

Importing this package imports nothing heavy.
"""
