#!/usr/bin/env bash
# Train on this machine with torchrun: one process per GPU, or NPROC CPU processes (default 2).
#   launch/local.sh [key=value ...]          e.g. launch/local.sh data.root=../shared/data/mnist
#   NPROC=4 launch/local.sh train.epochs=5   choose the process count yourself
#   MAX_RESTARTS=3 (default)                 times torchrun restarts the workers after a failure;
#                                            they resume from the newest snapshot in run.dir
set -euo pipefail
python=${PYTHON:-python}
# torchrun's agent forwards these signals to the workers, which save a snapshot and exit 75.
# SIGUSR1 is not among torchrun's defaults, and left unhandled it kills the agent outright
# (PET_SIGNALS_TO_HANDLE is torchrun's --signals-to-handle; torch releases without it ignore it).
export PET_SIGNALS_TO_HANDLE=${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}
if [ -z "${NPROC:-}" ]; then
    gpus=$("$python" -c 'import torch; print(torch.cuda.device_count())')
    NPROC=$(( gpus > 0 ? gpus : 2 ))
fi
# --standalone runs its own rendezvous on a free local port: no address or port to pick.
exec "$python" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" \
    --max-restarts="${MAX_RESTARTS:-3}" -m mnist_ddp.train "$@"
