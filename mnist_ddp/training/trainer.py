"""One rank's training run, read top to bottom as the algorithm it runs.

:class:`Trainer` holds the run folder, resumes from its snapshot, then for each epoch shuffles,
takes this rank's shard, steps through it in batches and ends the epoch (training loss over
ranks, exact evaluation, agreement, record, snapshot). Its parts are built in
:mod:`mnist_ddp.training.build`; the step loop's observers, the snapshot schedule, resuming and
rank 0's outputs each have a module of their own.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from mnist_ddp.base import fault_injection
from mnist_ddp.base.atomic import check_writable
from mnist_ddp.base.console import say
from mnist_ddp.config.loading import to_dict
from mnist_ddp.config.schema import Config
from mnist_ddp.data.order import epoch_permutation, shard_indices, to_device_without_waiting
from mnist_ddp.model.evaluation import EvalCounts
from mnist_ddp.model.mlp import parameter_count, parameter_hash
from mnist_ddp.model.optimizer import current_lr
from mnist_ddp.observe import metrics, timing
from mnist_ddp.observe.profiling import syncs_reported
from mnist_ddp.observe.reporter import Reporter
from mnist_ddp.parallel import liveness
from mnist_ddp.parallel.distributed import (
    all_gather_tensors,
    all_reduce_sum,
    broadcast_from_rank0,
    fail_together,
)
from mnist_ddp.parallel.entry import keep_tracebacks_in
from mnist_ddp.parallel.launcher import Launch
from mnist_ddp.state.checkpoint import (
    Progress,
    Snapshot,
    config_identity,
    snapshot_dir,
)
from mnist_ddp.state.rundir import RunDirLock, choose_run_dir
from mnist_ddp.state.weights import save_model
from mnist_ddp.training.build import build_parts
from mnist_ddp.training.losses import EpochLosses
from mnist_ddp.training.observers import StepObservers
from mnist_ddp.training.resume import find_resume_point, restore
from mnist_ddp.training.snapshots import Snapshots


class Trainer:
    """One rank's training run. Every rank builds one and calls :meth:`run`; the collectives
    inside are reached by every rank in the same order."""

    def __init__(self, cfg: Config, launch: Launch, device: torch.device, backend: str) -> None:
        self.cfg, self.launch, self.device = cfg, launch, device
        self.parts = build_parts(cfg, launch, device, backend)

        self.run_dir = (
            choose_run_dir(cfg.run.dir, cfg.data.dataset, config_identity(to_dict(cfg))) if launch.rank == 0 else None
        )
        if self.run_dir is not None and not cfg.run.dir:  # config.yaml and snapshots record the chosen folder
            self.cfg = replace(cfg, run=replace(cfg.run, dir=str(self.run_dir)))
        # Rank 0's folder, known to every rank: where each writes its profile trace, or its stacks when stuck.
        self.shared_run_dir = Path(str(broadcast_from_rank0(str(self.run_dir))))
        liveness.tell_run_dir(self.shared_run_dir)
        self.reporter = Reporter(self.cfg, self.run_dir)
        self.snapshots = Snapshots(self.cfg, launch, device, self.parts, self.run_dir, self.reporter)
        self.observers = StepObservers(self.cfg, launch, device, self.parts, self.reporter)
        self.resumed_from: Snapshot | None = None
        self.progress = Progress()

    def run(self) -> dict[str, Any]:
        """Hold run.dir, continue from its snapshot or start, train, write the outputs; rank 0 returns the summary."""
        lock = None
        with fail_together(self.device):
            if self.run_dir is not None:
                self.reporter.check()
                lock = RunDirLock(self.run_dir)  # a second job in the same folder stops here
                for folder in (self.run_dir, snapshot_dir(self.run_dir), self.run_dir / "plots"):
                    if folder.is_dir():  # the ones a resumed run finds; a new one is made inside run.dir
                        check_writable(folder)
        # Once it exists (on this node: a multi-node run.dir may not be shared), tracebacks go there.
        keep_tracebacks_in(self.shared_run_dir if self.shared_run_dir.is_dir() else None)
        failed = True
        try:
            self.resumed_from = find_resume_point(self.cfg, self.run_dir, self.parts, self.device)
            if self.resumed_from:
                self.progress = restore(
                    self.resumed_from, self.parts, self.cfg, self.launch, self.device, self.reporter
                )
                self.snapshots.resumed_step = self.progress.global_step
            summary = self.train_and_report()
            failed = False
            return summary
        finally:
            if lock is not None:
                lock.release(failed)

    def train_and_report(self) -> dict[str, Any]:
        """Train every remaining epoch and write the outputs; rank 0 returns the summary."""
        self.reporter.start(self.progress.records, self.opening_lines())
        resume_id = self.resumed_from.wandb_run_id if self.resumed_from else None
        with self.reporter.tracked(resume_id):
            # Host-side values only in the loop: the losses stay on the device until the epoch ends.
            parts = self.parts
            images = len(parts.data.train_labels)
            self.losses = EpochLosses(self.cfg.train.batch_size, images, self.launch.world_size, self.device)
            self.parts.guard.start_at(self.progress.global_step)
            if self.cfg.train.cuda_graphs:
                self.parts.step.capture(self.losses.values, self.parts.shard_len)
            self.observers.start_run(self.shared_run_dir)
            counts = self.train_epochs()
            self.observers.end_run()
            return self.finish(counts)

    def opening_lines(self) -> list[str]:
        """Rank 0's opening lines: data, model, ranks, where the outputs go, where it resumes."""
        data, p, parts, world_size = self.parts.data, self.progress, self.parts, self.launch.world_size
        widths = "-".join(map(str, [data.in_features, *self.cfg.model.hidden, 10]))
        group = parts.backend if world_size > 1 else "no process group"
        lines = [
            f"{data.source}: {len(data.train_labels)} train / {len(data.test_labels)} test images; "
            f"model {widths} ({parameter_count(parts.model):,} parameters); {world_size} rank(s) on"
            f" {self.device.type} ({group}), {parts.per_rank_batch} images per rank per step,"
            f" {parts.precision} ({parts.precision_reason}); outputs in {self.run_dir}"
        ]
        if self.resumed_from:
            where = f"epoch {p.epoch}, step {p.step_in_epoch} (global step {p.global_step})"
            lines.append(f"resuming from {self.resumed_from.path}: {where}")
        return lines

    def train_epochs(self) -> EvalCounts | None:
        """The training loop; the last epoch's test counts (None when no epoch was left to run)."""
        p, cfg, parts, watch, launch, counts = self.progress, self.cfg, self.parts, self.observers, self.launch, None
        while p.epoch <= cfg.train.epochs:
            parts.model.train()
            started = timing.device_clock(self.device)
            watch.start_epoch(p)
            with syncs_reported(self.device):  # MNIST_DDP_SYNC_DEBUG: nothing here should wait for a GPU
                order = epoch_permutation(len(parts.data.train_labels), cfg.seed, p.epoch)
                order = to_device_without_waiting(order, self.device)
                shard = shard_indices(order, launch.rank, launch.world_size, cfg.train.batch_size)
                self.losses.values.zero_()
                parts.step.start_epoch(shard, p.global_step - p.step_in_epoch, p.step_in_epoch)
                watch.start_loop()
                for step_in_epoch in range(p.step_in_epoch + 1, parts.steps_per_epoch + 1):
                    with watch.step(p, parts.step.batch(step_in_epoch - 1)):
                        parts.step(step_in_epoch - 1, p.global_step, self.losses.values)
                    p.global_step, p.step_in_epoch = p.global_step + 1, step_in_epoch
                    watch.stepped(p)
                    self.snapshots.after_step(p, self.losses)
                    watch.checked()
                watch.end_loop()
            counts = self.end_epoch(started, watch.end_epoch()) or counts
            liveness.steady()  # every phase has run once: the short liveness limit applies from here
        return counts

    def end_epoch(self, started: float, logged_lrs: dict[int, float]) -> EvalCounts | None:
        """Every train.eval_every_epochs: training loss over ranks, exact evaluation, agreement and
        rank 0's record; every checkpoint.every_epochs: agreement and a snapshot. The last epoch
        always does both. Returns the test counts when it evaluated."""
        p, tc, every = self.progress, self.cfg.train, self.cfg.checkpoint.every_epochs
        last = p.epoch == tc.epochs
        evaluate = last or p.epoch % tc.eval_every_epochs == 0
        snapshot = last or (every > 0 and p.epoch % every == 0)
        counts = train_loss = decision = None
        train_seconds = timing.device_clock(self.device) - started
        images = self.parts.images_trained(p.resumed_at, tc.batch_size)
        if evaluate:
            with self.snapshots.phase("agreement", p):
                train_loss = all_reduce_sum(self.losses.sum_so_far(p)).item() / len(self.parts.data.train_labels)
        self.reporter.log_step_losses(self.losses.values, logged_lrs, p.global_step)
        if evaluate:
            with self.snapshots.phase("evaluation", p):
                counts = self.parts.evaluate(self.cfg.train.eval_batch_size, self.launch)
        if evaluate or snapshot:
            with self.snapshots.phase("agreement", p):
                decision = self.parts.guard.now(p.global_step)
            self.snapshots.stop_if_diverged(decision, p)  # before the record: a non-finite epoch is never recorded
        rank_times = self.parts.rank_times(self.cfg.log.rank_times, self.device) if counts is not None else None
        if counts is not None and self.run_dir is not None:
            lr = current_lr(self.parts.optimizer, self.parts.schedule, tc.lr)
            record = metrics.epoch_record(p.epoch, train_loss, counts, images, train_seconds, lr)
            if rank_times is not None:
                record["rank_seconds"] = rank_times
                record["straggler"] = timing.straggler_record(
                    rank_times, self.parts.hosts, self.cfg.dist.straggler_factor
                )
            p.records.append(record)
            self.reporter.record_epoch(record, counts, p.global_step)
        p.trained = {
            "epochs": p.trained["epochs"] + 1,
            "seconds": p.trained["seconds"] + train_seconds,
            "images": p.trained["images"] + images,
        }
        p.start_next_epoch()
        if decision is not None:
            self.snapshots.stop_if_asked(decision, p, self.losses)
        if snapshot:
            self.snapshots.save(p, self.losses)
        return counts

    def finish(self, counts: EvalCounts | None) -> dict[str, Any]:
        """The final outputs: model.pt, summary.json, figures and the last line (rank 0)."""
        liveness.mark("final outputs")
        counts = counts or self.parts.evaluate(
            self.cfg.train.eval_batch_size, self.launch
        )  # None: resumed from a snapshot taken after the last epoch
        if fault_injection.print_hash_requested():
            say(f"parameter_hash rank={self.launch.rank} {parameter_hash(self.parts.model)}")
        peak_rss = all_gather_tensors(torch.tensor([metrics.peak_rss_mb()], device=self.device))
        if self.run_dir is None:
            return {}
        records = self.progress.records
        save_model(self.run_dir / "model.pt", self.parts.model, to_dict(self.cfg), self.parts.data.in_features)
        summary = metrics.build_summary(records, counts, self.launch.world_size, self.progress.trained)
        rank_totals = metrics.rank_seconds_total(records, self.launch.world_size)
        summary |= {
            "backend": self.parts.backend if self.launch.world_size > 1 else "none",
            "per_rank_batch_size": self.parts.per_rank_batch,
            "threads_per_rank": self.parts.threads,
            "precision": self.parts.precision,
            "precision_chosen_by": self.parts.precision_reason,
            "peak_rss_mb_per_rank": [round(float(r.item()), 1) for r in peak_rss],
            "hosts": self.parts.hosts,
            "rank_seconds": rank_totals,
            "straggler": timing.run_straggler(records, self.launch.world_size),
        }
        figures = None
        if self.cfg.log.plots:
            data = self.parts.data
            figures = dict(
                records=records,
                counts=counts,
                model=self.parts.model,
                images=data.test_images,
                labels=data.test_labels,
                rank_seconds=rank_totals,
            )
        self.reporter.finish(summary, figures, self.progress.global_step)
        return summary
