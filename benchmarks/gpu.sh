#!/usr/bin/env bash
# GPU timings on one CUDA device, in one run: the blog's schedule (configs/seed.yaml: batch 100,
# 50,000 images, SGD) and the default config, eager and with CUDA graphs (the whole step as one
# graph), torch.compile, and fp32 and TF32 beside train.bf16=auto. Each row prints microseconds per
# step, samples/s, seconds per epoch, and the time the blog's 1000 epochs (50 million images)
# would take at that speed.
#   bash benchmarks/gpu.sh [key=value ...]        e.g. data.root=/path/to/mnist
# EPOCHS (default 20) sets the epochs measured per run. FULL=1 also runs the blog's 1000 epochs
# with graphs, and the default config to its first 98.0%, and prints the targets table beside
# same-run floors (the model's matmuls alone, and one replay of an empty graph). TARGETS_ONLY=1
# runs only what the targets need (default with graphs, the 1000 epochs, the first 98.0%).
# A row that fails prints FAIL and its last lines; the others still run. Each row is cut off
# after ROW_SECONDS (default 180; the 1000 epochs BLOG_SECONDS, default 300), so one slow row
# cannot take the whole run: the targets table prints from the rows that finished.
# DEVICE=cpu rehearses the script on a CPU (eager: graphs are CUDA's). Needs no bc or nvidia-smi.
# Test-only: MNIST_DDP_TEST_SLOW_ROW=ROW=SPEC sets MNIST_DDP_TEST_SLOW=SPEC for that row alone.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EPOCHS=${EPOCHS:-20}
DEVICE=${DEVICE:-cuda}
ROW_SECONDS=${ROW_SECONDS:-180}
BLOG_SECONDS=${BLOG_SECONDS:-300}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
EXTRA=("$@")
GRAPHS=(train.cuda_graphs=true)
if [ "$DEVICE" = cuda ]; then
    "$PYTHON" -c 'import torch; print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}, CUDA {torch.version.cuda}")'
else
    GRAPHS=()
    echo "DEVICE=$DEVICE: a rehearsal, every row eager"
fi

report() {  # name, run folder, images per step
    "$PYTHON" - "$@" <<'PY'
import json, sys
from pathlib import Path
from mnist_ddp.bench.rows import steady_samples_per_second
name, run, batch = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
rate = steady_samples_per_second(run)
summary = json.loads((run / "summary.json").read_text())
epoch_images = 50_000 if "blog" in name else 60_000
print(f"{name:<24} {1e6 * batch / rate:8.1f} us/step {rate:>12,.0f} samples/s {epoch_images / rate:7.3f} s/epoch"
      f"   blog's 1000 epochs: {1000 * 50_000 / rate:6.1f} s   acc {100 * summary['test_accuracy']:.2f}%"
      f"   wall {summary['wall_seconds']:.1f} s")
PY
}

run() {  # name, seconds allowed, images per step, overrides...
    local name=$1 limit=$2 batch=$3 slow= code
    shift 3
    case ${MNIST_DDP_TEST_SLOW_ROW:-} in "$name="*) slow=${MNIST_DDP_TEST_SLOW_ROW#*=} ;; esac
    # timeout's TERM goes to the run (it writes nothing half-way), then KILL 5 s later. In a
    # subshell whose stderr is dropped: only bash's "Killed" job line goes there, the run's own
    # output goes to its log.
    (MNIST_DDP_TEST_SLOW=$slow timeout --kill-after=5 "$limit" "$PYTHON" -m mnist_ddp.train "run.dir=$OUT/$name" \
        "train.device=$DEVICE" wandb.mode=disabled log.plots=false log.progress=false checkpoint.every_steps=0 \
        checkpoint.every_epochs=0 "$@" "${EXTRA[@]}" >"$OUT/$name.log" 2>&1; exit $?) 2>/dev/null
    code=$?
    if [ "$code" = 0 ]; then
        report "$name" "$OUT/$name" "$batch"
    elif [ "$code" = 124 ] || [ "$code" = 137 ]; then
        echo "cut off after $limit s" >"$OUT/$name.cut"
        echo "$name CUT OFF after $limit s (its limit; ROW_SECONDS or BLOG_SECONDS raise it)"
    else
        echo "$name FAIL (exit $code):"
        tail -3 "$OUT/$name.log" | sed 's/^/    /'
    fi
}

BLOG=(--config configs/seed.yaml "train.epochs=$EPOCHS" train.eval_every_epochs=1)
if [ "${TARGETS_ONLY:-0}" != 1 ]; then
    run blog-eager "$ROW_SECONDS" 100 "${BLOG[@]}"
    run blog-graphs "$ROW_SECONDS" 100 "${BLOG[@]}" "${GRAPHS[@]}"
    run default-eager "$ROW_SECONDS" 512 train.epochs=4
    run default-compile "$ROW_SECONDS" 512 train.epochs=4 train.compile=true
    run default-fp32-graphs "$ROW_SECONDS" 512 train.epochs=4 train.bf16=false "${GRAPHS[@]}"
    run default-tf32-graphs "$ROW_SECONDS" 512 train.epochs=4 train.bf16=false train.tf32=true "${GRAPHS[@]}"
fi
# train.bf16=auto: bf16 on capability >= 8.0 (mnist_ddp/model/precision.py: AUTO_BF16_ON_CUDA)
run default-graphs "$ROW_SECONDS" 512 train.epochs=4 "${GRAPHS[@]}"

if [ "${FULL:-0}" = 1 ] || [ "${TARGETS_ONLY:-0}" = 1 ]; then
    run blog-1000-epochs "$BLOG_SECONDS" 100 --config configs/seed.yaml "${GRAPHS[@]}"
    run default-to-98 "$ROW_SECONDS" 512 "${GRAPHS[@]}"
    "$PYTHON" - "$OUT" "$DEVICE" <<'PY'
import json, sys, time
from pathlib import Path
import torch
from mnist_ddp.bench.rows import steady_samples_per_second
from mnist_ddp.bench.workers import WIDTHS

out, device = Path(sys.argv[1]), sys.argv[2]
def floor_us(batch: int) -> float:
    """One step's matmuls alone (forward, and both backward products of every layer)."""
    layers = [(torch.randn(batch, i, device="cuda"), torch.randn(o, i, device="cuda"), torch.randn(batch, o, device="cuda"))
              for i, o in zip(WIDTHS, WIDTHS[1:])]
    def step():
        for x, w, dy in layers:
            x @ w.t(); dy @ w; dy.t() @ x
    for _ in range(20): step()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(200): step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / 200 * 1e6
if device == "cuda":
    empty = torch.cuda.CUDAGraph(); x = torch.zeros(1, device="cuda")
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        with torch.cuda.graph(empty): x.add_(1)
    torch.cuda.current_stream().wait_stream(s); torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(1000): empty.replay()
    torch.cuda.synchronize(); replay_us = (time.perf_counter() - t) / 1000 * 1e6
    print(f"\nfloors: matmuls alone {floor_us(100):.1f} us/step at batch 100, {floor_us(512):.1f} us/step at batch 512;"
          f" one replay of a one-kernel graph {replay_us:.1f} us")

def measured(name: str):
    """The row's summary, or why there is none (cut off, failed): rows that finished print."""
    run = out / name
    if (run / "summary.json").exists():
        return json.loads((run / "summary.json").read_text()), None
    return None, (out / f"{name}.cut").read_text().strip() if (out / f"{name}.cut").exists() else "failed"

rows = []
s, why = measured("blog-1000-epochs")
rows.append(("seed.yaml, 1000 epochs, graphs: wall", why or f"{s['wall_seconds']:.1f} s, {100 * s['test_accuracy']:.2f}%",
             "< 60 s, >= 97.4%", s is not None and s["wall_seconds"] < 60 and s["test_accuracy"] >= 0.974))
s, why = measured("default-graphs")
rate = steady_samples_per_second(out / "default-graphs") if s else 0
rows.append(("default, graphs: samples/s", why or f"{rate:,.0f}", ">= 2,000,000", rate >= 2_000_000))
s, why = measured("default-to-98")
t = s["seconds_to_accuracy"]["0.980"] if s else None
rows.append(("default: first 98.0%, from start", why or ("never" if t is None else f"{t:.1f} s"), "< 5 s",
             t is not None and t < 5))
print(f"\n{'target':<40} {'measured':>22} {'goal':>18}  met")
for name, got, goal, ok in rows:
    print(f"{name:<40} {got:>22} {goal:>18}  {'yes' if ok else 'NO'}")
PY
fi
