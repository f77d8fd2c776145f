"""2 ranks on one host against 2 ranks on two hosts, in one run, beside the network's own cost.

    sudo .venv/bin/python benchmarks/two_hosts.py [key=value ...]     e.g. data.root=../shared/data/mnist

The two hosts are tests/slurm/two_hosts.sh's network namespaces (one CPU each, a veth bridge
between them), with its two-node SLURM cluster; the script brings them up and takes them down.
Rows, all with the same config and global batch:

- one host: ``torchrun --standalone --nproc_per_node=2`` here (2 CPUs, one thread per rank);
- two hosts: ``sbatch --nodes=2 --cpus-per-task=1 slurm/train.sbatch`` as a user submits it,
  one rank per node and, by default, one thread per rank (SLURM's CPUs per task);
- two hosts, train.threads=2: the same, with each rank using more threads than its CPUs.

Each row's samples/s is the median epoch after the first (``bench.steady_samples_per_second``).
The network row times a 1.5 MB TCP round trip (the model's gradients, once) between the hosts
and over loopback. Needs root, iproute2, util-linux and SLURM (tests/slurm/cluster.sh install).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOSTS = REPO / "tests" / "slurm" / "two_hosts.sh"
sys.path.insert(0, str(REPO))
from mnist_ddp.bench.rows import steady_samples_per_second  # noqa: E402

GRADIENT_BYTES = 1_532_968  # 383,242 float32 parameters
ECHO_CODE = """
import socket, sys
with socket.create_server((sys.argv[1], int(sys.argv[2]))) as server:
    conn, _ = server.accept()
    while data := conn.recv(1 << 20):
        conn.sendall(data)
"""
ROUND_TRIP_CODE = """
import socket, statistics, sys, time
host, port, size, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
payload, times = b"x" * size, []
for _ in range(50):  # the echo server may still be starting
    try:
        c = socket.create_connection((host, port))
        break
    except ConnectionRefusedError:
        time.sleep(0.1)
with c:
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(repeats):
        started = time.perf_counter()
        c.sendall(payload)
        got = 0
        while got < size:
            got += len(c.recv(1 << 20))
        times.append(time.perf_counter() - started)
print(statistics.median(times[1:]) * 1000)
"""


def round_trip_ms(server_host: list[str], client_host: list[str], address: str, port: int) -> float:
    """Median milliseconds for GRADIENT_BYTES there and back, between an echo server and a client
    each started with its host's prefix ([] for this namespace)."""
    server = subprocess.Popen([*server_host, "python3", "-c", ECHO_CODE, address, str(port)], env=ENV)
    client = [*client_host, "python3", "-c", ROUND_TRIP_CODE, address, str(port), str(GRADIENT_BYTES), "30"]
    out = subprocess.run(client, capture_output=True, text=True, check=True, env=ENV)
    server.wait(timeout=10)
    return float(out.stdout)


def one_host(overrides: list[str], folder: Path) -> float:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mnist_ddp.train"]
    subprocess.run([*cmd, *overrides, f"run.dir={folder}"], cwd=REPO, env=ENV, check=True, capture_output=True)
    return steady_samples_per_second(folder)


def two_hosts(overrides: list[str], runs: Path, env: dict[str, str]) -> float:
    runs.mkdir(parents=True)  # sbatch writes its log there
    cmd = [
        "sbatch",
        "--parsable",
        "--wait",
        "--nodes=2",
        "--gpus-per-node=0",
        "--cpus-per-task=1",
        "--time=20",
        f"--output={runs}/slurm-%j.out",
        "slurm/train.sbatch",
        *overrides,
    ]
    job = (
        subprocess.run(
            cmd,
            cwd=REPO,
            env={**env, "NPROC": "1", "MNIST_DDP_RUNS": str(runs)},
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .split(";")[0]
    )
    return steady_samples_per_second(runs / f"slurm-{job}")


ENV = {**os.environ, "WANDB_MODE": "disabled", "PYTHON": sys.executable}


def main(overrides: list[str]) -> int:
    overrides = ["train.epochs=4", "log.plots=false", *overrides]
    with tempfile.TemporaryDirectory(prefix="two_hosts_") as tmp:
        ENV["MNIST_DDP_HOSTS_DIR"] = tmp  # every command below, the hosts' included, uses ENV
        env = ENV
        subprocess.run([str(HOSTS), "down"], env=env, capture_output=True)
        try:
            subprocess.run([str(HOSTS), "up"], env=env, check=True)
            subprocess.run([str(HOSTS), "slurm-up"], env=env, check=True, capture_output=True)
            env["SLURM_CONF"] = f"{tmp}/slurm.conf"
            loopback = round_trip_ms([], [], "127.0.0.1", 29611)
            node1, node2 = [str(HOSTS), "run", "node1"], [str(HOSTS), "run", "node2"]
            between = round_trip_ms(node1, node2, "10.213.0.11", 29612)
            rows = [("2 ranks, one host (torchrun --standalone)", one_host(overrides, Path(tmp) / "one"))]
            rows.append(("2 ranks, two hosts (sbatch --nodes=2)", two_hosts(overrides, Path(tmp) / "two", env)))
            threads = ["train.threads=2", *overrides]
            rows.append(("  the same, train.threads=2", two_hosts(threads, Path(tmp) / "oversubscribed", env)))
        finally:
            subprocess.run([str(HOSTS), "down"], env=env, capture_output=True)
    print(
        f"network: a {GRADIENT_BYTES / 1e6:.1f} MB round trip takes {between:.2f} ms between the hosts,"
        f" {loopback:.2f} ms over loopback (median of 29)"
    )
    print(f"config: {' '.join(overrides)}\n")
    print(f"{'row':<44} {'samples/s':>10} {'vs one host':>12}")
    for name, rate in rows:
        print(f"{name:<44} {rate:>10,.0f} {rate / rows[0][1]:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
