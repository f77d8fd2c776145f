#!/usr/bin/env bash
# Two cluster nodes on one machine, for the multi-node tests: tests/slurm/two_hosts.sh COMMAND
#
#   up              a bridge in this namespace (mddp-br0, 10.213.0.1/24) and one network namespace
#                   per host (mddp-node1 10.213.0.11, mddp-node2 10.213.0.12), each with its loopback
#                   and a veth on the bridge; hosts files naming node1, node2 and this machine (the
#                   controller) in $MNIST_DDP_HOSTS_DIR (default /tmp/mnist-ddp-hosts)
#   slurm-up        a two-node SLURM cluster on those hosts: slurmctld here, one slurmd per host
#   run NAME CMD..  run CMD inside host NAME: its network, its hostname, its hosts file and its one
#                   CPU (node1 gets CPU 0, node2 CPU 1), as two one-CPU machines would be
#   power-cut NAME  SIGKILL every process inside host NAME, its slurmd included
#   slurmd NAME     start host NAME's slurmd (again, after a power cut)
#   down            stop the daemons by pid, then delete the namespaces, veths and bridge
#
# HOSTS_FILE=<file> with `run` uses another hosts file (the tests make one that maps a host's own
# name to 127.0.1.1, as Debian's installer does, to show that failure). Needs root, iproute2,
# util-linux; slurm-up needs tests/slurm/cluster.sh install.
set -euo pipefail
dir=${MNIST_DDP_HOSTS_DIR:-/tmp/mnist-ddp-hosts}
conf=$dir/slurm.conf
bridge=mddp-br0
subnet=10.213.0
controller=$(hostname -s)

address() { echo "$subnet.1${1#node}"; }  # node1 -> 10.213.0.11

run() {
    local name=$1
    shift
    local hosts=${HOSTS_FILE:-$dir/hosts}
    local cpu=$(( ${name#node} - 1 ))
    # nsenter, not `ip netns exec`: that remounts /sys, which hides /sys/fs/cgroup from slurmd.
    exec nsenter --net="/run/netns/mddp-$name" unshare --uts --mount --propagation private \
        taskset -c "$cpu" sh -c 'hostname "$0"; mount --bind "$1" /etc/hosts; shift; exec "$@"' \
        "$name" "$hosts" "$@"
}

up() {
    if [ -e /run/netns/mddp-node1 ] || ip link show "$bridge" >/dev/null 2>&1; then
        echo "two_hosts.sh: the hosts exist already; run '$0 down' first" >&2
        return 1
    fi
    mkdir -p "$dir"
    ip link add "$bridge" type bridge
    ip addr add "$subnet.1/24" dev "$bridge"
    ip link set "$bridge" up
    for name in node1 node2; do
        ip netns add "mddp-$name"
        ip link add "mddp-v${name#node}" type veth peer name eth0 netns "mddp-$name"
        ip link set "mddp-v${name#node}" master "$bridge"
        ip link set "mddp-v${name#node}" up
        ip -n "mddp-$name" addr add "$(address "$name")/24" dev eth0
        ip -n "mddp-$name" link set eth0 up
        ip -n "mddp-$name" link set lo up
    done
    printf '127.0.0.1 localhost\n%s.1 %s\n%s node1\n%s node2\n' \
        "$subnet" "$controller" "$(address node1)" "$(address node2)" >"$dir/hosts"
}

slurmd_start() {
    local name=$1
    mkdir -p "$dir/spool-$name"
    # slurmd forks into the background itself; it keeps the host's namespaces and CPU.
    (SLURM_CONF=$conf run "$name" slurmd -f "$conf" -N "$name")
}

slurm_up() {
    if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
        echo "two_hosts.sh: slurmctld or slurmd is already running; stop it first" >&2
        return 1
    fi
    mkdir -p "$dir/state" "$dir/log"
    "$(dirname "$0")/cluster.sh" munge
    cat >"$conf" <<CONF
ClusterName=mnistddp2
SlurmctldHost=$controller($subnet.1)
$("$(dirname "$0")/cluster.sh" common-conf)
# A lost node is noticed within seconds, not the default 5 minutes.
SlurmdTimeout=5
MessageTimeout=5
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool-%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
NodeName=node1 NodeAddr=$(address node1) CPUs=1 State=UNKNOWN
NodeName=node2 NodeAddr=$(address node2) CPUs=1 State=UNKNOWN
PartitionName=debug Nodes=node[1-2] Default=YES MaxTime=INFINITE State=UP
CONF
    export SLURM_CONF=$conf
    slurmctld -f "$conf"
    slurmd_start node1
    slurmd_start node2
    for _ in $(seq 80); do
        if [ "$(sinfo -h -o %T | sort -u | tr '\n' ' ')" = "idle " ]; then
            echo "export SLURM_CONF=$conf"
            return 0
        fi
        sleep 0.5
    done
    echo "two_hosts.sh: the nodes did not become idle; see $dir/log" >&2
    sinfo >&2 || true
    return 1
}

power_cut() {
    local pids
    pids=$(ip netns pids "mddp-$1" || true)
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086
        kill -9 $pids 2>/dev/null || true
    fi
}

stop_pidfile() {
    if [ -f "$1" ]; then
        kill "$(cat "$1")" 2>/dev/null || true
        rm -f "$1"
    fi
}

down() {
    stop_pidfile "$dir/slurmctld.pid"
    for name in node1 node2; do
        stop_pidfile "$dir/slurmd-$name.pid"
        [ -e "/run/netns/mddp-$name" ] && power_cut "$name"
    done
    for _ in $(seq 40); do
        pgrep -x slurmctld >/dev/null || break
        sleep 0.25
    done
    for name in node1 node2; do
        ip netns del "mddp-$name" 2>/dev/null || true
        ip link del "mddp-v${name#node}" 2>/dev/null || true
    done
    ip link del "$bridge" 2>/dev/null || true
}

case "${1:-}" in
    up) up ;;
    slurm-up) slurm_up ;;
    run) shift; run "$@" ;;
    power-cut) power_cut "$2" ;;
    slurmd) SLURM_CONF=$conf slurmd_start "$2" ;;
    down) down ;;
    *) echo "usage: $0 up|slurm-up|run NAME CMD...|power-cut NAME|slurmd NAME|down" >&2; exit 2 ;;
esac
