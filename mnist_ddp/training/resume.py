"""Continuing a run: the snapshot to resume from (rank 0 finds and checks it, every rank gets a
copy) and restoring everything it holds, so the run goes on bit for bit."""

from __future__ import annotations

from pathlib import Path

import torch

from mnist_ddp.config.loading import to_dict
from mnist_ddp.config.schema import Config
from mnist_ddp.model.optimizer import load_optimizer_state
from mnist_ddp.observe.reporter import Reporter
from mnist_ddp.parallel.distributed import broadcast_from_rank0, fail_together
from mnist_ddp.parallel.launcher import Launch
from mnist_ddp.state.checkpoint import Progress, Snapshot, check_compatible, check_one_timeline, find_snapshot
from mnist_ddp.state.rng import restore_streams
from mnist_ddp.training.build import Parts

OWNED_BY_SAMPLES = "they belong to the samples"


def find_resume_point(cfg: Config, run_dir: Path | None, parts: Parts, device: torch.device) -> Snapshot | None:
    """Rank 0 finds and checks the snapshot to continue from; every rank gets a copy (a collective)."""
    found = None
    with fail_together(device):
        if run_dir is not None:
            found = find_snapshot(cfg.resume, run_dir)
            check_one_timeline(cfg.resume, found, run_dir)
            if found:
                check_compatible(found, to_dict(cfg), parts.data.in_features, parts.data_fingerprint)
    return broadcast_from_rank0(found)  # type: ignore[return-value]


def restore(
    snapshot: Snapshot, parts: Parts, cfg: Config, launch: Launch, device: torch.device, reporter: Reporter
) -> Progress:
    """Load the snapshot's weights, optimizer, schedule and random streams; its progress."""
    parts.model.load_state_dict(snapshot.model)
    load_optimizer_state(parts.optimizer, parts.schedule, snapshot.optimizer, snapshot.schedule)
    progress = snapshot.progress
    step, seed = progress.global_step, cfg.seed
    inexact = restore_streams(snapshot.host_rng, snapshot.rng, launch.rank, launch.world_size, seed, step, device)
    if inexact:
        reporter.say(
            f"{inexact}: the data order, dropout masks and shifts continue exactly (they belong to the samples)"
        )
    if launch.rank != 0:
        progress.loss_carry = 0.0  # rank 0 carries the loss of the steps before the snapshot
    return progress
