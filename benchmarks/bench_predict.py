"""``mlp predict`` (batch inference with Ray Data) on one node and on two nodes, side by side in one run.

    python benchmarks/bench_predict.py [--copies 120] [--batch-size 256] [--rounds 1]

The table: scikit-learn's digits (1,797 rows of 64 pixel columns) repeated ``--copies`` times
with an ``id`` column, as 8 Parquet files (215,640 rows at the default), in a folder every
node sees. The model: a 64-64-10 MLP trained on digits with the plain loop (no Ray) and
promoted into a registry in the same folder, so the timing holds no training.

Both clusters are ``tests/multinode``'s ``TwoNodeCluster`` (a head and a second node with a
private disk, ``ray start --block`` each, stopped by pid; needs root and util-linux), so the
same Ray processes run in both cases and only where the CPUs are differs:

- one node: the head has 2 CPUs, the second node 0 (it runs nothing of the job);
- two nodes: 2 CPUs each.

``mlp predict`` keeps one CPU per node for Ray Data's read and write tasks and scores with one
actor per other CPU (``serve.batch.actor_pool``): one actor on one node, then one on each node.
The figure is the rows/s that ``mlp predict`` prints: input read to output written, actor
start-up included, cluster start-up and the driver's imports not. Which node each scoring actor
ran on is read from Ray's State API after each run.

Writes ``benchmarks/results/predict.json`` (one row per run, then the ratio) and
``benchmarks/results/predict.md``. On one machine both "nodes" share its cores: the ratio says
what the second node's actor adds there, not what a second machine would.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.datasets import load_digits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.multinode: the two-node harness

from mlp import registry
from mlp.checkpoint import save_checkpoint
from mlp.config import Config
from mlp.data import resolve_data
from mlp.distributed import rayenv
from mlp.loop import fit, prepare
from tests.multinode.cluster import TwoNodeCluster

RESULTS = Path(__file__).parent / "results"
FILES = 8
MODEL = "digits"
SCORED = re.compile(r"^scored (\d+) rows with \S+ in ([0-9.]+) s \(([0-9,]+) rows/s\)", re.MULTILINE)
LAYOUTS = {"1 node": (2, 0), "2 nodes": (2, 2)}  # (head CPUs, second node's CPUs)


def make_inputs(folder: Path, copies: int) -> tuple[Path, Path, int]:
    """(the table's folder, the registry, rows): digits repeated ``copies`` times, and a model promoted."""
    digits = load_digits(as_frame=True).frame
    source = folder / "digits.parquet"
    digits.to_parquet(source)
    cfg = resolve_data(Config.from_dict({
        "data": {"source": str(source), "label": "target"}, "model": {"hidden_sizes": [64]},
        "optim": {"name": "adam", "lr": 0.003}, "train": {"epochs": 10, "batch_size": 32},
        "registry": {"path": str(folder / "registry"), "model_name": MODEL}}))
    model, optimizer, data, state = prepare(cfg, torch.device("cpu"))
    fit(cfg, model, optimizer, data, state, lambda *_: None)
    checkpoint = save_checkpoint(folder / "checkpoint", model, cfg, {"epoch": cfg.train.epochs})
    registry.promote(cfg.registry.path, MODEL, checkpoint, {}, registry.make_provenance(cfg, checkpoint))
    rows = pd.concat([digits.drop(columns=["target"])] * copies, ignore_index=True)
    rows["id"] = np.arange(len(rows))
    table = folder / "table"
    table.mkdir()
    step = -(-len(rows) // FILES)
    for i in range(FILES):
        rows.iloc[i * step:(i + 1) * step].to_parquet(table / f"part-{i:02d}.parquet", index=False)
    return table, folder / "registry", len(rows)


def score(cluster: TwoNodeCluster, table: Path, reg: Path, output: Path, batch_size: int) -> dict[str, Any]:
    """One ``mlp predict`` run on ``cluster``: its own figures, the whole command's wall time, and the
    scoring actors per node (State API)."""
    started = time.monotonic()
    proc = cluster.run_cli("serve.predict", "--registry.path", str(reg), "--registry.model_name", MODEL,
                           "--input", str(table), "--output", str(output), "--batch-size", str(batch_size),
                           timeout_s=900)
    wall = time.monotonic() - started
    found = SCORED.search(proc.stdout)
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"mlp predict failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    names = {cluster.head.node_id: "head", cluster.worker.node_id: "second"}
    actors = Counter(names.get(a["node_id"], "?") for a in cluster.actors() if "ScoreBatch" in a["class_name"])
    return {"rows": int(found.group(1)), "seconds": float(found.group(2)),
            "rows_per_s": int(found.group(3).replace(",", "")), "wall_s": wall, "actors": dict(actors)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=120, help="times the 1,797 digits rows are repeated")
    parser.add_argument("--batch-size", type=int, default=256, help="mlp predict --batch-size")
    parser.add_argument("--rounds", type=int, default=1, help="runs per layout, alternating the layouts")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_predict.py starts tests/multinode's two-node cluster, which needs root (a private tmpfs)")

    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        table, reg, n = make_inputs(Path(tmp), args.copies)
        print(f"{n:,} rows in {FILES} Parquet files", flush=True)
        for round_no in range(args.rounds):
            # Alternate which layout goes first: on a shared machine the speed drifts within minutes.
            order = list(LAYOUTS) if round_no % 2 == 0 else list(reversed(LAYOUTS))
            for layout in order:
                head_cpus, second_cpus = LAYOUTS[layout]
                with TwoNodeCluster(head_cpus=head_cpus, worker_cpus=second_cpus, env=rayenv.CLUSTER_ENV,
                                    object_store_mb=512) as cluster:
                    run = score(cluster, table, reg, Path(tmp) / f"out-{round_no}-{layout[0]}", args.batch_size)
                print(f"{layout}: {run['rows']:,} rows in {run['seconds']:.1f} s = {run['rows_per_s']:,} rows/s "
                      f"(command {run['wall_s']:.1f} s); scoring actors per node {run['actors']}", flush=True)
                rows.append({"machine": machine, "layout": layout, "cpus": f"{head_cpus} + {second_cpus}",
                             "round": round_no, "batch_size": args.batch_size,
                             "command": f"mlp predict --input <{FILES} Parquet files> --batch-size {args.batch_size}",
                             **run})
    one = statistics.median(r["rows_per_s"] for r in rows if r["layout"] == "1 node")
    two = statistics.median(r["rows_per_s"] for r in rows if r["layout"] == "2 nodes")
    print(f"2 nodes / 1 node: {two / one:.2f}x rows/s", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "predict.json").write_text(json.dumps(
        rows + [{"machine": machine, "figure": "rows/s, 2 nodes / 1 node (medians)", "ratio": two / one}], indent=2))
    table_md = [("| machine | layout | CPUs (head + second) | rows | seconds | rows/s | command wall s "
                "| scoring actors per node |"), "|---|---|---|---|---|---|---|---|"]
    table_md += [f"| {r['machine']} | {r['layout']} | {r['cpus']} | {r['rows']:,} | {r['seconds']:.1f} "
                 f"| {r['rows_per_s']:,} | {r['wall_s']:.1f} | {r['actors']} |" for r in rows]
    table_md.append(f"\nrows/s, 2 nodes / 1 node (medians): **{two / one:.2f}x**")
    (RESULTS / "predict.md").write_text("\n".join(table_md) + "\n")
    print("\n".join(table_md))


if __name__ == "__main__":
    main()
