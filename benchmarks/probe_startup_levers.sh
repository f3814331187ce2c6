#!/bin/bash
# Ray's start-up settings against the default, in one run: fixed overhead (command start ->
# first epoch start), tail (last epoch -> exit) and wall time of `mlp-train`, 1 worker,
# 2 epochs of Fashion-MNIST, alternating plain / lever for two rounds.
#   bash benchmarks/probe_startup_levers.sh
# Levers: RAY_preload_python_modules (every Ray worker imports these at start) and
# RAY_enable_worker_prestart (Ray starts its worker pool before the first task).
set -u
cd "$(dirname "$0")/.."
declare -A LEVER=(
  [plain]=""
  [preload]="RAY_preload_python_modules=torch,mlp.loop,mlp.distributed.trainer"
  [prestart]="RAY_enable_worker_prestart=1"
)
for round in 1 2; do
  for mode in plain preload plain prestart; do
    d=$(mktemp -d)
    start=$(python -c "import time; print(time.time())")
    env ${LEVER[$mode]} python -m mlp.train --data.dataset fashion-mnist --train.epochs 2 \
        --run.name probe --run.storage_path "$d" >/dev/null 2>&1
    end=$(python -c "import time; print(time.time())")
    python - "$d" "$start" "$end" "$mode" <<'PY'
import json, sys
folder, start, end, mode = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
rows = [json.loads(line) for line in open(f"{folder}/probe/metrics.jsonl")]
first = rows[0]["timestamp"] - rows[0]["epoch_s"]
print(f"{mode:8s}  fixed overhead {first - start:5.1f} s  tail {end - rows[-1]['timestamp']:4.1f} s  wall {end - start:5.1f} s")
PY
    rm -rf "$d"
  done
done
