#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests: tests/slurm/cluster.sh up|down|install
#
#   install  apt-get the daemons (Debian's munge, slurmctld, slurmd, slurm-client), and
#            etcd-server for the etcd rendezvous test of tests/test_multinode.py
#   up       write slurm.conf into $MNIST_DDP_SLURM_DIR (default /tmp/mnist-ddp-slurm), start
#            munged, slurmctld and slurmd without systemd, and wait until the node is idle
#   down     stop the daemons by their pid files
#   munge    start munged (with a key) if it is not running; `up` does this first
#   common-conf  print the slurm.conf settings every test cluster shares
#
# Needs root. Prints `export SLURM_CONF=...` last on `up`: the client commands need it.
set -euo pipefail
dir=${MNIST_DDP_SLURM_DIR:-/tmp/mnist-ddp-slurm}
conf=$dir/slurm.conf

install() {
    export DEBIAN_FRONTEND=noninteractive
    # A mirror hiccup should not fail CI: try three times.
    for attempt in 1 2 3; do
        if apt-get update -qq && apt-get install -y -qq --no-install-recommends munge slurmctld slurmd slurm-client etcd-server >/dev/null; then
            return 0
        fi
        echo "cluster.sh: apt-get failed (attempt $attempt), retrying" >&2
        sleep 5
    done
    return 1
}

munge_up() {
    # munge: SLURM's authentication. It refuses to run as root or with loose permissions.
    mkdir -p /run/munge /var/lib/munge /var/log/munge /etc/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge /etc/munge
    chmod 0755 /run/munge
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    if ! pgrep -x munged >/dev/null; then
        runuser -u munge -- /usr/sbin/munged
    fi
}

common_conf() {
    # The settings every test cluster shares (tests/slurm/two_hosts.sh uses them too).
    cat <<'CONF'
SlurmUser=root
AuthType=auth/munge
# A requeued job may start again only after the credential lifetime (default 120 s); keep tests quick.
AuthInfo=cred_expire=5
# No systemd or cgroups here: track processes by parent id and bind no CPUs.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# Reject impossible requests at submission instead of leaving them pending forever.
EnforcePartLimits=ALL
ReturnToService=2
MpiDefault=none
JobRequeue=1
# A requeued job waits for the next scheduling pass (every 30 or 60 s by default): every 1-2 s here.
SchedulerParameters=bf_interval=1,sched_interval=2
# A requeued or cancelled job's processes get SIGKILL this long after SIGTERM (default 30 s): a rank
# blocked on a lost peer cannot act on SIGTERM, and the test would wait the whole default.
KillWait=5
CONF
}

up() {
    if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
        echo "cluster.sh: slurmctld or slurmd is already running; stop it first (cluster.sh down)" >&2
        return 1
    fi
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    munge_up
    local node
    node=$(slurmd -C | head -n1)
    cat >"$conf" <<CONF
ClusterName=mnistddp
SlurmctldHost=$(hostname -s)
$(common_conf)
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
$node
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
    export SLURM_CONF=$conf
    slurmctld -f "$conf"
    slurmd -f "$conf"
    for _ in $(seq 60); do
        if [ "$(sinfo -h -o %T 2>/dev/null)" = "idle" ]; then
            echo "export SLURM_CONF=$conf"
            return 0
        fi
        sleep 0.5
    done
    echo "cluster.sh: the node did not become idle; see $dir/log" >&2
    sinfo >&2 || true
    return 1
}

down() {
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
        if [ -f "$pidfile" ]; then
            kill "$(cat "$pidfile")" 2>/dev/null || true
        fi
    done
    for _ in $(seq 40); do
        pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || return 0
        sleep 0.25
    done
}

case "${1:-}" in
    install) install ;;
    munge) munge_up ;;
    common-conf) common_conf ;;
    up) up ;;
    down) down ;;
    *) echo "usage: $0 install|munge|common-conf|up|down" >&2; exit 2 ;;
esac
