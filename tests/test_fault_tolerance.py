"""End to end: killed, preempted and diverging runs, and resuming them exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, SMOKE_LONG, run_in_process

from mnist_ddp.base.errors import EXIT_DIVERGED, EXIT_PREEMPTED
from mnist_ddp.base.fault_injection import FAULT_ENV, PRINT_HASH_ENV
from mnist_ddp.state import checkpoint

ARGS = SMOKE_LONG
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
PYTHON = [sys.executable]


def environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", PRINT_HASH_ENV: "1", **extra}


def launch(launcher: list[str], run_dir: Path, *extra: str, env=None, launcher_args=()) -> subprocess.Popen:
    cmd = [*launcher, *launcher_args, "-m", "mnist_ddp.train", *ARGS, f"run.dir={run_dir}", *extra]
    return subprocess.Popen(
        cmd, cwd=run_dir.parent, env=env or environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def train_here(run_dir: Path, *extra: str, env: dict | None = None) -> tuple[int, str, str]:
    """The same run as ``launch(PYTHON, ...)``, in this process: for what needs no process of its own."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    ran = run_in_process(
        "mnist_ddp.train",
        *ARGS,
        f"run.dir={run_dir}",
        *extra,
        cwd=run_dir.parent,
        env={PRINT_HASH_ENV: "1", **(env or {})},
    )
    return ran.returncode, ran.stdout, ran.stderr


def final_hashes(stdout: str) -> set[str]:
    return {line.split()[-1] for line in stdout.splitlines() if line.startswith("parameter_hash ")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, two_rank_hash) -> dict[str, str]:
    """Final parameter hashes of uninterrupted runs: one process, and 2 ranks."""
    code, out, err = train_here(tmp_path_factory.mktemp("reference") / "one")
    assert code == 0, err[-3000:]
    (digest,) = final_hashes(out)
    return {"one": digest, "two": two_rank_hash}


def test_killed_process_resumes_to_identical_weights(tmp_path, reference):
    run_dir = tmp_path / "run"
    code, _, _ = finish(launch(PYTHON, run_dir, env=environment(**{FAULT_ENV: "kill:0:107"})))
    assert code == -signal.SIGKILL
    assert checkpoint.snapshot_paths(checkpoint.snapshot_dir(run_dir))[0].name == "step_0000100.pt"
    code, out, err = train_here(run_dir)
    assert code == 0, err[-3000:]
    assert "resuming from" in out and "step_0000100.pt: epoch 5, step 8 (global step 100)" in out
    assert final_hashes(out) == {reference["one"]}


def wait_for_line(proc: subprocess.Popen, text: str) -> None:
    for line in proc.stdout:
        if text in line:
            return
    raise AssertionError(f"{text!r} never printed")


def test_sigterm_saves_a_snapshot_exits_75_and_resumes_exactly(tmp_path, reference):
    run_dir = tmp_path / "run"
    proc = launch(PYTHON, run_dir)
    wait_for_line(proc, "epoch  2/12")
    proc.send_signal(signal.SIGTERM)
    code, _, err = finish(proc)
    assert code == EXIT_PREEMPTED
    assert err.startswith("preempted: stop signal received: snapshot ") and "run the same command again" in err
    code, out, err = train_here(run_dir)
    assert code == 0, err[-3000:]
    assert final_hashes(out) == {reference["one"]}


def launch_script(run_dir: Path) -> subprocess.Popen:
    """launch/local.sh with 2 CPU ranks, as a user runs it."""
    env = environment(NPROC="2", PYTHON=sys.executable)
    cmd = [str(REPO / "launch" / "local.sh"), *ARGS, f"run.dir={run_dir}"]
    return subprocess.Popen(cmd, cwd=run_dir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_corrupt_newest_snapshot_falls_back_to_the_previous_one(tmp_path, reference):
    run_dir = tmp_path / "run"
    code, _, _ = finish(launch(PYTHON, run_dir, env=environment(**{FAULT_ENV: "kill:0:107"})))
    newest = checkpoint.snapshot_dir(run_dir) / "step_0000100.pt"
    newest.write_bytes(newest.read_bytes()[: len(newest.read_bytes()) // 2])
    code, out, err = train_here(run_dir)
    assert code == 0, err[-3000:]
    assert "warning: skipping snapshot" in out and "step_0000100.pt: unreadable, truncated or corrupt" in out
    assert "step_0000092.pt: epoch 5, step 0 (global step 92)" in out
    assert final_hashes(out) == {reference["one"]}


def test_resuming_another_model_or_a_pickle_is_a_one_line_error(tmp_path):
    run_dir = tmp_path / "run"
    code, _, err = train_here(run_dir, "train.epochs=1", "checkpoint.every_steps=0")
    snapshot = checkpoint.snapshot_paths(checkpoint.snapshot_dir(run_dir))[0]
    code, _, err = train_here(tmp_path / "other", "train.epochs=1", f"resume={snapshot}", "model.hidden=[64]")
    assert code == 2
    assert err.startswith(
        f"error: {snapshot} was saved with model.hidden=[256, 256, 256, 128, 128], this run has model.hidden=[64];"
    )
    assert err.count("\n") == 1
    evil = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "run": subprocess.Popen}, evil)
    code, _, err = train_here(tmp_path / "third", f"resume={evil}")
    assert code == 2 and err.startswith(f"error: {evil}: refused, it is not a weights-only checkpoint")
    assert err.count("\n") == 1


def test_nan_stops_the_job_and_keeps_the_last_good_snapshot(tmp_path):
    run_dir = tmp_path / "run"
    code, _, err = train_here(run_dir, env={FAULT_ENV: "nan:0:47"})
    assert code == EXIT_DIVERGED
    assert err.startswith("error: non-finite loss or weights at step 47 (epoch 3)")
    folder = checkpoint.snapshot_dir(run_dir)
    assert (folder / "latest").read_text().strip() == "step_0000046.pt"
    assert checkpoint.snapshot_paths(folder)[0].name == "step_0000046.pt"
    good = torch.load(folder / "step_0000046.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in good["model"].values())
