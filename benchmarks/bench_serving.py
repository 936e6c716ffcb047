"""Serving throughput and latency: 1, 4 and 8 concurrent clients, dynamic batching on and off.

    python benchmarks/bench_serving.py [--quick] [--seconds 10] [--json out.json]

1. Codec + loopback overhead: round trips of an observation with three 3x224x224 uint8 images through the
   real server stack (msgpack-numpy, websockets on 127.0.0.1, batcher hand-off) around a policy that does
   nothing. Target: p50 <= 2 ms.
2. A tiny random-weight pi0 for ALOHA sim served by `pi0 serve` in a subprocess, twice: batching on
   (--max-batch 8) and off (--max-batch 1, the reference's one-request-at-a-time serving). For 1, 4 and 8
   clients (threads, each with its own connection, sending its next request as soon as it has a reply):
   aggregate requests/s and p50/p99 latency. Target: 8 clients with batching >= 4x the throughput of
   one-at-a-time serving (batching off, same 8 clients).

Everything runs on 127.0.0.1; every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PI0 = str(Path(sys.executable).parent / "pi0")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sim_obs(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"images": {"cam_high": rng.integers(0, 256, (3, 224, 224), dtype=np.uint8)},
            "state": rng.uniform(-1, 1, 14).astype(np.float32), "prompt": "Transfer cube"}


# ------------------------------------------------------------------------------------------ codec overhead


class NullPolicy:
    """Answers every request with zeros at once: what is left is codec + websocket + batcher overhead."""

    metadata: dict = {}

    def warmup(self) -> None:
        pass

    def infer_batch(self, items, return_exceptions=True):
        return [{"actions": np.zeros((10, 14), np.float32), "policy_timing": {"infer_ms": 0.0}} for _ in items]


def codec_overhead(requests: int) -> dict:
    from pi0cli.client import WebsocketClientPolicy
    from pi0cli.serving import protocol
    from pi0cli.serving.server import PolicyServer, ServerThread

    rng = np.random.default_rng(0)
    obs = {"images": {f"cam_{i}": rng.integers(0, 256, (3, 224, 224), dtype=np.uint8) for i in range(3)},
           "state": rng.normal(size=14).astype(np.float32), "prompt": "pick up the cube"}
    codec = []
    for _ in range(requests):
        start = time.perf_counter()
        protocol.unpackb(protocol.packb(obs))
        codec.append((time.perf_counter() - start) * 1000)
    server = PolicyServer(NullPolicy(), port=0, max_batch=1, batch_window_ms=0)
    latencies = []
    with ServerThread(server) as thread, WebsocketClientPolicy("127.0.0.1", thread.port) as client:
        for _ in range(20):
            client.infer(obs)
        for _ in range(requests):
            start = time.perf_counter()
            client.infer(obs)
            latencies.append((time.perf_counter() - start) * 1000)
    size = len(protocol.packb(obs))
    return {"request_bytes": size, "codec_p50_ms": percentile(codec, 50),
            "roundtrip_p50_ms": percentile(latencies, 50), "roundtrip_p99_ms": percentile(latencies, 99),
            "requests": requests}


# ------------------------------------------------------------------------------------------ model serving


@contextlib.contextmanager
def pi0_serve(checkpoint: Path, max_batch: int, window_ms: float, env: dict, timeout: float = 600.0):
    from pi0cli.client.policy import wait_until_ready

    port = free_port()
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(
        [PI0, "serve", "--checkpoint", str(checkpoint), "--embodiment", "aloha_sim", "--port", str(port),
         "--max-batch", str(max_batch), "--batch-window-ms", str(window_ms)],
        env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_until_ready("127.0.0.1", port, timeout=timeout)
        yield port, proc
    except Exception:
        log.seek(0)
        print(log.read()[-3000:], file=sys.stderr)
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def load_test(port: int, clients: int, seconds: float, warmup_requests: int = 3) -> dict:
    """``clients`` threads, each on its own connection, in a closed loop for ``seconds``."""
    from pi0cli.client import WebsocketClientPolicy

    observations = [sim_obs(i) for i in range(16)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    connections = [WebsocketClientPolicy("127.0.0.1", port, connect_timeout=30) for _ in range(clients)]
    for conn in connections:
        for i in range(warmup_requests):
            conn.infer(observations[i])
    barrier = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def worker(i: int) -> None:
        conn = connections[i]
        barrier.wait()
        k = i
        while time.perf_counter() < stop_at[0]:
            start = time.perf_counter()
            try:
                reply = conn.infer(observations[k % len(observations)])
                if reply["actions"].shape != (10, 14):
                    errors.append(f"bad shape {reply['actions'].shape}")
            except Exception as exc:  # noqa: BLE001
                errors.append(str(exc))
                return
            latencies[i].append((time.perf_counter() - start) * 1000)
            k += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    barrier.wait()
    begin = time.perf_counter()
    for t in threads:
        t.join(seconds + 60)
    elapsed = time.perf_counter() - begin
    for conn in connections:
        conn.close()
    flat = [x for per in latencies for x in per]
    return {"clients": clients, "requests": len(flat), "errors": len(errors), "req_per_s": len(flat) / elapsed,
            "p50_ms": percentile(flat, 50), "p99_ms": percentile(flat, 99)}


def make_checkpoint(directory: Path) -> Path:
    from pi0_embodiment_aloha import ALOHA_SIM

    from pi0cli.policy.loading import make_tiny_checkpoint

    return make_tiny_checkpoint(directory / "tiny_aloha_sim", ALOHA_SIM)


def server_env(cache: Path) -> dict:
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test of the benchmark)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per load level (default 10, quick 3)")
    parser.add_argument("--clients", default="1,4,8", help="comma-separated client counts")
    parser.add_argument("--window-ms", type=float, default=5.0, help="--batch-window-ms of the batching server")
    parser.add_argument("--checkpoint", type=Path, default=None, help="serve this checkpoint instead of a tiny one")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    counts = [int(c) for c in args.clients.split(",")]
    results: dict = {"seconds_per_level": seconds}

    print("codec + loopback overhead (three 3x224x224 uint8 images + state + prompt) ...", flush=True)
    codec = codec_overhead(100 if args.quick else 500)
    results["codec"] = codec
    print(f"  request {codec['request_bytes'] / 1e3:.0f} kB: codec encode+decode p50 {codec['codec_p50_ms']:.3f} ms; "
          f"round trip p50 {codec['roundtrip_p50_ms']:.2f} ms, p99 {codec['roundtrip_p99_ms']:.2f} ms "
          f"(target p50 <= 2 ms: {'PASS' if codec['roundtrip_p50_ms'] <= 2.0 else 'FAIL'})", flush=True)

    with tempfile.TemporaryDirectory(prefix="pi0-bench-") as tmp:
        tmp = Path(tmp)
        checkpoint = args.checkpoint or make_checkpoint(tmp)
        env = server_env(tmp / "jax-cache")
        rows = []
        for label, max_batch in (("batching on", max(counts)), ("batching off", 1)):
            print(f"{label}: starting pi0 serve --max-batch {max_batch} (compiling) ...", flush=True)
            with pi0_serve(checkpoint, max_batch, args.window_ms, env) as (port, _):
                for n in counts:
                    row = load_test(port, n, seconds) | {"mode": label}
                    rows.append(row)
                    print(f"  {label:12s} {n:2d} clients: {row['req_per_s']:7.1f} req/s  p50 {row['p50_ms']:7.1f} ms  "
                          f"p99 {row['p99_ms']:7.1f} ms  ({row['requests']} requests, {row['errors']} errors)",
                          flush=True)
        results["load"] = rows

    def rate(mode: str, n: int) -> float:
        return next(r["req_per_s"] for r in rows if r["mode"] == mode and r["clients"] == n)

    top = max(counts)
    speedup = rate("batching on", top) / rate("batching off", top)
    vs_single = rate("batching on", top) / rate("batching off", 1) if 1 in counts else float("nan")
    results["speedup_vs_one_at_a_time"] = speedup
    results["speedup_vs_one_client"] = vs_single
    print(f"\n{top} clients, batching on vs one-at-a-time serving (batching off, {top} clients): {speedup:.2f}x "
          f"(target >= 4x: {'PASS' if speedup >= 4 else 'FAIL'}); vs a single client without batching: {vs_single:.2f}x")
    errors = sum(r["errors"] for r in rows)
    print(f"errors: {errors}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
