"""When a run snapshots, and how: at ``checkpoint.every_steps``, once ``checkpoint.every_seconds``
have passed on any rank (agreed at a check step), at an epoch's end and on a stop signal. Every
rank makes the same calls in the same order; rank 0 alone writes the file."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from mnist_ddp.base.console import say
from mnist_ddp.base.errors import Diverged, Interrupted, Preempted
from mnist_ddp.config.loading import to_dict
from mnist_ddp.config.schema import Config
from mnist_ddp.observe import tracking
from mnist_ddp.observe.reporter import Reporter
from mnist_ddp.parallel.distributed import all_gather_tensors, all_reduce_sum, barrier
from mnist_ddp.parallel.launcher import Launch
from mnist_ddp.state.checkpoint import Progress, Snapshot, save_snapshot, snapshot_dir
from mnist_ddp.state.rng import device_rng_state, host_rng_state
from mnist_ddp.state.weights import cpu_state_dict
from mnist_ddp.training import guard
from mnist_ddp.training.build import Parts
from mnist_ddp.training.losses import EpochLosses


class Snapshots:
    """The snapshot clock (steps, seconds, epochs, stop signals) and the snapshot itself."""

    def __init__(
        self, cfg: Config, launch: Launch, device: torch.device, parts: Parts, run_dir: Path | None, reporter: Reporter
    ) -> None:
        self.cfg, self.launch, self.device, self.parts, self.run_dir, self.reporter = (
            cfg, launch, device, parts, run_dir, reporter,
        )  # fmt: skip
        # For checkpoint.every_seconds: the clock starts with the run (a resume continues from a snapshot).
        self.last_at, self.last_step, self.resumed_step = time.monotonic(), -1, -1

    def phase(self, name: str, p: Progress):
        """A phase every rank runs (agreement, evaluation, snapshot): timed, marked, named in a profile."""
        return self.parts.clock.phase(name, p.epoch, p.global_step)

    def after_step(self, p: Progress, losses: EpochLosses) -> None:
        """At a snapshot step agree at once and snapshot; at a check step act on the previous check,
        which may say that checkpoint.every_seconds have passed (on any rank's clock)."""
        step, ck = p.global_step, self.cfg.checkpoint
        if ck.every_steps > 0 and step % ck.every_steps == 0:
            with self.phase("agreement", p):  # without lag: a snapshot must not hold NaN
                decision = self.parts.guard.now(step)
            self.obey(decision, p, losses)
            self.save(p, losses)
        elif step % ck.check_every_steps == 0:
            due = 0 < ck.every_seconds <= time.monotonic() - self.last_at
            with self.phase("agreement", p):
                decision = self.parts.guard.lagged(step, due)
            self.obey(decision, p, losses)
            # Unless a snapshot was written since that check began (every rank knows the same steps).
            if decision.snapshot_due and decision.step is not None and self.last_step < decision.step:
                self.save(p, losses)

    def obey(self, decision: guard.Decision, p: Progress, losses: EpochLosses) -> None:
        """Stop as every rank agreed: on NaN/inf without a snapshot, on a stop signal after one."""
        self.stop_if_diverged(decision, p)
        self.stop_if_asked(decision, p, losses)

    def stop_if_diverged(self, decision: guard.Decision, p: Progress) -> None:
        """Raise Diverged when any rank saw a non-finite loss or weight; no snapshot is written."""
        if decision.first_bad_step is not None:
            kept = self.last_step if self.last_step >= 0 else self.resumed_step
            raise Diverged(diverged_text(decision.first_bad_step, p.epoch, self.cfg, kept))

    def stop_if_asked(self, decision: guard.Decision, p: Progress, losses: EpochLosses) -> None:
        """After a stop signal on any rank: snapshot, requeue a preempted SLURM job, raise."""
        if not decision.stop:
            return
        step = p.global_step
        path = self.save(p, losses)
        if self.launch.world_size > 1:
            say(f"rank {self.launch.rank}: stopping at global step {step}", sys.stderr)
        if decision.interrupted_by is not None:
            name = guard.SESSION_SIGNAL_NAMES[decision.interrupted_by]
            raise Interrupted(
                f"{name}: snapshot {path} at global step {step}; run the same command again to resume",
                decision.interrupted_by,
            )
        if self.launch.rank == 0:
            guard.requeue_if_slurm(self.cfg.checkpoint.requeue)
        raise Preempted(
            f"stop signal received: snapshot {path} at global step {step}; run the same command again to resume"
        )

    def save(self, p: Progress, losses: EpochLosses) -> Path | None:
        """Every rank calls this (it gathers RNG states and the loss); rank 0 writes the file."""
        with self.phase("snapshot", p):
            path = self.write(p, losses)
        self.last_at, self.last_step = time.monotonic(), p.global_step
        return path

    def write(self, p: Progress, losses: EpochLosses) -> Path | None:
        """The snapshot's collectives on every rank, and rank 0's write."""
        rng = all_gather_tensors(device_rng_state(self.device).to(self.device))
        epoch_loss_sum = all_reduce_sum(losses.sum_so_far(p)).item()
        path = None
        if self.run_dir is not None:
            parts = self.parts
            snapshot = Snapshot(
                progress=replace(p, loss_carry=epoch_loss_sum),
                model=cpu_state_dict(parts.model),
                optimizer=parts.optimizer.state_dict(),
                schedule=parts.schedule.state_dict() if parts.schedule is not None else None,
                rng=[r.cpu() for r in rng],
                host_rng=host_rng_state(),
                config=to_dict(self.cfg),
                in_features=parts.data.in_features,
                wandb_run_id=tracking.run_id(self.reporter.wandb_run),
                data=parts.data_fingerprint,
            )
            path = save_snapshot(self.run_dir, snapshot, self.cfg.checkpoint.keep)
        barrier()
        return path


def diverged_text(step: int, epoch: int, cfg: Config, last_snapshot_step: int) -> str:
    """Why the run stopped, where its last good snapshot is (if any), and the setting to change."""
    tc, folder = cfg.train, snapshot_dir(Path(cfg.run.dir))
    kept = (
        f"the last good snapshot (global step {last_snapshot_step}) stays in {folder}"
        if last_snapshot_step >= 0
        else "no snapshot had been written yet"
    )
    # Decoupled weight decay multiplies the weights by 1 - lr * weight_decay each step: at 1 or more it overshoots.
    suspect = (
        f"a lower train.weight_decay (now {tc.weight_decay:g}; times train.lr it is {tc.lr * tc.weight_decay:g},"
        " at least 1)"
        if tc.lr * tc.weight_decay >= 1 and tc.weight_decay >= 1  # weight decay, not the lr, is out of range
        else f"a lower train.lr (now {tc.lr:g})"
    )
    return (
        f"non-finite loss or weights at step {step} (epoch {epoch}); stopped without writing a snapshot, {kept};"
        f" start again in another run.dir with {suspect} or with train.bf16=false"
    )
