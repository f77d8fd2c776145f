"""Shared fixtures: where real MNIST is (if anywhere) and a runner for the real commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Every command the tests start runs without wandb (its start-up and shut-down cost ~2 s a run);
# tests/test_tracking.py asks for offline runs explicitly.
os.environ["WANDB_MODE"] = "disabled"

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def real_mnist_dir() -> Path | None:
    """$MNIST_DDP_DATA, else ../shared/data/mnist beside the repo, if it holds the four files."""
    candidates = [os.environ.get("MNIST_DDP_DATA"), str(REPO.parent / "shared" / "data" / "mnist")]
    for c in filter(None, candidates):
        root = Path(c)
        if all((root / n).is_file() or (root / f"{n}.gz").is_file() for n in MNIST_FILES):
            return root
    return None


@pytest.fixture
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
