"""Several nodes for real: two hosts on this machine, each a network namespace with its own
address, host name, hosts file and CPU (tests/slurm/two_hosts.sh), torchrun across them with
launch/node.sh, and a two-node SLURM cluster running slurm/train.sbatch unchanged: completion,
a node lost mid-run, preemption, and the failures that must end in one line instead of a hang.
Every run is compared with a 2-rank torchrun --standalone run on one host by parameter hash.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, SMOKE_LONG, require
from slurm_jobs import final_hashes, job_fields, wait_for_end, wait_for_text, why_no_slurm

from mnist_ddp.fault_injection import PRINT_HASH_ENV

HOSTS = REPO / "tests" / "slurm" / "two_hosts.sh"
ARGS = SMOKE_LONG  # long enough to lose a node or preempt it between its first snapshot and its end
# What a test does once it sees the run's progress (scancel's signal, a second job's start) lands a
# variable while later: 10 ms more per step from step 40 (weights unchanged) keeps the run going.
SLOWER = {"MNIST_DDP_TEST_FAULT": "slow:0:40:0.01"}
TOOLS = ("ip", "nsenter", "unshare", "taskset", "mount")


def why_no_hosts() -> str | None:
    if os.geteuid() != 0:
        return "the two hosts are network namespaces, which need root"
    missing = [t for t in TOOLS if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()]
    return f"missing {', '.join(missing)} (iproute2, util-linux)" if missing else None


def leftovers() -> list[str]:
    """Namespaces, interfaces and daemons of the two hosts that still exist."""

    def output(*cmd: str) -> str:
        return subprocess.run(cmd, capture_output=True, text=True).stdout

    found = [n for n in output("ip", "netns", "list").split() if n.startswith("mddp-")]
    found += [w.rstrip(":").split("@")[0] for w in output("ip", "-o", "link", "show").split() if w.startswith("mddp-")]
    return found + [d for d in ("slurmctld", "slurmd") if output("pgrep", "-x", d)]


@pytest.fixture(scope="module")
def hosts(tmp_path_factory) -> dict[str, str]:
    """node1 and node2, up for the module and gone after it (also when a test fails)."""
    require(why_no_hosts(), "the multi-node tests")
    env = {**os.environ, "MNIST_DDP_HOSTS_DIR": str(tmp_path_factory.mktemp("hosts"))}
    subprocess.run([str(HOSTS), "down"], env=env, capture_output=True, timeout=60)  # a crashed run's leftovers
    up = subprocess.run([str(HOSTS), "up"], env=env, capture_output=True, text=True, timeout=60)
    assert up.returncode == 0, up.stderr
    try:
        yield env
    finally:
        subprocess.run([str(HOSTS), "down"], env=env, timeout=60)
        assert leftovers() == [], "two_hosts.sh down left these behind"


def job_env(hosts: dict[str, str], **extra: str) -> dict[str, str]:
    return {**hosts, "PYTHON": sys.executable, PRINT_HASH_ENV: "1", "PYTHONUNBUFFERED": "1", **extra}


def on_host(hosts: dict[str, str], name: str, command: list[str], log: Path, **env: str) -> subprocess.Popen:
    """Start ``command`` inside host ``name``, its output into ``log``."""
    with log.open("w") as out:
        return subprocess.Popen(
            [str(HOSTS), "run", name, *command], env=job_env(hosts, **env), stdout=out, stderr=subprocess.STDOUT
        )


def node_sh(hosts, tmp_path: Path, rdzv: str, extra: list[str], **env: str) -> list[tuple[int, str]]:
    """launch/node.sh on both hosts (1 rank each, rendezvous at ``rdzv``); each host's exit code and log."""
    settings = {"NNODES": "2", "NPROC": "1", "RDZV_ENDPOINT": rdzv, "RDZV_ID": tmp_path.name, **env}
    command = [str(REPO / "launch" / "node.sh"), *ARGS, f"run.dir={tmp_path / 'run'}", *extra]
    procs = {n: on_host(hosts, n, command, tmp_path / f"{n}.log", **settings) for n in ("node1", "node2")}
    results = []
    for name, proc in procs.items():
        proc.wait(timeout=240)
        results.append((proc.returncode, (tmp_path / f"{name}.log").read_text(errors="replace")))
    return results


def test_torchrun_across_two_hosts_matches_one_host_and_owns_its_rendezvous(hosts, two_rank_hash, tmp_path):
    # While the job trains, a second job on its rendezvous port is refused in one line, naming the first.
    second = threading.Thread(target=start_second_job, args=(hosts, tmp_path))
    second.start()
    results = node_sh(hosts, tmp_path, "node1:29400", [], **SLOWER)  # still training when the second one checks
    second.join()
    assert [code for code, _ in results] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    other = (tmp_path / "other.log").read_text()
    assert other == (
        f"error: port 29400 on node1 serves the rendezvous of job {tmp_path.name}; this job is another-job: give each"
        " job its own port (RDZV_ENDPOINT=node1:<free port>)\n"
    )
    assert not (tmp_path / "other").exists()
    assert [final_hashes(log) for _, log in results] == [{two_rank_hash}, {two_rank_hash}]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["world_size"], summary["epochs"], summary["threads_per_rank"]) == (2, 12, 1)
    assert sum("final test accuracy" in log for _, log in results) == 1  # one set of outputs, by rank 0


def start_second_job(hosts: dict[str, str], tmp_path: Path) -> None:
    """launch/node.sh on node2 with another RDZV_ID at the first job's endpoint, once that job trains."""
    deadline = time.monotonic() + 120
    while not (tmp_path / "run" / "metrics.jsonl").exists():  # its ranks have claimed the rendezvous
        assert time.monotonic() < deadline
        time.sleep(0.1)
    command = [str(REPO / "launch" / "node.sh"), *ARGS, f"run.dir={tmp_path / 'other'}"]
    settings = {"NNODES": "2", "NPROC": "1", "RDZV_ENDPOINT": "node1:29400", "RDZV_ID": "another-job"}
    on_host(hosts, "node2", command, tmp_path / "other.log", **settings).wait(timeout=60)


def test_a_rendezvous_nobody_opens_is_one_line_naming_it(hosts, tmp_path):
    started = time.monotonic()
    proc = on_host(
        hosts,
        "node2",
        [str(REPO / "launch" / "node.sh"), *ARGS, f"run.dir={tmp_path / 'run'}"],
        tmp_path / "node2.log",
        NNODES="2",
        NPROC="1",
        RDZV_ENDPOINT="node1:29499",
        RDZV_WAIT_SECONDS="4",  # a waiting line at 3 s, the error at 4
    )
    assert proc.wait(timeout=60) == 2
    log = (tmp_path / "node2.log").read_text()
    assert time.monotonic() - started < 30
    errors = [line for line in log.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: no rendezvous at node1:29499 (10.213.0.11) after 4 s (Connection refused); start launch/node.sh"
        " on node1 too, or check RDZV_ENDPOINT and that node1 is reachable from node2"
    ]
    assert "waiting for the rendezvous at node1:29499 (10.213.0.11): Connection refused" in log


def test_a_host_name_that_resolves_to_loopback_is_one_line_not_a_hang(hosts, tmp_path):
    # Debian's installer maps a machine's own name to 127.0.1.1: gloo would advertise that address.
    shared = Path(hosts["MNIST_DDP_HOSTS_DIR"]) / "hosts"
    for name in ("node1", "node2"):
        lines = [f"127.0.1.1 {name}" if line.endswith(f" {name}") else line for line in shared.read_text().splitlines()]
        (tmp_path / f"hosts.{name}").write_text("\n".join(lines) + "\n")
    started = time.monotonic()
    settings = {"NNODES": "2", "NPROC": "1", "RDZV_ENDPOINT": "node1:29401", "MAX_RESTARTS": "0"}
    command = [str(REPO / "launch" / "node.sh"), *ARGS, "dist.timeout_seconds=60", f"run.dir={tmp_path / 'run'}"]
    procs = {
        n: on_host(hosts, n, command, tmp_path / f"{n}.log", HOSTS_FILE=str(tmp_path / f"hosts.{n}"), **settings)
        for n in ("node1", "node2")
    }
    for name, proc in procs.items():
        assert proc.wait(timeout=120) != 0
        errors = [line for line in (tmp_path / f"{name}.log").read_text().splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, errors
        assert f"this node's host name {name} resolves to 127.0.1.1, a loopback address" in errors[0]
        assert "GLOO_SOCKET_IFNAME" in errors[0]
    assert time.monotonic() - started < 60  # well inside dist.timeout_seconds, not a wait for it


# --- the two-node SLURM cluster ----------------------------------------------------------------


@pytest.fixture(scope="module")
def slurm2(hosts) -> dict[str, str]:
    """slurmctld here, one slurmd in each host; the client commands' environment."""
    require(why_no_slurm(), "the two-node SLURM tests")
    up = subprocess.run([str(HOSTS), "slurm-up"], env=hosts, capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    return {**hosts, "SLURM_CONF": str(Path(hosts["MNIST_DDP_HOSTS_DIR"]) / "slurm.conf")}


def submit(slurm2: dict[str, str], out_dir: Path, **extra: str) -> tuple[str, Path]:
    """sbatch --nodes=2 slurm/train.sbatch, unchanged: one rank on each one-CPU node."""
    cmd = [
        "sbatch",
        "--parsable",
        "--nodes=2",
        "--gpus-per-node=0",
        "--cpus-per-task=1",
        "--time=10",
        f"--output={out_dir}/slurm-%x-%j.out",
        "slurm/train.sbatch",
        *ARGS,
    ]
    env = job_env(slurm2, NPROC="1", MNIST_DDP_RUNS=str(out_dir / "runs"), **extra)
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip().split(";")[0]
    return job_id, out_dir / f"slurm-mnist_ddp-{job_id}.out"


# Listens on every port that slurm/train.sbatch could derive from a job id (29400 + id % 1000).
HOLD_PORTS = """
import resource, socket, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (2048, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
held = []
for port in range(29400, 30400):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past an earlier test's TIME_WAIT
    try:
        s.bind(("0.0.0.0", port))
    except OSError:
        continue  # something listens there already: taken either way
    s.listen()
    held.append(s)
print("holding", flush=True)
time.sleep(600)
"""


def test_sbatch_on_two_nodes_completes_and_matches_one_host(slurm2, two_rank_hash, tmp_path):
    holder = on_host(slurm2, "node1", [sys.executable, "-c", HOLD_PORTS], tmp_path / "holder.log")
    try:
        wait_for_text(tmp_path / "holder.log", "holding", timeout=30)
        # A site file reading a variable that is not set, as module-load scripts do: it must not kill the job.
        site = tmp_path / "site.sh"
        site.write_text('echo "site set-up: ${MNIST_DDP_NOT_SET_ANYWHERE}done"\n')
        job_id, log_path = submit(slurm2, tmp_path, MNIST_DDP_SETUP=str(site))
        fields = wait_for_end(slurm2, job_id)
    finally:
        holder.kill()
    log = log_path.read_text(errors="replace")
    assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), log[-3000:]
    assert fields["NodeList"] == "node[1-2]"
    # Every port the job id could give was taken on node1: the batch script moved past them.
    assert "rendezvous node1:30400," in log
    assert final_hashes(log) == {two_rank_hash}
    summary = json.loads((tmp_path / "runs" / f"slurm-{job_id}" / "summary.json").read_text())
    # One CPU per task from SLURM: one thread per rank, with no train.threads given.
    assert (summary["world_size"], summary["threads_per_rank"], summary["backend"]) == (2, 1, "gloo")
    assert summary["test_examples"] == 360 and summary["test_accuracy"] > 0.9 and summary["epochs"] == 12
    assert "site set-up: done" in log and sum("final test accuracy" in line for line in log.splitlines()) == 1


def test_a_node_lost_mid_run_is_requeued_and_resumes_to_the_same_weights(slurm2, two_rank_hash, tmp_path):
    job_id, log_path = submit(slurm2, tmp_path)
    latest = tmp_path / "runs" / f"slurm-{job_id}" / "checkpoints" / "latest"
    deadline = time.monotonic() + 120
    while not latest.exists():
        assert time.monotonic() < deadline, log_path.read_text(errors="replace")[-3000:]
        time.sleep(0.2)
    assert "final test accuracy" not in log_path.read_text(errors="replace")  # lost before the end
    subprocess.run([str(HOSTS), "power-cut", "node2"], env=slurm2, check=True, timeout=30)
    # SLURM notices the silent node (SlurmdTimeout), and requeues the job until node2 is back.
    deadline = time.monotonic() + 90
    while int(job_fields(slurm2, job_id).get("Restarts", "0")) < 1:
        assert time.monotonic() < deadline, job_fields(slurm2, job_id)
        time.sleep(1)
    subprocess.run([str(HOSTS), "slurmd", "node2"], env=slurm2, check=True, timeout=30)
    fields = wait_for_end(slurm2, job_id)
    log = log_path.read_text(errors="replace")
    assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), log[-3000:]
    assert f"job {job_id} (restart 1)" in log and "resuming from" in log
    assert final_hashes(log.split(f"job {job_id} (restart 1)")[1]) == {two_rank_hash}


def test_preempting_a_two_node_job_stops_both_hosts_at_one_step(slurm2, two_rank_hash, tmp_path):
    job_id, log_path = submit(slurm2, tmp_path, **SLOWER)
    wait_for_text(log_path, "epoch  2/12")
    signal = subprocess.run(["scancel", "--signal=USR1", "--full", job_id], env=slurm2, capture_output=True, text=True)
    assert signal.returncode == 0, signal.stderr
    fields = wait_for_end(slurm2, job_id)
    log = log_path.read_text(errors="replace")
    assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), log[-3000:]
    assert int(fields["Restarts"]) == 1 and f"requeued SLURM job {job_id}" in log
    assert f"job {job_id} (restart 1)" in log and "resuming from" in log
    stops = sorted(line for line in log.splitlines() if ": stopping at global step " in line)
    step = stops[0].rsplit(" ", 1)[1]
    assert stops == [f"rank 0: stopping at global step {step}", f"rank 1: stopping at global step {step}"]
    assert final_hashes(log) == {two_rank_hash}
