"""Weights & Biases: rank 0 only, offline without an account, nothing at all when disabled."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import CONFIGS, run_in_process
from wandb_records import history

from mnist_ddp.base.errors import InputError
from mnist_ddp.config.loading import load_config
from mnist_ddp.observe import tracking

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def test_auto_mode_is_offline_without_an_api_key(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert tracking.resolved_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert tracking.resolved_mode("auto") == "online"
    assert tracking.resolved_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "disabled")  # wandb's own variable wins over the key
    assert tracking.resolved_mode("auto") == "disabled"
    assert tracking.resolved_mode("offline") == "offline"  # an explicit mode wins over both


def test_epoch_values_use_sections():
    record = {"epoch": 2, "train_loss": 0.5, "test_loss": 0.4, "test_accuracy": 0.9, "samples_per_second": 10.0}
    values = tracking.epoch_values(record, [0.5] * 10)
    assert values["test/accuracy"] == 0.9 and values["epoch"] == 2 and values["test/class_9_accuracy"] == 0.5


def run(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    cmd = [*TORCHRUN, "-m", "mnist_ddp.train", "--config", str(CONFIGS / "smoke.yaml"), "train.epochs=3", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)


def test_two_ranks_offline_make_exactly_one_run_with_epoch_history(tmp_path):
    run_dir = tmp_path / "run"
    result = run(tmp_path, f"run.dir={run_dir}", "log.every_steps=5", "wandb.mode=offline")
    assert result.returncode == 0, result.stderr[-3000:]
    (folder,) = (run_dir / "wandb").glob("offline-run-*")  # one run, from rank 0
    assert not list(tmp_path.glob("wandb")) and not list(tmp_path.glob("**/run-*/wandb"))
    rows = history(folder)
    epochs = [r for r in rows if "test/accuracy" in r]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert all(
        {"test/loss", "train/epoch_loss", "perf/samples_per_second", "test/class_0_accuracy"} <= r.keys()
        for r in epochs
    )
    # Each rank's time per phase, gathered by rank 0.
    assert all({"time/rank_0/compute_seconds", "time/rank_1/gradient_wait_seconds"} <= r.keys() for r in epochs)
    steps = [r["_step"] for r in rows]
    assert steps == sorted(steps)  # one monotonic axis for step and epoch metrics
    assert any("train/loss" in r and "train/lr" in r for r in rows)
    assert any(k.startswith("plots/") for r in rows for k in r)


def test_disabled_creates_no_wandb_folder(tmp_path):
    run_dir = tmp_path / "run"
    args = ["--config", str(CONFIGS / "smoke.yaml"), "train.epochs=3", f"run.dir={run_dir}", "wandb.mode=disabled"]
    # The setting wins over wandb's own variable.
    result = run_in_process("mnist_ddp.train", *args, cwd=tmp_path, env={"WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (run_dir / "wandb").exists() and not (tmp_path / "wandb").exists()
    assert (run_dir / "summary.json").is_file()


def test_a_failed_start_advises_what_fits_its_mode(monkeypatch, tmp_path):
    def refuse(wandb, cfg, mode, run_dir, resume_id):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tracking, "init_run", refuse)
    cfg = load_config(overrides=["wandb.mode=offline"])
    with pytest.raises(InputError) as offline:
        tracking.start(cfg, tmp_path, None)
    assert str(offline.value) == (
        "wandb.init failed in offline mode (OSError: [Errno 28] No space left on device); check that run.dir is"
        " writable and has space, or use wandb.mode=disabled"
    )
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    with pytest.raises(InputError, match=r"in online mode .*; check wandb.entity and wandb.project, or use wandb"):
        tracking.start(load_config(overrides=["wandb.mode=online"]), tmp_path, None)
