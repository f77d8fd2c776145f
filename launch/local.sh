#!/usr/bin/env bash
# Train on this machine with torchrun: one process per GPU, or NPROC CPU processes (default 2).
#   launch/local.sh [key=value ...]          e.g. launch/local.sh data.root=../shared/data/mnist
#   NPROC=4 launch/local.sh train.epochs=5   choose the process count yourself
set -euo pipefail
python=${PYTHON:-python}
if [ -z "${NPROC:-}" ]; then
    gpus=$("$python" -c 'import torch; print(torch.cuda.device_count())')
    NPROC=$(( gpus > 0 ? gpus : 2 ))
fi
# --standalone runs its own rendezvous on a free local port: no address or port to pick.
exec "$python" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" -m mnist_ddp.train "$@"
