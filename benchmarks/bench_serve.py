"""Serving benchmark: the Ray Serve endpoint against a plain FastAPI + uvicorn peer, same model, same run.

For each server it measures requests/s and p50/p99 latency for single-image
JSON at concurrency 1 and 32, and images/s for batched JSON requests, then
writes ``benchmarks/results/serve.json`` (one row per measurement) and
``serve.md`` and prints the ratios against the targets (throughput at c=32 >=
1.2x the peer; p50 at c=1 <= 1.0x the peer; batched images/s >= 2x the peer).

    python benchmarks/bench_serve.py                         # the project's settings (mlp/distributed/rayenv.py)
    python benchmarks/bench_serve.py --variants default,project --rounds 3 --duration 3

Variants of the Serve side, each a fresh local Ray cluster started by
``python -m serve`` in a child process (so its environment takes effect):

* ``default``: Ray's own defaults for every setting in ``mlp.rayenv.CLUSTER_ENV``
  (Python proxy actor, workers at nice 15, ...).
* ``project``: ``mlp.rayenv.CLUSTER_ENV``, what ``python -m serve`` and ``.ci/run`` use:
  HAProxy ingress, ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``, ...

Both servers get the same processes and logging: one uvicorn worker / one
Serve replica per core, no access log. The peer stays up while each Serve
variant runs, and every round measures peer then Serve point by point, so
drifting background load on a shared machine hits both alike; ratios are
medians of the per-round ratios. The idle Ray cluster costs the peer ~0.15
core meanwhile, so the peer is also measured once alone, before any cluster
starts (reported beside the table). The load generator is a minimal
keep-alive HTTP/1.1 client on asyncio, one connection per concurrent user.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from mlp.distributed.rayenv import CLUSTER_ENV as SERVING_ENV

ROOT = Path(__file__).resolve().parent.parent

FAST_DRAIN = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2", "RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S": "2"}
VARIANT_ENV = {
    "default": {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0",
                "RAY_SERVE_HAPROXY_METRICS_ENABLED": "1", "RAY_worker_niceness": "15", **FAST_DRAIN},
    "project": dict(SERVING_ENV),
}
BATCH = 64
POINTS = (("single_c1", "single", 1), ("single_c32", "single", 32), ("batch64_c4", "batch", 4))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_model(folder: Path) -> Path:
    """The reference MLP (784-100-10), untrained: serving cost does not depend on the weights."""
    from mlp.checkpoint import save_checkpoint
    from mlp.config import Config
    from mlp.model import build_model

    cfg = Config.from_dict({"data": {"dataset": "mnist"}})
    return save_checkpoint(folder, build_model(cfg.model, seed=0), cfg, {"epoch": 0})


def payloads() -> dict[str, bytes]:
    from mlp.data import synthetic

    x, _ = synthetic(BATCH, seed=2)
    return {"single": json.dumps(x[0].tolist()).encode(),
            "batch": json.dumps({"instances": x.tolist()}).encode()}


def wait_http(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s}s")


async def _user(port: int, request: bytes, stop_at: float, warm_until: float,
                latencies: list[float], errors: list[int]) -> None:
    """One keep-alive connection sending back-to-back; a dropped connection counts as error 0 and reconnects."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while (now := time.perf_counter()) < stop_at:
            try:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                status = int(head[9:12])
            except (asyncio.IncompleteReadError, ConnectionError):
                status = 0
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            if now >= warm_until:
                latencies.append(time.perf_counter() - now)
                if status != 200:
                    errors.append(status)
    finally:
        writer.close()


def measure(port: int, body: bytes, concurrency: int, duration: float, warmup: float) -> dict[str, Any]:
    """Closed-loop load: ``concurrency`` connections each sending back-to-back for warmup + duration."""
    request = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body)) + body
    latencies: list[float] = []
    errors: list[int] = []

    async def run() -> None:
        start = time.perf_counter()
        await asyncio.gather(*(_user(port, request, start + warmup + duration, start + warmup, latencies, errors)
                               for _ in range(concurrency)))

    asyncio.run(run())
    lat = np.array(latencies) * 1000
    return {"requests_per_s": len(lat) / duration, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "requests": len(lat), "errors": len(errors)}


def measure_point(label: str, port: int, point: str, bodies: dict[str, bytes],
                  args: argparse.Namespace) -> dict[str, Any]:
    _, body, concurrency = next(p for p in POINTS if p[0] == point)
    result = measure(port, bodies[body], concurrency, args.duration, args.warmup)
    if body == "batch":
        result["images_per_s"] = result["requests_per_s"] * BATCH
    print(f"  {label:24s} {point:11s} {result['requests_per_s']:8.0f} req/s  p50 {result['p50_ms']:6.2f} ms  "
          f"p99 {result['p99_ms']:6.2f} ms  errors {result['errors']}", flush=True)
    return result


def start_peer(model: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "peer_fastapi.py"), "--model", str(model),
                             "--port", str(port)], cwd=ROOT)
    wait_http(f"http://127.0.0.1:{port}/healthz")
    return proc


def start_serve(model: Path, port: int, variant: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(VARIANT_ENV[variant])
    replicas = str(os.cpu_count() or 1)
    proc = subprocess.Popen([sys.executable, "-m", "serve", "--serve.checkpoint", str(model), "--serve.port",
                             str(port), "--serve.min_replicas", replicas, "--serve.max_replicas", replicas,
                             "--serve.access_log", "false"], cwd=ROOT, env=env)
    wait_http(f"http://127.0.0.1:{port}/readyz", timeout_s=180)
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def rows_for(server: str, rounds: list[dict[str, dict]]) -> list[dict]:
    """One row per (point, figure): medians over rounds, ratio = median of the per-round ratios."""
    rows = []
    for point, body, _ in POINTS:
        figure = "images_per_s" if body == "batch" else "requests_per_s"
        for key in (figure, "p50_ms", "p99_ms"):
            ours = [r["serve"][point][key] for r in rounds]
            theirs = [r["peer"][point][key] for r in rounds]
            rows.append({"server": server, "point": point, "figure": key, "value": float(np.median(ours)),
                         "peer": float(np.median(theirs)),
                         "ratio": float(np.median([a / b for a, b in zip(ours, theirs)])),
                         "better": "higher" if key == figure else "lower", "rounds": ours, "peer_rounds": theirs,
                         "errors": sum(r["serve"][point]["errors"] for r in rounds)})
    return rows


def write_results(rows: list[dict], alone: dict[str, dict], out: Path, command: str, duration: float) -> None:
    machine = {"machine": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
               "load_average": os.getloadavg()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve.json").write_text(json.dumps({**machine, "command": command, "duration_s": duration,
                                                "peer_alone": alone, "rows": rows}, indent=2))
    lines = [f"Serving benchmark: `{command}` on {machine['cpus']} CPUs ({duration:g} s per point). "
             "Values are medians over rounds; ratio = Ray Serve / plain FastAPI peer, the median of the "
             "per-round ratios (each round measures the peer, then Serve, point by point). For req/s and "
             "images/s higher is better, for latencies lower.", "",
             "| server | point | figure | value | peer | ratio |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['server']} | {r['point']} | {r['figure']} | {r['value']:.2f} | {r['peer']:.2f} | "
              f"{r['ratio']:.2f}x |" for r in rows]
    lines += ["", "The peer measured before any Ray cluster ran (an idle cluster costs the peer some CPU "
              "during the rounds): " + ", ".join(f"{p} {r['requests_per_s']:.0f} req/s p50 {r['p50_ms']:.2f} ms"
                                                 for p, r in alone.items()) + "."]
    (out / "serve.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description="Ray Serve endpoint vs plain FastAPI peer")
    parser.add_argument("--variants", default="project", help=f"comma list of {', '.join(VARIANT_ENV)}")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of peer and Serve per variant")
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each point")
    parser.add_argument("--model", help="model folder to serve (default: an untrained reference MLP)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANT_ENV:
            parser.error(f"unknown variant {v!r} (known: {', '.join(VARIANT_ENV)})")
    rounds: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else make_model(Path(tmp) / "model")
        bodies = payloads()
        peer_port, serve_port = free_port(), free_port()
        peer = start_peer(model, peer_port)
        try:
            print("peer alone", flush=True)
            alone = {p: measure_point("fastapi-peer", peer_port, p, bodies, args) for p, _, _ in POINTS}
            for variant in variants:
                proc = start_serve(model, serve_port, variant)
                try:
                    for round_no in range(1, args.rounds + 1):
                        print(f"{variant}: round {round_no}/{args.rounds}", flush=True)
                        result: dict[str, dict] = {"peer": {}, "serve": {}}
                        for point, _, _ in POINTS:  # alternate point by point: drifting load hits both
                            result["peer"][point] = measure_point("fastapi-peer", peer_port, point, bodies, args)
                            result["serve"][point] = measure_point(f"ray-serve-{variant}", serve_port, point,
                                                                   bodies, args)
                        rounds[variant].append(result)
                finally:
                    stop(proc)
        finally:
            stop(peer)
    rows = [row for v in variants for row in rows_for(f"ray-serve-{v}", rounds[v])]
    write_results(rows, alone, Path(args.out), " ".join(["python", "benchmarks/bench_serve.py"] + sys.argv[1:]),
                  args.duration)
    targets = {("single_c32", "requests_per_s"): (">=", 1.2), ("single_c1", "p50_ms"): ("<=", 1.0),
               ("batch64_c4", "images_per_s"): (">=", 2.0)}
    for row in rows:
        if (row["point"], row["figure"]) in targets:
            op, bound = targets[(row["point"], row["figure"])]
            met = row["ratio"] >= bound if op == ">=" else row["ratio"] <= bound
            print(f"{row['server']}: {row['point']} {row['figure']} = {row['value']:.2f} vs peer {row['peer']:.2f}"
                  f" -> ratio {row['ratio']:.2f}x (target {op} {bound}x: {'met' if met else 'NOT met'})")


if __name__ == "__main__":
    main()
