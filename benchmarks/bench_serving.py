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
3. The same load against the real server and Policy around a fixed-latency model (``--model-ms`` per call
   whatever the batch size, as a batch of up to 8 costs on a GPU). On a CPU the tiny model's cost grows
   linearly with the batch, so (2) measures what batching saves in per-call overhead there, and (3) what the
   server's batching delivers when the model call has the cost profile of an accelerator.

Everything runs on 127.0.0.1; every loop is bounded in time.
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
    max_batch = 8

    def warmup(self) -> None:
        pass

    def prepare(self, obs):
        return obs

    def run_prepared(self, items, /, *, return_exceptions=True):
        return [{"actions": np.zeros((10, 14), np.float32), "policy_timing": {"infer_ms": 0.0}} for _ in items]

    def infer(self, obs):
        return self.run_prepared([obs])[0]


def null_server(port: int) -> None:
    """``--null-server PORT``: the real server stack around :class:`NullPolicy`, in its own process."""
    import asyncio

    from pi0cli.serving.server import PolicyServer

    asyncio.run(PolicyServer(NullPolicy(), port=port, max_batch=8, batch_window_ms=10).serve())


def codec_overhead(requests: int) -> dict:
    """Round trips against the null server in another process (as a robot talks to a server), and the pure
    codec cost (encode + decode in this process)."""
    from pi0cli.client import WebsocketClientPolicy
    from pi0cli.serving import protocol

    rng = np.random.default_rng(0)
    obs = {"images": {f"cam_{i}": rng.integers(0, 256, (3, 224, 224), dtype=np.uint8) for i in range(3)},
           "state": rng.normal(size=14).astype(np.float32), "prompt": "pick up the cube"}
    codec = []
    for _ in range(requests):
        start = time.perf_counter()
        protocol.unpackb(protocol.packb(obs))
        codec.append((time.perf_counter() - start) * 1000)
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--null-server", str(port)])
    latencies, server_ms = [], []
    try:
        with WebsocketClientPolicy("127.0.0.1", port, connect_timeout=60, retry_interval=0.1) as client:
            for _ in range(20):
                client.infer(obs)
            for _ in range(requests):
                start = time.perf_counter()
                reply = client.infer(obs)
                latencies.append((time.perf_counter() - start) * 1000)
                server_ms.append(reply["server_timing"]["infer_ms"])
    finally:
        proc.terminate()
        proc.wait(30)
    size = len(protocol.packb(obs))
    return {"request_bytes": size, "codec_p50_ms": percentile(codec, 50),
            "roundtrip_p50_ms": percentile(latencies, 50), "roundtrip_p99_ms": percentile(latencies, 99),
            "server_p50_ms": percentile(server_ms, 50), "requests": requests}


# ------------------------------------------------------------------------------ fixed-latency model


def fixed_latency_policy(model_ms: float, max_batch: int):
    """The real Policy (ALOHA-sim input/output transforms, padding to compiled sizes) around a model whose call
    takes ``model_ms`` whatever the batch size, as a batch of up to 8 does on a GPU."""
    from pi0_embodiment_aloha import ALOHA_SIM
    from pi0cli.policy.policy import Policy, batch_sizes_up_to
    from pi0cli.transforms import PadStatesAndActions, compose

    def sample(rng, batch):
        time.sleep(model_ms / 1000)
        return np.repeat(np.asarray(batch["state"])[:, None, :], 10, axis=1)

    return Policy(sample, input_transform=compose(ALOHA_SIM.inputs, PadStatesAndActions(32)),
                  output_transform=ALOHA_SIM.outputs, batch_sizes=batch_sizes_up_to(max_batch),
                  example=lambda: ALOHA_SIM.example_observation(0)), ALOHA_SIM


def fixed_latency_server(port: int, max_batch: int, model_ms: float, window_ms: float) -> None:
    """``--fixed-server``: the real server around :func:`fixed_latency_policy`, in its own process."""
    import asyncio

    from pi0cli.serving.server import PolicyServer

    policy, embodiment = fixed_latency_policy(model_ms, max_batch)
    asyncio.run(PolicyServer(policy, embodiment=embodiment, port=port, max_batch=max_batch,
                             batch_window_ms=window_ms).serve())


def fixed_latency_load(counts: list[int], seconds: float, model_ms: float, window_ms: float) -> list[dict]:
    from pi0cli.client.policy import wait_until_ready

    rows = []
    for label, max_batch in (("batching on", max(counts)), ("batching off", 1)):
        port = free_port()
        proc = subprocess.Popen([sys.executable, __file__, "--fixed-server", str(port), str(max_batch),
                                 str(model_ms), str(window_ms)])
        try:
            wait_until_ready("127.0.0.1", port, timeout=120)
            for n in counts:
                row = load_test(port, n, seconds) | {"mode": label}
                rows.append(row)
                print_row(label, row)
        finally:
            proc.terminate()
            proc.wait(30)
    return rows


def print_row(label: str, row: dict) -> None:
    print(f"  {label:12s} {row['clients']:2d} clients: {row['req_per_s']:7.1f} req/s  p50 {row['p50_ms']:7.1f} ms  "
          f"p99 {row['p99_ms']:7.1f} ms  ({row['requests']} requests, {row['errors']} errors)", flush=True)


def speedups(rows: list[dict], counts: list[int]) -> tuple[float, float]:
    def rate(mode: str, n: int) -> float:
        return next(r["req_per_s"] for r in rows if r["mode"] == mode and r["clients"] == n)

    top = max(counts)
    vs_serial = rate("batching on", top) / rate("batching off", top)
    vs_single = rate("batching on", top) / rate("batching off", 1) if 1 in counts else float("nan")
    return vs_serial, vs_single


# ------------------------------------------------------------------------------------------ model serving


@contextlib.contextmanager
def pi0_serve(checkpoint: Path, max_batch: int, window_ms: float, env: dict, timeout: float = 600.0,
              extra: list[str] | None = None):
    """``pi0 serve`` of ``checkpoint`` in a subprocess (``extra``: more flags); yields (port, process)."""
    from pi0cli.client.policy import wait_until_ready

    port = free_port()
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(
        [PI0, "serve", "--checkpoint", str(checkpoint), "--embodiment", "aloha_sim", "--port", str(port),
         "--max-batch", str(max_batch), "--batch-window-ms", str(window_ms), *(extra or [])],
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
    from pi0cli.testing import make_tiny_checkpoint

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
    parser.add_argument("--window-ms", type=float, default=10.0, help="--batch-window-ms of the batching server")
    parser.add_argument("--model-ms", type=float, default=25.0, help="latency of the fixed-latency model")
    parser.add_argument("--checkpoint", type=Path, default=None, help="serve this checkpoint instead of a tiny one")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--null-server", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--fixed-server", nargs=4, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fixed_server is not None:
        port, max_batch, model_ms, window_ms = args.fixed_server
        fixed_latency_server(int(port), int(max_batch), float(model_ms), float(window_ms))
        return 0
    if args.null_server is not None:
        null_server(args.null_server)
        return 0
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    counts = [int(c) for c in args.clients.split(",")]
    results: dict = {"seconds_per_level": seconds}

    print("codec + loopback overhead (three 3x224x224 uint8 images + state + prompt) ...", flush=True)
    codec = codec_overhead(100 if args.quick else 500)
    results["codec"] = codec
    print(f"  request {codec['request_bytes'] / 1e3:.0f} kB: codec encode+decode p50 {codec['codec_p50_ms']:.3f} ms; "
          f"round trip p50 {codec['roundtrip_p50_ms']:.2f} ms, p99 {codec['roundtrip_p99_ms']:.2f} ms, "
          f"of which in the server {codec['server_p50_ms']:.2f} ms "
          f"(target p50 <= 2 ms: {'PASS' if codec['roundtrip_p50_ms'] <= 2.0 else 'FAIL'})", flush=True)

    with tempfile.TemporaryDirectory(prefix="pi0-bench-") as tmpdir:
        tmp = Path(tmpdir)
        checkpoint = args.checkpoint or make_checkpoint(tmp)
        env = server_env(tmp / "jax-cache")
        rows = []
        for label, max_batch in (("batching on", max(counts)), ("batching off", 1)):
            print(f"{label}: starting pi0 serve --max-batch {max_batch} (compiling) ...", flush=True)
            with pi0_serve(checkpoint, max_batch, args.window_ms, env) as (port, _):
                for n in counts:
                    row = load_test(port, n, seconds) | {"mode": label}
                    rows.append(row)
                    print_row(label, row)
        results["tiny_pi0_cpu"] = rows
    top = max(counts)
    speedup, vs_single = speedups(rows, counts)
    results["tiny_pi0_cpu_speedup"] = {"vs_one_at_a_time": speedup, "vs_one_client": vs_single}
    print(f"  tiny pi0 on CPU, {top} clients, batching on vs one-at-a-time serving (batching off, {top} clients): "
          f"{speedup:.2f}x (target >= 4x: {'PASS' if speedup >= 4 else 'FAIL'}); vs one client: {vs_single:.2f}x")

    print(f"fixed-latency model ({args.model_ms:g} ms per call for any batch up to {top}, as on a GPU) ...",
          flush=True)
    fixed = fixed_latency_load(counts, seconds, args.model_ms, args.window_ms)
    results["fixed_latency"] = fixed
    f_speedup, f_single = speedups(fixed, counts)
    results["fixed_latency_speedup"] = {"vs_one_at_a_time": f_speedup, "vs_one_client": f_single}
    print(f"  fixed-latency model, {top} clients, batching on vs one-at-a-time: {f_speedup:.2f}x "
          f"(target >= 4x: {'PASS' if f_speedup >= 4 else 'FAIL'}); vs one client: {f_single:.2f}x")
    errors = sum(r["errors"] for r in rows + fixed)
    print(f"errors: {errors}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
