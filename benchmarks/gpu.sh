#!/usr/bin/env bash
# GPU timings on one CUDA device: the blog's schedule (batch 100, 50,000 images, SGD lr 0.01)
# and the default config, eager and with CUDA graphs. Prints microseconds per step, seconds per
# epoch and the projected time of the blog's 1000 epochs (500,000 steps).
#   bash benchmarks/gpu.sh [key=value ...]    e.g. data.root=/path/to/mnist
# EPOCHS (default 20) sets the epochs measured per run; FULL=1 also runs all 1000 blog epochs.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EPOCHS=${EPOCHS:-20}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'

report() {  # name, run folder, images per step
    "$PYTHON" - "$@" <<'PY'
import json, sys
from pathlib import Path
from mnist_ddp.bench import steady_samples_per_second
name, run, batch = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
rate = steady_samples_per_second(run)
steps_per_epoch = 50_000 // batch if "blog" in name else -(-60_000 // batch)
summary = json.loads((run / "summary.json").read_text())
print(f"{name:<28} {1e6 * batch / rate:8.1f} us/step {steps_per_epoch * batch / rate:7.3f} s/epoch"
      f"  1000 blog epochs: {1000 * 500 * batch / rate:6.1f} s  acc {100 * summary['test_accuracy']:.2f}%")
PY
}

run() {  # name, images per step, overrides...
    local name=$1 batch=$2
    shift 2
    "$PYTHON" -m mnist_ddp.train "run.dir=$OUT/$name" wandb.mode=disabled log.plots=false log.progress=false \
        checkpoint.every_steps=0 "$@" "${EXTRA[@]}" >"$OUT/$name.log" 2>&1 || { tail -5 "$OUT/$name.log"; return 1; }
    report "$name" "$OUT/$name" "$batch"
}

EXTRA=("$@")
BLOG=(--config configs/seed.yaml "train.epochs=$EPOCHS")
run blog-eager 100 "${BLOG[@]}"
run blog-cuda-graphs 100 "${BLOG[@]}" train.cuda_graphs=true
run default-eager 512 train.epochs=4
run default-cuda-graphs 512 train.epochs=4 train.cuda_graphs=true
run default-compile 512 train.epochs=4 train.compile=true
run default-bf16-graphs 512 train.epochs=4 train.bf16=true train.cuda_graphs=true
if [ "${FULL:-0}" = 1 ]; then
    start=$(date +%s.%N)
    run blog-1000-epochs 100 --config configs/seed.yaml train.epochs=1000 train.cuda_graphs=true
    echo "blog's 1000 epochs, wall time including start-up: $(echo "$(date +%s.%N) - $start" | bc) s"
fi
