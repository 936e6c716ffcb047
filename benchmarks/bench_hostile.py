"""A hostile client beside a normal one: does the attack slow the robot down?

    python benchmarks/bench_hostile.py [--seconds 20] [--attackers 2] [--model-ms 0] [--json out.json]

The server is `pi0 serve` with its default limits (64 MiB frames, 32768 msgpack elements per frame) around a
tiny random-weight pi0 for ALOHA sim (or, with ``--model-ms``, the real server and Policy around a model that
sleeps that long per call). One normal client sends observations in a closed loop while a poller asks
``/healthz`` every 20 ms. Two phases of ``--seconds`` each: without and with ``--attackers`` hostile clients
(each its own process and connection) sending worst-case frames within the limits back to back:

- ``empty_lists``: a 16 MiB array of empty arrays (16 million objects; refused at the element budget),
- ``wide_map``: a map of 16k small entries (just within the budget: decoded, then refused),
- ``deep``: lists nested 31 deep, filling the element budget,
- ``floats``: 32k floats (checked for NaN one by one),
- ``big_bin``: a 60 MiB frame (one camera of raw bytes: decoded, then refused by validation),
- ``long_dtype``: an 8 MiB dtype string (must not be echoed back),
- ``nan_state`` / ``empty_image``: valid frames with NaN state or a 3x0x224 image.

Reported: the normal client's p50/p99 latency and the /healthz p50/p99 in both phases, and the ratio of the
normal client's p99 under attack to without. Target: p99 within 1.5x of the no-attack run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serving import free_port, make_checkpoint, percentile, pi0_serve, server_env, sim_obs  # noqa: E402

MAX_ELEMENTS = 2**15


def hostile_frames() -> dict[str, bytes]:
    import msgpack

    from pi0cli.serving import protocol

    n = 16 * 2**20
    deep: list = []
    chain: list = deep
    for _ in range(30):
        inner: list = []
        chain.append(inner)
        chain = inner
    nan_state = sim_obs(0) | {"state": np.full(14, np.nan, np.float32)}
    empty_image = sim_obs(0) | {"images": {"cam_high": np.zeros((3, 0, 224), np.uint8)}}
    return {
        "empty_lists": b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n,
        "wide_map": msgpack.packb({f"k{i}": i for i in range(MAX_ELEMENTS // 2 - 2)}),
        "deep": msgpack.packb([deep] * (MAX_ELEMENTS // 64)),
        "floats": msgpack.packb([1.5] * (MAX_ELEMENTS - 2)),
        "big_bin": msgpack.packb({"images": {"cam_high": bytes(60 * 2**20)}}),
        "long_dtype": msgpack.packb({"x": {b"__ndarray__": True, b"data": b"", b"dtype": "<" + "f" * 8 * 2**20,
                                           b"shape": [0]}}),
        "nan_state": protocol.packb(nan_state),
        "empty_image": protocol.packb(empty_image),
    }


def hostile(port: int, seconds: float, kinds: str) -> None:
    """``--hostile PORT SECONDS KINDS``: send worst-case frames back to back; print counts as one JSON line."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    frames = [(k, f) for k, f in hostile_frames().items() if kinds == "all" or k in kinds.split(",")]
    counts = {"frames": 0, "errors": 0, "closed": 0, "longest_reply": 0}
    stop_at = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < stop_at:
        try:
            with connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None, open_timeout=30) as ws:
                ws.recv(timeout=30)
                while time.perf_counter() < stop_at:
                    _, frame = frames[i % len(frames)]
                    i += 1
                    ws.send(frame)
                    reply = ws.recv(timeout=60)
                    counts["frames"] += 1
                    counts["errors"] += isinstance(reply, str)
                    counts["longest_reply"] = max(counts["longest_reply"], len(reply))
        except (ConnectionClosed, OSError, TimeoutError):
            counts["closed"] += 1
    print(json.dumps(counts), flush=True)


def phase(port: int, seconds: float, attackers: int, kinds: str = "all") -> dict:
    from pi0cli.client import WebsocketClientPolicy

    procs = [subprocess.Popen([sys.executable, __file__, "--hostile", str(port), str(seconds + 2), kinds],
                              stdout=subprocess.PIPE, text=True) for _ in range(attackers)]
    if attackers:
        time.sleep(2.0)  # the attack is running (frames built, connected) before measuring
    stop = threading.Event()
    health: list[float] = []
    health_errors = [0]

    def poll() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
                    r.read()
                health.append((time.perf_counter() - start) * 1000)
            except OSError:
                health_errors[0] += 1
            time.sleep(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    latencies: list[float] = []
    errors = 0
    observations = [sim_obs(i) for i in range(16)]
    with WebsocketClientPolicy("127.0.0.1", port, connect_timeout=30) as client:
        for obs in observations[:3]:
            client.infer(obs)
        poller.start()
        stop_at = time.perf_counter() + seconds
        k = 0
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            try:
                reply = client.infer(observations[k % len(observations)])
                if not np.isfinite(reply["actions"]).all():
                    errors += 1
            except Exception:  # noqa: BLE001
                errors += 1
            latencies.append((time.perf_counter() - start) * 1000)
            k += 1
    stop.set()
    poller.join(10)
    attack = {"frames": 0, "errors": 0, "closed": 0, "longest_reply": 0}
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        with contextlib.suppress(json.JSONDecodeError, IndexError):
            counts = json.loads(out.strip().splitlines()[-1])
            for key in ("frames", "errors", "closed"):
                attack[key] += counts[key]
            attack["longest_reply"] = max(attack["longest_reply"], counts["longest_reply"])
    return {"attackers": attackers, "requests": len(latencies), "errors": errors,
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
            "health_p50_ms": percentile(health, 50), "health_p99_ms": percentile(health, 99),
            "health_max_ms": max(health, default=float("nan")), "health_errors": health_errors[0], "attack": attack}


def fixed_server(port: int, model_ms: float, budget: bool) -> None:
    """``--fixed-server PORT MS BUDGET``: the real server (default limits) around a fixed-latency model."""
    import asyncio

    from bench_serving import fixed_latency_policy

    from pi0cli.serving.server import PolicyServer

    policy, embodiment = fixed_latency_policy(model_ms, 8)
    server = PolicyServer(policy, embodiment=embodiment, port=port, max_batch=8, batch_window_ms=10,
                          rejected_bytes_per_s=4 * 2**20 if budget else None)
    asyncio.run(server.serve())


@contextlib.contextmanager
def fixed_latency_serve(model_ms: float, budget: bool):
    from pi0cli.client.policy import wait_until_ready

    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--fixed-server", str(port), str(model_ms), str(int(budget))])
    try:
        wait_until_ready("127.0.0.1", port, timeout=120)
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per phase")
    parser.add_argument("--attackers", type=int, default=2, help="hostile clients (processes) in the attack phase")
    parser.add_argument("--model-ms", type=float, default=0.0,
                        help="serve a fixed-latency model of this many ms instead of the tiny pi0 (0: tiny pi0)")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--no-budget", action="store_true",
                        help="serve with --rejected-mb-per-s 0 (to see what the refused-frame budget buys)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--kinds", default="all", help="comma-separated attack frames (default: all, in turn)")
    parser.add_argument("--per-kind", action="store_true", help="also one attack phase per kind of frame")
    parser.add_argument("--hostile", nargs=3, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--fixed-server", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.hostile is not None:
        hostile(int(args.hostile[0]), float(args.hostile[1]), args.hostile[2])
        return 0
    if args.fixed_server is not None:
        fixed_server(int(args.fixed_server[0]), float(args.fixed_server[1]), args.fixed_server[2] == "1")
        return 0

    with tempfile.TemporaryDirectory(prefix="pi0-hostile-") as tmp:
        if args.model_ms > 0:
            label = f"fixed-latency model ({args.model_ms:g} ms per call)"
            server = fixed_latency_serve(args.model_ms, not args.no_budget)
        else:
            label = "tiny pi0 (CPU), pi0 serve"
            checkpoint = args.checkpoint or make_checkpoint(Path(tmp))
            server = pi0_serve(checkpoint, 8, 10.0, server_env(Path(tmp) / "jax-cache"),
                               extra=["--rejected-mb-per-s", "0"] if args.no_budget else None)
        label += " without the refused-frame budget" if args.no_budget else ""
        print(f"{label}; {args.seconds:g} s per phase; {os.cpu_count()} CPUs", flush=True)
        with server as (port, _):
            base = phase(port, args.seconds, 0)
            attacked = phase(port, args.seconds, args.attackers, args.kinds)
            per_kind = {}
            if args.per_kind:
                for kind in hostile_frames():
                    row = per_kind[kind] = phase(port, args.seconds, args.attackers, kind)
                    print(f"  {kind:12s}: normal client p50 {row['p50_ms']:6.1f} ms  p99 {row['p99_ms']:6.1f} ms; "
                          f"/healthz p99 {row['health_p99_ms']:5.1f} ms; {row['attack']['frames']} hostile frames",
                          flush=True)
    ratio = attacked["p99_ms"] / base["p99_ms"]
    for name, row in (("no attack", base), (f"{args.attackers} attackers", attacked)):
        print(f"  {name:12s}: normal client p50 {row['p50_ms']:6.1f} ms  p99 {row['p99_ms']:6.1f} ms  "
              f"({row['requests']} requests, {row['errors']} errors); /healthz p50 {row['health_p50_ms']:5.1f} ms  "
              f"p99 {row['health_p99_ms']:5.1f} ms  max {row['health_max_ms']:5.1f} ms")
    a = attacked["attack"]
    print(f"  attack: {a['frames']} hostile frames answered ({a['errors']} error texts, longest "
          f"{a['longest_reply']} bytes), {a['closed']} connections closed by the server")
    passed = ratio <= 1.5 and base["errors"] == 0 and attacked["errors"] == 0
    print(f"  normal client p99 under attack / without: {ratio:.2f}x (target <= 1.5x: {'PASS' if passed else 'FAIL'})")
    if args.json:
        args.json.write_text(json.dumps({"label": label, "no_attack": base, "attack": attacked,
                                         "p99_ratio": ratio, "per_kind": per_kind}, indent=2))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
