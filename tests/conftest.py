"""Shared fixtures: where real MNIST is (if anywhere), and runners for the real commands.

:func:`run_module` starts ``python -m module`` as a user would: for what only a process shows
(exit status, signals, torchrun). :func:`run_in_process` calls the same command's ``main`` in
the test process, which saves each run ~4 s of importing torch and torch._dynamo: for what the
command does (outputs, numbers, messages, return codes).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from mnist_ddp.base import console
from mnist_ddp.training import guard

# Every command the tests start runs without wandb (its start-up and shut-down cost ~2 s a run);
# tests/test_tracking.py asks for offline runs explicitly.
os.environ["WANDB_MODE"] = "disabled"

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
# The digits run that the fault-tolerance and multi-node tests interrupt, resume and compare:
# long enough to stop mid-run (276 steps, ~5 s on 2 ranks), with a snapshot every 20 steps
# (23 an epoch); tests that stop it at a moment they observe rather than at a fault's step slow
# it down with a `slow` fault where that moment can come late. No figures: these tests compare weights.
SMOKE_LONG = [
    "--config",
    str(CONFIGS / "smoke.yaml"),
    "train.epochs=12",
    "checkpoint.every_steps=20",
    "log.plots=false",
]
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def real_mnist_dir() -> Path | None:
    """$MNIST_DDP_DATA, else ../shared/data/mnist beside the repo, if it holds the four files."""
    candidates = [os.environ.get("MNIST_DDP_DATA"), str(REPO.parent / "shared" / "data" / "mnist")]
    for c in filter(None, candidates):
        root = Path(c)
        if all((root / n).is_file() or (root / f"{n}.gz").is_file() for n in MNIST_FILES):
            return root
    return None


@pytest.fixture(scope="session")
def real_mnist() -> Path:
    """The real MNIST folder; the test is skipped when there is none."""
    root = real_mnist_dir()
    if root is None:
        pytest.skip("real MNIST not found: set MNIST_DDP_DATA to a folder with the four IDX files")
    return root


def run_module(module: str, *args: str, cwd: Path, timeout: float = 300, env: dict | None = None):
    """Run ``python -m module args...`` as a user would; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    """A TCP port nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(per_rank: list[list[str]], cwd: Path, timeout: float = 120, env: dict | None = None) -> list[Ran]:
    """Start ``python -m mnist_ddp.train`` once per rank by hand, as a bare srun would (RANK,
    WORLD_SIZE, MASTER_ADDR, MASTER_PORT; rank 0 hosts the store), each with its own arguments."""
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mnist_ddp.train", *args],
            cwd=cwd,
            env={
                **os.environ,
                "PYTHONUNBUFFERED": "1",
                **(env or {}),
                "RANK": str(rank),
                "WORLD_SIZE": str(len(per_rank)),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank, args in enumerate(per_rank)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        results.append(Ran(p.returncode, out, err))
    return results


def require(problem: str | None, what: str) -> None:
    """Skip the test when ``problem`` says it cannot run here; in CI (CI=true) fail instead."""
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} must run in CI: {problem}")
    pytest.skip(problem)


@pytest.fixture(scope="session")
def two_rank_run(tmp_path_factory) -> tuple[str, dict]:
    """SMOKE_LONG on 2 ranks under torchrun --standalone, uninterrupted: its final parameter hash
    and its summary.json."""
    folder = tmp_path_factory.mktemp("two-rank-reference")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mnist_ddp.train"]
    result = subprocess.run(
        [*cmd, *SMOKE_LONG, f"run.dir={folder / 'run'}"],
        cwd=folder,
        env={**os.environ, "MNIST_DDP_TEST_PRINT_HASH": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (digest,) = {line.split()[-1] for line in result.stdout.splitlines() if line.startswith("parameter_hash ")}
    return digest, json.loads((folder / "run" / "summary.json").read_text())


@pytest.fixture(scope="session")
def two_rank_hash(two_rank_run) -> str:
    """The final parameter hash of SMOKE_LONG on 2 ranks under torchrun --standalone, uninterrupted."""
    return two_rank_run[0]


@dataclass
class Ran:
    """What a command run in this process returned and printed (named as subprocess.CompletedProcess)."""

    returncode: int
    stdout: str
    stderr: str


def run_in_process(module: str, *args: str, cwd: Path, env: dict | None = None) -> Ran:
    """Call ``module.main(args)`` here, from ``cwd`` with ``env`` added, capturing what it prints.

    Everything a run changes in the process is put back afterwards: the working folder, the
    environment, the signal handlers and stop flag of the preemption guard, and torch's threads.
    """
    main = importlib.import_module(module).main
    handlers = {s: signal.getsignal(s) for s in guard.STOP_SIGNALS}
    threads, old_env, old_cwd = torch.get_num_threads(), dict(os.environ), os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.update(env or {})
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
            console.drain(timeout=10)  # as the process's exit would: every queued line written
    finally:
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(old_env)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        guard.stop_signal, guard.ctrl_c_at = None, None
        torch.set_num_threads(threads)
    return Ran(code, out.getvalue(), err.getvalue())
