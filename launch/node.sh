#!/usr/bin/env bash
# One node's share of a multi-node job: start torchrun here and meet the other nodes at a
# shared rendezvous. slurm/train.sbatch runs this once per node through srun; by hand, run it
# on every node with the same RDZV_ENDPOINT and RDZV_ID.
#
#   NNODES       nodes in the job            (default: $SLURM_NNODES, else 1); MIN:MAX for an
#                elastic job, which goes on with as few as MIN nodes and takes in up to MAX (every
#                world size in between must be at most the global batch: checked here)
#   RDZV_LAST_CALL_SECONDS  an elastic job's wait for more nodes once MIN have joined (default 10)
#   RDZV_KEEP_ALIVE_SECONDS how often each node's agent beats in the rendezvous (default 5); a node
#                that misses 3 beats is dropped, and the others form a group without it
#   NPROC        processes on this node      (default: GPUs on this node, else 2)
#   RDZV_ENDPOINT host:port of the rendezvous (default: first host of the SLURM job, port 29400)
#   RDZV_BACKEND c10d (default: the endpoint's node hosts the rendezvous, so losing that node ends
#                the job) or etcd-v2 (RDZV_ENDPOINT is an etcd server with its v2 API on, e.g.
#                etcd --enable-v2; no training node is then special; needs pip install 'mnist_ddp[etcd]')
#   RDZV_ID      the job's id, the same on every node and different for every job sharing a
#                rendezvous host (default: $SLURM_JOB_ID, else "mnist_ddp")
#   MAX_RESTARTS times torchrun restarts the workers after a failure (default 3); they resume
#                from the newest snapshot in run.dir
#   RDZV_WAIT_SECONDS  how long a node waits for the rendezvous to open (default 120)
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "$0")/common.sh"
nnodes=${NNODES:-${SLURM_NNODES:-1}}
if ! [[ $nnodes =~ ^[0-9]+(:[0-9]+)?$ ]]; then
    echo "error: NNODES=$nnodes is not a number of nodes (N) or a range (MIN:MAX); set it to one, e.g. 2 or 1:2" >&2
    exit 2
fi
min_nodes=${nnodes%%:*}
max_nodes=${nnodes##*:}
whole_number NNODES "$min_nodes" 1
whole_number RDZV_LAST_CALL_SECONDS "${RDZV_LAST_CALL_SECONDS:-10}" 0
whole_number RDZV_KEEP_ALIVE_SECONDS "${RDZV_KEEP_ALIVE_SECONDS:-5}" 1
if (( 10#$min_nodes > 10#$max_nodes )); then
    echo "error: NNODES=$nnodes: the minimum is above the maximum; give MIN:MAX, e.g. NNODES=1:$min_nodes" >&2
    exit 2
fi
# Every world size the job may take after a membership change: one the batch cannot cover is
# refused now, not by every worker after the change.
check_config "$((min_nodes * NPROC)):$((max_nodes * NPROC)):$NPROC" "$@"
if [ -z "${RDZV_ENDPOINT:-}" ]; then
    if [ -n "${SLURM_JOB_NODELIST:-}" ]; then
        head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
    else
        head=127.0.0.1
    fi
    RDZV_ENDPOINT="$head:29400"
fi
rdzv_id=${RDZV_ID:-${SLURM_JOB_ID:-mnist_ddp}}
backend=${RDZV_BACKEND:-c10d}
case $backend in
c10d)
    # The c10d rendezvous needs no etcd: the agent on the endpoint's host serves it. Every other
    # node waits here until it listens, saying so, and gives up with one line after RDZV_WAIT_SECONDS.
    # Whatever listens there must then be a torchrun rendezvous that no other job uses: a foreign
    # service on the port, or another job's store, is one line here instead of a hang or a shared store.
    "$python" -m mnist_ddp.parallel.rendezvous "$RDZV_ENDPOINT" "${RDZV_WAIT_SECONDS:-120}" "$rdzv_id" || exit 2
    # The workers claim that store for this job (torchrun's agents use it all run long): a job
    # started later on the same port finds this job's id there and refuses.
    export MNIST_DDP_RDZV_ENDPOINT=$RDZV_ENDPOINT
    ;;
etcd-v2)
    if ! "$python" -c "import etcd" 2>/dev/null; then
        echo "error: RDZV_BACKEND=etcd-v2 needs the python-etcd package; install it with pip install 'mnist_ddp[etcd]'" >&2
        exit 2
    fi
    # The rendezvous lives in etcd, under this job's RDZV_ID: wait for the server, as for a c10d endpoint.
    "$python" -m mnist_ddp.parallel.rendezvous --etcd "$RDZV_ENDPOINT" "${RDZV_WAIT_SECONDS:-120}" || exit 2
    ;;
*)
    echo "error: RDZV_BACKEND=$backend is not a rendezvous backend; set it to c10d (the default) or etcd-v2" >&2
    exit 2
    ;;
esac
if (( 10#$min_nodes < 10#$max_nodes )); then
    # torchrun's agents share their rendezvous store with the workers, but an agent that was
    # rank 0 before a membership change does not publish its address in the new round, and a
    # node joining then waits for it until the join timeout (pytorch/pytorch#135712). Without
    # sharing, every round's rank 0 names a fresh store for its workers.
    export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
fi
exec "$python" -m mnist_ddp.parallel.torchrun \
    --nnodes="$nnodes" \
    --rdzv-conf="last_call_timeout=${RDZV_LAST_CALL_SECONDS:-10},keep_alive_interval=${RDZV_KEEP_ALIVE_SECONDS:-5},keep_alive_max_attempt=3" \
    --nproc_per_node="$NPROC" \
    --rdzv_backend="$backend" \
    --rdzv_endpoint="$RDZV_ENDPOINT" \
    --rdzv_id="$rdzv_id" \
    --max-restarts="${MAX_RESTARTS:-3}" \
    -m mnist_ddp.train "$@"
