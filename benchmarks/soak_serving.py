"""Soak test of `pi0 serve`: 16 clients for 60 s against a tiny pi0, zero errors, memory flat.

    python benchmarks/soak_serving.py [--seconds 60] [--clients 16] [--no-record] [--extra-kb 2048] [--checkpoint DIR]

With ``--record`` (the default) the server records every request (``pi0 serve --record``) and every 10th
request of each client carries an extra key the embodiment does not know (``--extra-kb`` KiB, over the
recorder's default 1 MiB cap for such keys, so it is left out of the record): memory must stay flat all the
same (before issue 14 each recorded request stayed alive until a full garbage collection). At the end the
record files and the server's /metrics record counters are reported.

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
import urllib.request
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
    parser.add_argument("--record", action=argparse.BooleanOptionalAction, default=True,
                        help="run the server with --record (default: on)")
    parser.add_argument("--extra-kb", type=int, default=2048, help="size of the unknown key of every 10th request")
    args = parser.parse_args(argv)

    from pi0cli.client import PolicyServerError, WebsocketClientPolicy

    with tempfile.TemporaryDirectory(prefix="pi0-soak-") as tmpdir:
        tmp = Path(tmpdir)
        checkpoint = args.checkpoint or make_checkpoint(tmp)
        record_dir = tmp / "records"
        extra = ["--record", str(record_dir)] if args.record else []
        print(f"starting pi0 serve (tiny pi0, --max-batch 8{', --record' if args.record else ''}) for "
              f"{args.clients} clients x {args.seconds:g} s ...", flush=True)
        with pi0_serve(checkpoint, 8, 10.0, server_env(tmp / "jax-cache"), extra=extra) as (port, proc):
            blob = np.zeros(args.extra_kb * 1024, np.uint8)
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
                        obs = observations[(i + k) % len(observations)]
                        if args.record and k % 10 == 0:
                            obs = obs | {"debug": {"blob": blob}}
                        reply = conn.infer(obs)
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
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                metrics = [line for line in r.read().decode().splitlines() if line.startswith("pi0_record_")]
        files = len(list(record_dir.glob("request_*.npz"))) if args.record else 0

    rss = np.array([r for _, r in samples])
    fifth = max(1, len(rss) // 5)
    early, late = float(rss[fifth : 2 * fifth].mean()), float(rss[-fifth:].mean())
    flat = late <= early * 1.05 + 16
    print(f"{counts['ok']} requests served ({counts['ok'] / elapsed:.1f} req/s), "
          f"p50 {percentile(latencies, 50):.1f} ms, p99 {percentile(latencies, 99):.1f} ms; "
          f"{counts['rejected_as_expected']} malformed requests rejected as expected")
    print(f"server RSS: start {rss[0]:.0f} MiB, after warm-up {early:.0f} MiB, end {late:.0f} MiB, "
          f"max {rss.max():.0f} MiB -> {'flat' if flat else 'GROWING'}")
    if args.record:
        print(f"--record: {files} files written; " + ", ".join(metrics))
    print(f"unexpected errors: {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
    return 0 if flat and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
