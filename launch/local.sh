#!/usr/bin/env bash
# Train on this machine with torchrun: one process per GPU, or NPROC CPU processes (default 2).
#   launch/local.sh [key=value ...]          e.g. launch/local.sh data.root=../shared/data/mnist
#   NPROC=4 launch/local.sh train.epochs=5   choose the process count yourself
#   MAX_RESTARTS=3 (default)                 times torchrun restarts the workers after a failure;
#                                            they resume from the newest snapshot in run.dir
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "$0")/common.sh"
check_config "$NPROC" "$@"
# --standalone runs its own rendezvous on a free local port: no address or port to pick.
exec "$python" -m mnist_ddp.parallel.torchrun --standalone --nproc_per_node="$NPROC" \
    --max-restarts="${MAX_RESTARTS:-3}" -m mnist_ddp.train "$@"
