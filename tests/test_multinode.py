"""Several nodes for real: two hosts on this machine, each a network namespace with its own
address, host name, hosts file and CPU (tests/slurm/two_hosts.sh), torchrun across them with
launch/node.sh, and a two-node SLURM cluster running slurm/train.sbatch unchanged: completion,
a node lost mid-run, preemption, and the failures that must end in one line instead of a hang.
Every run is compared with a 2-rank torchrun --standalone run on one host by parameter hash.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from conftest import CONFIGS, REPO, SMOKE_LONG, require
from slurm_jobs import final_hashes, job_fields, wait_for_end, wait_for_text, why_no_slurm

from mnist_ddp.base.fault_injection import PRINT_HASH_ENV, SAMPLE_LOG_ENV
from mnist_ddp.config.loading import load_config
from mnist_ddp.data.order import epoch_permutation
from mnist_ddp.data.splits import load_splits

HOSTS = REPO / "tests" / "slurm" / "two_hosts.sh"
ARGS = SMOKE_LONG  # long enough to lose a node or preempt it between its first snapshot and its end
# What a test does once it sees the run's progress (scancel's signal, a second job's start) lands a
# variable while later: 10 ms more per step from step 40 (weights unchanged) keeps the run going.
SLOWER = {"MNIST_DDP_TEST_FAULT": "slow:0:40:0.01"}
# Half as long, for the tests that lose a node at the first snapshot (step 20 of 138) and need no more.
SHORT = [*ARGS, "train.epochs=6"]
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
    named = []
    for name, proc in procs.items():
        assert proc.wait(timeout=120) != 0
        errors = [line for line in (tmp_path / f"{name}.log").read_text().splitlines() if line.startswith("error: ")]
        # The first node to find it stops its torchrun, and with it maybe the other node's rank
        # before that one checks: one line on each node that got that far.
        assert len(errors) <= 1, errors
        for line in errors:
            assert f"this node's host name {name} resolves to 127.0.1.1, a loopback address" in line
            assert "GLOO_SOCKET_IFNAME" in line
            named.append(name)
    assert named, "neither node named its loopback host name"
    assert time.monotonic() - started < 60  # well inside dist.timeout_seconds, not a wait for it


# --- elastic membership: NNODES=MIN:MAX -------------------------------------------------------

# A lost node is dropped after 3 missed beats of 1 s, and a group forms 2 s after its first node.
ELASTIC = {"NNODES": "1:2", "NPROC": "1", "RDZV_LAST_CALL_SECONDS": "2", "RDZV_KEEP_ALIVE_SECONDS": "1"}


def elastic_args(real_mnist: Path) -> list[str]:
    """The default job for 3 epochs on real MNIST (10,000 test images: 0.2% is 20 of them), 118 steps an epoch,
    with SGD and momentum: 1 and 2 ranks add a step's gradients in different orders, and AdamW's
    division by the root of the running square amplifies those rounding differences into
    +-0.1-0.2% of final accuracy (measured), the whole margin; under SGD they stay below 0.05%."""
    sgd = ["train.optimizer=sgd", "train.lr=0.05", "train.momentum=0.9", "train.weight_decay=0"]
    return [f"data.root={real_mnist}", "train.epochs=3", *sgd, "checkpoint.every_steps=20", "log.plots=false"]


@pytest.fixture(scope="module")
def mnist_two_rank_summary(real_mnist, tmp_path_factory) -> dict:
    """The summary of the same job on 2 ranks under torchrun --standalone, uninterrupted."""
    folder = tmp_path_factory.mktemp("mnist-two-rank")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mnist_ddp.train"]
    result = subprocess.run(
        [*cmd, *elastic_args(real_mnist), f"run.dir={folder / 'run'}"], cwd=folder, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((folder / "run" / "summary.json").read_text())


@dataclass(frozen=True)
class Step:
    """One rank's line in the sample log: a step it trained and the images it took."""

    time: float
    step: int
    world_size: int
    rank: int
    images: tuple[int, ...]


def trained_steps(folder: Path) -> list[Step]:
    """Every step every rank logged (MNIST_DDP_TEST_SAMPLE_LOG), in the order they ended."""
    steps = []
    for path in folder.glob("*.txt"):
        for line in path.read_text().splitlines():
            when, step, world_size, rank, images = line.split()
            taken = () if images == "-" else tuple(map(int, images.split(",")))
            steps.append(Step(float(when), int(step), int(world_size), int(rank), taken))
    return sorted(steps, key=lambda s: s.time)


def final_trajectory(steps: list[Step]) -> dict[int, list[Step]]:
    """For each global step, the ranks' lines of its last execution: a step trained again after a
    resume replaces the lines of the group that trained it before."""
    final: dict[int, list[Step]] = {}
    for s in steps:
        group = final.get(s.step, [])
        if any(g.world_size != s.world_size or g.rank == s.rank for g in group):
            group = []  # a new execution of this step
        final[s.step] = [*group, s]
    return final


def newest_snapshot_step(run_dir: Path) -> int:
    latest = run_dir / "checkpoints" / "latest"
    return int(latest.read_text().strip().split("_")[-1].split(".")[0]) if latest.exists() else 0


def finished_run(run_dir: Path) -> tuple[list[int], dict]:
    """The epochs that metrics.jsonl records, in order, and summary.json."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["epoch"] for r in records], json.loads((run_dir / "summary.json").read_text())


def wait_until(condition, what: str, logs: list[Path], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in logs if p.exists())
            raise AssertionError(f"{what}: not within {timeout} s\n{tails}")
        time.sleep(0.1)


def test_an_elastic_job_loses_a_node_grows_back_and_finishes_alone_on_every_image_once(
    hosts, real_mnist, mnist_two_rank_summary, tmp_path
):
    samples, run_dir = tmp_path / "samples", tmp_path / "run"
    samples.mkdir()
    settings = {
        **ELASTIC,
        "RDZV_ENDPOINT": "node1:29402",
        "RDZV_ID": tmp_path.name,
        SAMPLE_LOG_ENV: str(samples),
        "MNIST_DDP_TEST_FAULT": "slow:0:0:0.02",  # 20 ms more per step, weights unchanged: time for three changes
    }
    command = [str(REPO / "launch" / "node.sh"), *elastic_args(real_mnist), f"run.dir={run_dir}"]
    logs = [tmp_path / f"{n}.log" for n in ("node1", "node2", "node2-again")]
    node1 = on_host(hosts, "node1", command, logs[0], **settings)
    on_host(hosts, "node2", command, logs[1], **settings)

    def steps_at(world_size: int, after: float) -> list[int]:
        return [s.step for s in trained_steps(samples) if s.world_size == world_size and s.time > after]

    # 1. Lose node2 after the first snapshot: node1 goes on alone from it.
    wait_until(lambda: newest_snapshot_step(run_dir) > 0, "a first snapshot", logs)
    lost = time.time()
    subprocess.run([str(HOSTS), "power-cut", "node2"], env=hosts, check=True, timeout=30)
    wait_until(lambda: len(steps_at(1, lost)) >= 5, "node1 training alone", logs)
    # 2. Start node2 again: the group grows back to two ranks at the next membership change.
    back = time.time()
    on_host(hosts, "node2", command, logs[2], **settings)
    wait_until(lambda: newest_snapshot_step(run_dir) > min(steps_at(2, back), default=1e9), "a regrown snapshot", logs)
    # 3. Lose node2 again: node1 finishes the run alone.
    lost_again = time.time()
    subprocess.run([str(HOSTS), "power-cut", "node2"], env=hosts, check=True, timeout=30)
    assert node1.wait(timeout=180) == 0, logs[0].read_text(errors="replace")[-3000:]
    log = logs[0].read_text(errors="replace")

    # Every epoch once, and the accuracy of the uninterrupted two-rank run.
    epochs, summary = finished_run(run_dir)
    cfg = load_config(CONFIGS / "default.yaml", ["train.epochs=3"])
    assert epochs == list(range(1, cfg.train.epochs + 1))
    assert summary["world_size"] == 1 and summary["epochs"] == cfg.train.epochs
    assert abs(summary["test_accuracy"] - mnist_two_rank_summary["test_accuracy"]) <= 0.002
    assert log.count("resuming from") == 3 and "final test accuracy" in log

    steps = trained_steps(samples)
    first_alone = min(s.time for s in steps if s.world_size == 1 and s.time > lost)
    first_regrown = min(s.time for s in steps if s.world_size == 2 and s.time > back)
    print(f"node lost: 1 rank trains {first_alone - lost:.1f} s later; back: 2 ranks {first_regrown - back:.1f} s on")
    assert first_alone - lost < 30  # 3 missed beats, the last call, a worker's start and resume: ~10 s
    # Growing back lost no work: the regrown group went on from the step node1 had reached alone.
    regrown = steps_at(2, back)
    alone = [s.step for s in steps if s.world_size == 1 and lost < s.time < lost_again]
    assert min(regrown) == max(alone) + 1, (sorted(set(alone))[-3:], sorted(set(regrown))[:3])
    assert (min(alone) - 1) % 20 == 0  # the node loss went back to a snapshot (checkpoint.every_steps=20)
    assert any(s.world_size == 1 and s.time > lost_again for s in steps)

    # Count the images: each step of the finished run, as last trained, took exactly its global
    # batch, the next 64 images of its epoch's permutation (the last step what is left), so every
    # epoch trained every image once, at 1 rank or 2.
    n = len(load_splits(replace(cfg.data, root=str(real_mnist)), cfg.seed).train_labels)
    batch, steps_per_epoch = cfg.train.batch_size, -(-n // cfg.train.batch_size)
    final = final_trajectory(steps)
    assert sorted(final) == list(range(1, cfg.train.epochs * steps_per_epoch + 1))
    for step, group in final.items():
        world_size = group[0].world_size
        assert sorted(g.rank for g in group) == list(range(world_size)), (step, group)
        epoch, position = divmod(step - 1, steps_per_epoch)
        order = epoch_permutation(n, cfg.seed, epoch + 1).tolist()
        expected = order[position * batch : (position + 1) * batch]
        taken = [image for g in group for image in g.images]
        assert sorted(taken) == sorted(expected), f"step {step} at {world_size} ranks"


@pytest.fixture
def etcd_server(hosts, tmp_path) -> str:
    """An etcd server (v2 API on) on this machine, outside both hosts, as a cluster's service node
    would run it; its endpoint."""
    binary = shutil.which("etcd") or "/usr/bin/etcd"
    missing = None if Path(binary).exists() else "etcd is not installed (tests/slurm/cluster.sh install)"
    require(missing, "the etcd rendezvous test")
    client = None if importlib.util.find_spec("etcd") else "python-etcd is not installed (pip install -e '.[dev]')"
    require(client, "the etcd rendezvous test")
    address = "10.213.0.1"  # the bridge: both hosts reach it
    server = subprocess.Popen(
        [binary, "--name=controller", f"--data-dir={tmp_path / 'etcd'}", "--enable-v2=true",
         f"--listen-client-urls=http://{address}:2379", f"--advertise-client-urls=http://{address}:2379",
         "--listen-peer-urls=http://127.0.0.1:2380"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "etcd.log").open("w"),
    )  # fmt: skip
    try:
        yield f"{address}:2379"
    finally:
        server.kill()
        server.wait(timeout=30)


def test_with_the_etcd_rendezvous_losing_the_first_node_does_not_end_the_job(hosts, etcd_server, tmp_path):
    # Under c10d the first node's agent hosts the rendezvous, and losing it ends the job; with etcd
    # on a machine of its own, node2 goes on alone when node1 is lost.
    run_dir = tmp_path / "run"
    settings = {**ELASTIC, "RDZV_BACKEND": "etcd-v2", "RDZV_ENDPOINT": etcd_server, "RDZV_ID": tmp_path.name}
    command = [str(REPO / "launch" / "node.sh"), *SHORT, f"run.dir={run_dir}"]
    logs = [tmp_path / f"{n}.log" for n in ("node1", "node2")]
    on_host(hosts, "node1", command, logs[0], **settings)
    node2 = on_host(hosts, "node2", command, logs[1], **settings)
    wait_until(lambda: newest_snapshot_step(run_dir) > 0, "a first snapshot", logs)
    subprocess.run([str(HOSTS), "power-cut", "node1"], env=hosts, check=True, timeout=30)
    assert node2.wait(timeout=180) == 0, logs[1].read_text(errors="replace")[-3000:]
    log = logs[1].read_text(errors="replace")
    assert "resuming with 1" in log and "final test accuracy" in log
    epochs, summary = finished_run(run_dir)
    assert epochs == list(range(1, 7))
    assert (summary["world_size"], summary["epochs"]) == (1, 6) and summary["test_accuracy"] > 0.9


# --- the two-node SLURM cluster ----------------------------------------------------------------


@pytest.fixture(scope="module")
def slurm2(hosts) -> dict[str, str]:
    """slurmctld here, one slurmd in each host; the client commands' environment."""
    require(why_no_slurm(), "the two-node SLURM tests")
    up = subprocess.run([str(HOSTS), "slurm-up"], env=hosts, capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    return {**hosts, "SLURM_CONF": str(Path(hosts["MNIST_DDP_HOSTS_DIR"]) / "slurm.conf")}


def submit(
    slurm2: dict[str, str], out_dir: Path, *options: str, args: list[str] = ARGS, **extra: str
) -> tuple[str, Path]:
    """sbatch --nodes=2 [options] slurm/train.sbatch, unchanged: one rank on each one-CPU node."""
    cmd = [
        "sbatch",
        "--parsable",
        "--nodes=2",
        *options,
        "--gpus-per-node=0",
        "--cpus-per-task=1",
        "--time=10",
        f"--output={out_dir}/slurm-%x-%j.out",
        "slurm/train.sbatch",
        *args,
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


def test_an_elastic_sbatch_job_loses_a_node_and_completes_on_the_one_that_remains(slurm2, tmp_path):
    # MIN_NODES=1 with --no-kill: SLURM takes the failed node out of the allocation and keeps the
    # job and its step; node1's agent forms a group of one and trains on from the newest snapshot.
    elastic = {"MIN_NODES": "1", "RDZV_LAST_CALL_SECONDS": "2", "RDZV_KEEP_ALIVE_SECONDS": "1"}
    job_id, log_path = submit(slurm2, tmp_path, "--no-kill", **elastic, args=SHORT)
    run_dir = tmp_path / "runs" / f"slurm-{job_id}"
    wait_until(lambda: newest_snapshot_step(run_dir) > 0, "a first snapshot", [log_path])
    subprocess.run([str(HOSTS), "power-cut", "node2"], env=slurm2, check=True, timeout=30)
    try:
        fields = wait_for_end(slurm2, job_id)
    finally:  # node2 back in service for the tests after this one
        subprocess.run([str(HOSTS), "slurmd", "node2"], env=slurm2, check=True, timeout=30)
    log = log_path.read_text(errors="replace")
    assert (fields["JobState"], fields["ExitCode"], fields["Restarts"]) == ("COMPLETED", "0:0", "0"), log[-3000:]
    assert fields["NodeList"] == "node1"  # the allocation shrank; it never grows back
    assert "Node failure on node2" in log and "resuming with 1" in log
    epochs, summary = finished_run(run_dir)
    assert epochs == list(range(1, 7))
    assert (summary["world_size"], summary["epochs"]) == (1, 6) and summary["test_accuracy"] > 0.9


def test_a_two_node_job_preempted_stops_both_hosts_at_one_step_and_completes_as_one_host(
    slurm2, two_rank_hash, tmp_path
):
    holder = on_host(slurm2, "node1", [sys.executable, "-c", HOLD_PORTS], tmp_path / "holder.log")
    try:
        wait_for_text(tmp_path / "holder.log", "holding", timeout=30)
        # A site file reading a variable that is not set, as module-load scripts do: it must not kill the job.
        site = tmp_path / "site.sh"
        site.write_text('echo "site set-up: ${MNIST_DDP_NOT_SET_ANYWHERE}done"\n')
        job_id, log_path = submit(slurm2, tmp_path, MNIST_DDP_SETUP=str(site), **SLOWER)
        wait_for_text(log_path, "epoch  2/12")
        signal = subprocess.run(
            ["scancel", "--signal=USR1", "--full", job_id], env=slurm2, capture_output=True, text=True
        )
        assert signal.returncode == 0, signal.stderr
        fields = wait_for_end(slurm2, job_id)
    finally:
        holder.kill()
    log = log_path.read_text(errors="replace")
    assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), log[-3000:]
    assert fields["NodeList"] == "node[1-2]"
    assert int(fields["Restarts"]) == 1 and f"requeued SLURM job {job_id}" in log
    assert f"job {job_id} (restart 1)" in log and "resuming from" in log
    stops = sorted(line for line in log.splitlines() if ": stopping at global step " in line)
    step = stops[0].rsplit(" ", 1)[1]
    assert stops == [f"rank 0: stopping at global step {step}", f"rank 1: stopping at global step {step}"]
    assert final_hashes(log) == {two_rank_hash}
    # Every port the job id could give was taken on node1: the batch script moved past them, both times.
    assert log.count("rendezvous node1:30400,") == 2
    summary = json.loads((tmp_path / "runs" / f"slurm-{job_id}" / "summary.json").read_text())
    # One CPU per task from SLURM: one thread per rank, with no train.threads given.
    assert (summary["world_size"], summary["threads_per_rank"], summary["backend"]) == (2, 1, "gloo")
    assert summary["test_examples"] == 360 and summary["test_accuracy"] > 0.9 and summary["epochs"] == 12
    assert log.count("site set-up: done") == 2 and sum("final test accuracy" in line for line in log.splitlines()) == 1
