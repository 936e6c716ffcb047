"""``pi0 serve``: the openpi-compatible websocket policy server.

- ``protocol``: the msgpack-numpy codec (reference layout) and request validation (numpy + msgpack only).
- ``batching``: the dynamic batcher (requests of many connections in one model call).
- ``server``: the websockets server (metadata frame, health check, API key, limits, error frames).
- ``recording``: ``--record DIR`` (npz files, no pickle) and :func:`~pi0cli.serving.recording.load_records`.

Importing this package imports nothing heavy.
"""
