"""slurm/train.sbatch on a real one-node SLURM cluster (tests/slurm/cluster.sh); preemption and requeue are
tested on the two-node cluster (tests/test_multinode.py), which covers the same path across hosts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SMOKE_LONG, require
from slurm_jobs import final_hashes, wait_for_end, why_no_slurm

from mnist_ddp.fault_injection import PRINT_HASH_ENV

CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"
OVERRIDES = SMOKE_LONG


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> dict[str, str]:
    """A running one-node cluster; yields the environment its client commands need."""
    require(why_no_slurm(), "the SLURM tests")
    state = tmp_path_factory.mktemp("slurm-state")
    env = {**os.environ, "MNIST_DDP_SLURM_DIR": str(state)}
    up = subprocess.run([str(CLUSTER), "up"], env=env, capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    env["SLURM_CONF"] = str(state / "slurm.conf")
    try:
        yield env
    finally:
        subprocess.run([str(CLUSTER), "down"], env=env, timeout=60)


def submit(slurm: dict[str, str], out_dir: Path, **extra: str) -> tuple[str, Path]:
    """Submit slurm/train.sbatch unchanged, with CPU overrides: 2 ranks on the 2-core node."""
    env = {
        **slurm,
        **extra,
        "NPROC": "2",
        "PYTHON": sys.executable,
        "MNIST_DDP_RUNS": str(out_dir / "runs"),
        PRINT_HASH_ENV: "1",
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [
        "sbatch",
        "--parsable",
        "--gpus-per-node=0",
        "--cpus-per-task=2",
        "--time=10",
        f"--output={out_dir}/slurm-%x-%j.out",
        "slurm/train.sbatch",
        *OVERRIDES,
    ]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip().split(";")[0]
    return job_id, out_dir / f"slurm-mnist_ddp-{job_id}.out"


@pytest.fixture(scope="module")
def uninterrupted(slurm, tmp_path_factory) -> dict:
    out_dir = tmp_path_factory.mktemp("job")
    # A site file reading a variable that is not set, as module-load scripts do: it must not kill the job.
    site = out_dir / "site.sh"
    site.write_text('echo "site set-up: ${MNIST_DDP_NOT_SET_ANYWHERE}done"\n')
    job_id, log_path = submit(slurm, out_dir, MNIST_DDP_SETUP=str(site))
    fields = wait_for_end(slurm, job_id)
    log = log_path.read_text(errors="replace")
    return {"id": job_id, "fields": fields, "log": log, "run_dir": out_dir / "runs" / f"slurm-{job_id}"}


def test_sbatch_runs_the_job_to_completion(uninterrupted, two_rank_hash):
    fields, log = uninterrupted["fields"], uninterrupted["log"]
    assert fields["JobState"] == "COMPLETED", log[-3000:]
    assert fields["ExitCode"] == "0:0"
    assert "final test accuracy" in log and "site set-up: done" in log
    summary = json.loads((uninterrupted["run_dir"] / "summary.json").read_text())
    assert (summary["world_size"], summary["backend"], summary["epochs"]) == (2, "gloo", 12)
    assert summary["test_examples"] == 360 and summary["test_accuracy"] > 0.9
    assert final_hashes(log) == {two_rank_hash}  # as 2 ranks under torchrun --standalone
