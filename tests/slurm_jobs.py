"""SLURM in the tests: whether it can run here, and following a job: its fields, its end, a line
in its log, its parameter hashes."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

DONE_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def job_fields(slurm: dict[str, str], job_id: str) -> dict[str, str]:
    line = subprocess.run(
        ["scontrol", "-o", "show", "job", job_id], env=slurm, capture_output=True, text=True, timeout=30
    ).stdout
    return dict(item.split("=", 1) for item in line.split() if "=" in item)


def wait_for_end(slurm: dict[str, str], job_id: str, timeout: float = 300) -> dict[str, str]:
    # sbatch --wait polls slowly and returns 0 for a cancelled job: poll and read the state instead.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fields = job_fields(slurm, job_id)
        if fields.get("JobState") in DONE_STATES:
            return fields
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {job_fields(slurm, job_id)}")


def wait_for_text(path: Path, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.3)
    raise AssertionError(f"{text!r} not in {path} after {timeout} s")


def final_hashes(log: str) -> set[str]:
    return {line.split()[-1] for line in log.splitlines() if line.startswith("parameter_hash ")}


def why_no_slurm() -> str | None:
    if os.geteuid() != 0:
        return "the SLURM tests start munged, slurmctld and slurmd, which needs root"
    missing = [
        b
        for b in ("munged", "slurmctld", "slurmd", "sbatch")
        if shutil.which(b) is None and not Path(f"/usr/sbin/{b}").exists()
    ]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)} missing): run tests/slurm/cluster.sh install as root"
    return None
