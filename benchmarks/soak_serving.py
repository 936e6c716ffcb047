"""Soak test of `pi0 serve`: 16 clients for 60 s against a tiny pi0, zero errors, memory flat.

    python benchmarks/soak_serving.py [--seconds 60] [--clients 16] [--checkpoint DIR]

The server runs in a subprocess (`pi0 serve --max-batch 8`); its resident memory (VmRSS) is sampled every
second. Memory is "flat" when the mean RSS of the last fifth of the run exceeds that of the second fifth
(after warm-up) by less than 5% + 16 MiB. Clients are threads with their own connections in a closed loop;
every 50th request of each client is malformed on purpose (it must be answered with an error text frame,
counted separately, and the connection must keep serving). Exit status 0 only with zero unexpected errors
and flat memory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serving import make_checkpoint, percentile, pi0_serve, server_env, sim_obs  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--checkpoint", type=Path, default=None)
    args = parser.parse_args(argv)

    from pi0cli.client import PolicyServerError, WebsocketClientPolicy

    with tempfile.TemporaryDirectory(prefix="pi0-soak-") as tmp:
        tmp = Path(tmp)
        checkpoint = args.checkpoint or make_checkpoint(tmp)
        print(f"starting pi0 serve (tiny pi0, --max-batch 8) for {args.clients} clients x {args.seconds:g} s ...",
              flush=True)
        with pi0_serve(checkpoint, 8, 10.0, server_env(tmp / "jax-cache")) as (port, proc):
            observations = [sim_obs(i) for i in range(32)]
            bad = {"state": np.zeros(3, np.float32)}
            counts = {"ok": 0, "rejected_as_expected": 0}
            errors: list[str] = []
            latencies: list[float] = []
            lock = threading.Lock()
            stop_at = time.perf_counter() + args.seconds

            def client(i: int) -> None:
                try:
                    conn = WebsocketClientPolicy("127.0.0.1", port, connect_timeout=30, request_timeout=60)
                except Exception as exc:  # noqa: BLE001
                    errors.append(f"client {i} could not connect: {exc}")
                    return
                k = 0
                while time.perf_counter() < stop_at:
                    k += 1
                    try:
                        if k % 50 == 0:
                            try:
                                conn.infer(bad)
                                errors.append("a malformed request was answered with actions")
                            except PolicyServerError:
                                with lock:
                                    counts["rejected_as_expected"] += 1
                            continue
                        start = time.perf_counter()
                        reply = conn.infer(observations[(i + k) % len(observations)])
                        elapsed = (time.perf_counter() - start) * 1000
                        if reply["actions"].shape != (10, 14) or not np.isfinite(reply["actions"]).all():
                            errors.append(f"bad reply {reply['actions'].shape}")
                        with lock:
                            counts["ok"] += 1
                            latencies.append(elapsed)
                    except Exception as exc:  # noqa: BLE001
                        errors.append(f"client {i}: {type(exc).__name__}: {exc}")
                        return
                conn.close()

            threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
            begin = time.perf_counter()
            for t in threads:
                t.start()
            samples: list[tuple[float, float]] = []
            while time.perf_counter() < stop_at:
                samples.append((time.perf_counter() - begin, rss_mib(proc.pid)))
                time.sleep(1.0)
            for t in threads:
                t.join(120)
            elapsed = time.perf_counter() - begin

    rss = np.array([r for _, r in samples])
    fifth = max(1, len(rss) // 5)
    early, late = float(rss[fifth : 2 * fifth].mean()), float(rss[-fifth:].mean())
    flat = late <= early * 1.05 + 16
    print(f"{counts['ok']} requests served ({counts['ok'] / elapsed:.1f} req/s), p50 {percentile(latencies, 50):.1f} ms, "
          f"p99 {percentile(latencies, 99):.1f} ms; {counts['rejected_as_expected']} malformed requests rejected as "
          "expected")
    print(f"server RSS: start {rss[0]:.0f} MiB, after warm-up {early:.0f} MiB, end {late:.0f} MiB, max {rss.max():.0f} MiB "
          f"-> {'flat' if flat else 'GROWING'}")
    print(f"unexpected errors: {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
    return 0 if flat and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
