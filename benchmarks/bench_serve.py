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

Where the time goes, in the same run:

* ``ray-serve-<variant>-direct`` (on unless ``--no-direct``): the same load sent to the
  replicas' own HTTP ports, past HAProxy, so the HAProxy hop has a figure of its own.
* CPU microseconds per answered request for every point, by part of the machine (peer
  processes, replicas, HAProxy, the rest of Ray, the load generator), from /proc: on
  two saturated cores, throughput is 2 cores divided by the total.
* ``--profile``: after the rounds, one peer worker and one replica sampled with py-spy
  at concurrency 32, each side's CPU per request split by the code it ran in (Ray, the
  web framework, the project, torch, asyncio, other).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from proc_cpu import ProcCpu, cpu_ticks, descendants

from mlp.distributed.rayenv import CLUSTER_ENV as SERVING_ENV

ROOT = Path(__file__).resolve().parent.parent

FAST_DRAIN = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2", "RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S": "2"}
VARIANT_ENV = {
    "default": {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0",
                "RAY_SERVE_HAPROXY_METRICS_ENABLED": "1", "RAY_worker_niceness": "15", **FAST_DRAIN},
    "project": dict(SERVING_ENV),
    # Levers measured against "project" (BENCHMARKS.md): HAProxy's thread count (Ray's default is 4).
    "haproxy-1-thread": {**SERVING_ENV, "RAY_SERVE_HAPROXY_NBTHREAD": "1"},
    "haproxy-2-threads": {**SERVING_ENV, "RAY_SERVE_HAPROXY_NBTHREAD": "2"},
}
BATCH = 64
POINTS = (("single_c1", "single", 1), ("single_c32", "single", 32), ("batch64_c4", "batch", 4))
CPU_GROUPS = ("peer", "replicas", "haproxy", "ray_other", "client", "other")
# Serve 2.60 gives each ingress replica an HTTP port of its own in this range (HAProxy forwards to it).
DIRECT_PORTS = range(int(os.environ.get("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", "30000")),
                     int(os.environ.get("RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT", "31000")))


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


def cpu_groups(snapshot: dict[int, ProcCpu], peer: int) -> dict[str, int]:
    """Clock ticks so far by part: the peer's processes, Serve's replicas, HAProxy, the rest of Ray, this client."""
    peer_tree = descendants(peer, snapshot)
    groups = dict.fromkeys(CPU_GROUPS, 0)
    for pid, proc in snapshot.items():
        if pid in peer_tree:
            group = "peer"
        elif pid == os.getpid():
            group = "client"
        elif "haproxy" in proc.command:
            group = "haproxy"
        elif proc.command.startswith("ray::ServeReplica"):
            group = "replicas"
        elif "ray" in proc.command:  # raylet, GCS, dashboard, Serve's controller, the `python -m serve` driver
            group = "ray_other"
        else:
            group = "other"
        groups[group] += proc.ticks
    return groups


def measure(ports: list[int], body: bytes, concurrency: int, duration: float, warmup: float,
            peer: int) -> dict[str, Any]:
    """Closed-loop load: ``concurrency`` connections, spread over ``ports``, each sending back-to-back for
    warmup + duration. The CPU every part of the machine used in the measured seconds, divided by the
    requests answered in them, says where each request's time goes (``cpu_us_per_request``)."""
    request = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body)) + body
    latencies: list[float] = []
    errors: list[int] = []
    ticks: list[dict[str, int]] = []

    async def sample_cpu(at: float) -> None:
        await asyncio.sleep(at - time.perf_counter())
        ticks.append(cpu_groups(cpu_ticks(), peer))

    async def run() -> None:
        start = time.perf_counter()
        await asyncio.gather(*(_user(ports[i % len(ports)], request, start + warmup + duration, start + warmup,
                                     latencies, errors) for i in range(concurrency)),
                             sample_cpu(start + warmup), sample_cpu(start + warmup + duration))

    asyncio.run(run())
    lat = np.array(latencies) * 1000
    hz = os.sysconf("SC_CLK_TCK")
    cpu = {group: (ticks[1][group] - ticks[0][group]) / hz * 1e6 / max(len(lat), 1) for group in CPU_GROUPS}
    return {"requests_per_s": len(lat) / duration, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "requests": len(lat), "errors": len(errors),
            "cpu_us_per_request": cpu}


def measure_point(label: str, ports: list[int], point: str, bodies: dict[str, bytes], peer: int,
                  args: argparse.Namespace) -> dict[str, Any]:
    _, body, concurrency = next(p for p in POINTS if p[0] == point)
    result = measure(ports, bodies[body], concurrency, args.duration, args.warmup, peer)
    if body == "batch":
        result["images_per_s"] = result["requests_per_s"] * BATCH
    cpu = result["cpu_us_per_request"]
    parts = " ".join(f"{group} {cpu[group]:.0f}" for group in CPU_GROUPS if cpu[group] >= 0.5)
    print(f"  {label:24s} {point:11s} {result['requests_per_s']:8.0f} req/s  p50 {result['p50_ms']:6.2f} ms  "
          f"p99 {result['p99_ms']:6.2f} ms  errors {result['errors']}  CPU us/request: {parts}", flush=True)
    return result


def direct_ports(expected: int, timeout_s: float = 60.0) -> list[int]:
    """The replicas' own HTTP ports: listening TCP sockets in ``DIRECT_PORTS`` (from /proc/net/tcp), once
    ``expected`` replicas listen (``/readyz`` answers as soon as the first one does)."""
    deadline = time.time() + timeout_s
    while True:
        ports = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                port, state = int(fields[1].rsplit(":", 1)[1], 16), fields[3]
                if state == "0A" and port in DIRECT_PORTS:  # 0A: LISTEN
                    ports.add(port)
        if len(ports) >= expected or time.time() > deadline:
            return sorted(ports)
        time.sleep(0.5)


# Who owns the code a sampled frame is in, by its file path: first match wins, the rest is "other".
CODE_OWNERS = (("ray", r"/site-packages/ray/"),
               ("web framework", r"/site-packages/(fastapi|starlette|uvicorn|pydantic|anyio|httptools|h11)/"),
               ("torch", r"/site-packages/torch/"), ("asyncio", r"/asyncio/|/uvloop/"),
               ("project", "^" + re.escape(str(ROOT)) + "/"))


def profile_point(label: str, pid: int, ports: list[int], body: bytes, concurrency: int, group: str,
                  peer: int, args: argparse.Namespace) -> dict[str, float]:
    """Sample ``pid`` (one peer worker or one replica) with py-spy while the point runs, and split its
    group's CPU per request by the owner of the code each sample was in (the innermost frame).

    A separate pass after the measured rounds: the sampler's own CPU would skew their figures.
    """
    with tempfile.NamedTemporaryFile(suffix=".txt") as raw:
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--duration",
                                str(round(args.warmup + args.duration)), "--rate", "200", "--format", "raw",
                                "--full-filenames", "--nonblocking", "--output", raw.name],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        result = measure(ports, body, concurrency, args.duration, args.warmup, peer)
        spy.wait(timeout=60)
        owners: dict[str, int] = {}
        for line in Path(raw.name).read_text().splitlines():
            stack, count = line.rsplit(" ", 1)
            path = stack.rsplit(";", 1)[-1].rsplit("(", 1)[-1]
            owner = next((name for name, pattern in CODE_OWNERS if re.search(pattern, path)), "other")
            owners[owner] = owners.get(owner, 0) + int(count)
    samples = sum(owners.values()) or 1
    cpu = result["cpu_us_per_request"][group]
    split = {owner: cpu * owners.get(owner, 0) / samples for owner, _ in CODE_OWNERS + (("other", ""),)}
    print(f"  {label:24s} profile: {result['requests_per_s']:.0f} req/s, {group} CPU {cpu:.0f} us/request = "
          + ", ".join(f"{owner} {us:.0f}" for owner, us in split.items()), flush=True)
    return {"server": label, "group": group, "requests_per_s": result["requests_per_s"], "cpu_us": cpu,
            "samples": samples, **split}


def profile_servers(variant: str, peer: subprocess.Popen, peer_port: int, serve_port: int, bodies: dict[str, bytes],
                    args: argparse.Namespace) -> list[dict]:
    """``profile_point`` for one peer worker, then one of the variant's replicas, at concurrency 32."""
    from serve.app import DEPLOYMENT_NAME

    snapshot = cpu_ticks()
    workers = [pid for pid in descendants(peer.pid, snapshot) if "spawn_main" in snapshot[pid].command]
    replicas = [pid for pid, proc in snapshot.items()
                if proc.command.startswith("ray::ServeReplica:") and proc.command.split()[0].endswith(DEPLOYMENT_NAME)]
    print(f"{variant}: profiling peer worker {workers[0]} and replica {replicas[0]}", flush=True)
    return [profile_point("fastapi-peer", workers[0], [peer_port], bodies["single"], 32, "peer", peer.pid, args),
            profile_point(f"ray-serve-{variant}", replicas[0], [serve_port], bodies["single"], 32, "replicas",
                          peer.pid, args)]


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


def cpu_rows(rounds: dict[str, list[dict[str, dict]]]) -> list[dict]:
    """Median CPU microseconds per answered request, by part, for the peer and each Serve server and point."""
    rows = []
    for server, server_rounds in rounds.items():
        sides = [("fastapi-peer", "peer")] if server == next(iter(rounds)) else []
        for name, side in sides + [(f"ray-serve-{server}", "serve")]:
            for point, _, _ in POINTS:
                cpu = {group: float(np.median([r[side][point]["cpu_us_per_request"][group] for r in server_rounds]))
                       for group in CPU_GROUPS}
                rows.append({"server": name, "point": point, "total": sum(cpu.values()), **cpu})
    return rows


def write_results(rows: list[dict], cpu: list[dict], profiles: list[dict], alone: dict[str, dict], out: Path,
                  command: str, duration: float) -> None:
    machine = {"machine": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
               "load_average": os.getloadavg()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve.json").write_text(json.dumps({**machine, "command": command, "duration_s": duration,
                                                "peer_alone": alone, "rows": rows,
                                                "cpu_us_per_request": cpu, "profiles": profiles}, indent=2))
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
    lines += ["", ("CPU microseconds per answered request (medians over rounds), by the part of the machine that "
                   "used them: the peer's uvicorn processes, Serve's replicas, HAProxy, the rest of Ray (raylet, "
                   "GCS, dashboard, controller, the serve driver), the load generator, anything else. An idle Ray "
                   "cluster runs during the peer's rounds too, so its columns there are that cluster's background."),
              "",
              "| server | point | total | " + " | ".join(CPU_GROUPS) + " |", "|---|---|---|" + "---|" * len(CPU_GROUPS)]
    lines += [f"| {r['server']} | {r['point']} | {r['total']:.0f} | " + " | ".join(f"{r[g]:.0f}" for g in CPU_GROUPS)
              + " |" for r in cpu]
    if profiles:
        owners = [owner for owner, _ in CODE_OWNERS] + ["other"]
        lines += ["", ("`--profile`: one peer worker and one replica sampled with py-spy at concurrency 32 (a pass of "
                       "its own after the rounds); their side's CPU per request split by the code each sample was "
                       "in, microseconds."), "",
                  "| server | req/s | CPU us/request | " + " | ".join(owners) + " |", "|---|---|---|" + "---|" * len(owners)]
        lines += [f"| {p['server']} | {p['requests_per_s']:.0f} | {p['cpu_us']:.0f} | "
                  + " | ".join(f"{p[o]:.0f}" for o in owners) + " |" for p in profiles]
    (out / "serve.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description="Ray Serve endpoint vs plain FastAPI peer")
    parser.add_argument("--variants", default="project", help=f"comma list of {', '.join(VARIANT_ENV)}")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of peer and Serve per variant")
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each point")
    parser.add_argument("--direct", action=argparse.BooleanOptionalAction, default=True,
                        help="also load the replicas' own HTTP ports, past HAProxy, in every round (variants "
                             "with RAY_SERVE_ENABLE_HA_PROXY=1): what the HAProxy hop costs per request")
    parser.add_argument("--profile", action="store_true",
                        help="after the rounds, sample one peer worker and one replica with py-spy at concurrency "
                             "32 and split each side's CPU per request by the code it ran (Ray, web framework, "
                             "project, torch, asyncio, other)")
    parser.add_argument("--model", help="model folder to serve (default: an untrained reference MLP)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANT_ENV:
            parser.error(f"unknown variant {v!r} (known: {', '.join(VARIANT_ENV)})")
    if args.profile and not shutil.which("py-spy"):
        parser.error("--profile samples the servers with py-spy, which is not on PATH: pip install py-spy")
    profiles: list[dict] = []
    servers = list(variants) + [f"{v}-direct" for v in variants
                                           if args.direct and VARIANT_ENV[v].get("RAY_SERVE_ENABLE_HA_PROXY") == "1"]
    rounds: dict[str, list[dict]] = {server: [] for server in servers}
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else make_model(Path(tmp) / "model")
        bodies = payloads()
        peer_port, serve_port = free_port(), free_port()
        peer = start_peer(model, peer_port)
        try:
            print("peer alone", flush=True)
            alone = {p: measure_point("fastapi-peer", [peer_port], p, bodies, peer.pid, args) for p, _, _ in POINTS}
            for variant in variants:
                proc = start_serve(model, serve_port, variant)
                endpoints = {variant: [serve_port]}
                if f"{variant}-direct" in rounds:
                    endpoints[f"{variant}-direct"] = direct_ports(expected=os.cpu_count() or 1)
                    print(f"{variant}: replicas' own ports {endpoints[f'{variant}-direct']}", flush=True)
                try:
                    for round_no in range(1, args.rounds + 1):
                        print(f"{variant}: round {round_no}/{args.rounds}", flush=True)
                        result = {server: {"peer": {}, "serve": {}} for server in endpoints}
                        for point, _, _ in POINTS:  # alternate point by point: drifting load hits both
                            peer_result = measure_point("fastapi-peer", [peer_port], point, bodies, peer.pid, args)
                            for server, ports in endpoints.items():
                                result[server]["peer"][point] = peer_result
                                result[server]["serve"][point] = measure_point(f"ray-serve-{server}", ports, point,
                                                                               bodies, peer.pid, args)
                        for server in endpoints:
                            rounds[server].append(result[server])
                    if args.profile:
                        profiles += profile_servers(variant, peer, peer_port, serve_port, bodies, args)
                finally:
                    stop(proc)
        finally:
            stop(peer)
    rows = [row for server in servers for row in rows_for(f"ray-serve-{server}", rounds[server])]
    write_results(rows, cpu_rows(rounds), profiles, alone, Path(args.out),
                  " ".join(["python", "benchmarks/bench_serve.py"] + sys.argv[1:]), args.duration)
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
