"""One rank's training run.

:class:`Trainer` is built from the config (data on the device, the model, wrapped in DDP when
there are several ranks, optimizer, schedule, and the snapshot to resume from), then
:meth:`Trainer.train_epochs` runs the algorithm: for each epoch, take this rank's shard of a
fresh shuffle, step through it in batches (:class:`mnist_ddp.training.step.TrainStep`), then end the
epoch (training loss over ranks, exact evaluation, agreement, record, snapshot; see
:meth:`Trainer.end_epoch` for how often). Rank 0 alone prints and writes.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mnist_ddp.base import fault_injection
from mnist_ddp.base.atomic import atomic_write_text, check_writable, output_error
from mnist_ddp.base.console import say
from mnist_ddp.base.errors import Diverged, Interrupted, Preempted
from mnist_ddp.config.checks import check_world_size
from mnist_ddp.config.loading import to_dict, to_yaml
from mnist_ddp.config.schema import Config
from mnist_ddp.data.order import epoch_permutation, shard_indices, to_device_without_waiting
from mnist_ddp.data.splits import load_on_every_rank
from mnist_ddp.model.evaluation import EvalCounts, evaluate_across_ranks
from mnist_ddp.model.mlp import build_model, parameter_count, parameter_hash
from mnist_ddp.model.optimizer import build_optimizer, build_schedule, current_lr, load_optimizer_state
from mnist_ddp.model.precision import choose_bf16
from mnist_ddp.observe import metrics, timing, tracking
from mnist_ddp.observe.profiling import start_profiler, syncs_reported
from mnist_ddp.parallel import agreement, liveness
from mnist_ddp.parallel.ddp import wrap_ddp
from mnist_ddp.parallel.distributed import (
    all_gather_tensors,
    all_reduce_sum,
    barrier,
    broadcast_from_rank0,
    fail_together,
)
from mnist_ddp.parallel.entry import keep_tracebacks_in
from mnist_ddp.parallel.launcher import Launch, threads_per_rank
from mnist_ddp.state.checkpoint import (
    Progress,
    Snapshot,
    check_compatible,
    check_one_timeline,
    config_identity,
    find_snapshot,
    save_snapshot,
    snapshot_dir,
)
from mnist_ddp.state.rng import device_rng_state, host_rng_state, restore_streams, seed_everything
from mnist_ddp.state.rundir import RunDirLock, choose_run_dir
from mnist_ddp.state.weights import cpu_state_dict, save_model
from mnist_ddp.training import guard
from mnist_ddp.training.step import TrainStep, check_step_options


class Trainer:
    """One rank's training run. Every rank builds one and calls :meth:`run`; the collectives
    inside are reached by every rank in the same order."""

    def __init__(self, cfg: Config, launch: Launch, device: torch.device, backend: str) -> None:
        tc = cfg.train
        self.cfg, self.device, self.backend = cfg, device, backend
        self.rank, self.world_size, self.is_main = launch.rank, launch.world_size, launch.rank == 0
        self.per_rank_batch = check_world_size(tc, self.world_size)
        check_step_options(tc, device, self.world_size)
        self.bf16, self.precision_reason = choose_bf16(tc.bf16, device)
        self.threads = threads_per_rank(tc.threads, torch.get_num_threads())
        torch.set_num_threads(self.threads)
        seed_everything(cfg.seed)
        guard.install_signal_handlers()
        self.hosts = list(launch.hosts)

        liveness.mark("data loading")
        self.data = load_on_every_rank(cfg.data, cfg.seed, launch.local_rank, self.world_size, device)
        self.data_fingerprint = self.data.fingerprint()
        agreement.check_ranks_agree(self.data_fingerprint)
        self.model = build_model(cfg, self.data.in_features).to(device)
        # Same initial weights on every rank (seeded above). The dropout masks and shifts are keyed to
        # the samples (mnist_ddp.model.sample_noise); the generators, per rank, serve nothing in training.
        torch.manual_seed(cfg.seed + self.rank)
        self.clock = timing.RankClock(device, cfg.log.rank_times)
        ddp_model = wrap_ddp(self.model, device, cfg.dist)
        if ddp_model is not self.model:  # backward computes the first layer's gradients last
            self.clock.watch_gradients(list(self.model.layers[0].parameters()))
        # Every rank's shard has the same length (padded), hence the same number of steps.
        self.shard_len = len(shard_indices(torch.arange(len(self.data.train_labels)), self.rank, self.world_size))
        self.steps_per_epoch = -(-self.shard_len // self.per_rank_batch)
        self.optimizer = build_optimizer(self.model.parameters(), tc, device, capturable=tc.cuda_graphs)
        self.schedule = build_schedule(self.optimizer, tc, tc.epochs * self.steps_per_epoch)
        self.guard = guard.StopGuard(self.model, device)
        fault = fault_injection.planned_fault(self.rank)
        self.sample_log = fault_injection.open_sample_log(self.rank)
        self.step = TrainStep(
            tc,
            self.data,
            self.model,
            ddp_model,
            self.optimizer,
            self.schedule,
            self.guard,
            self.per_rank_batch,
            fault,
            self.clock.gradients_reduced,
            self.bf16,
            cfg.seed,
        )
        self.wandb_run: Any = None

        self.run_dir = (
            choose_run_dir(cfg.run.dir, cfg.data.dataset, config_identity(to_dict(cfg))) if self.is_main else None
        )
        if self.run_dir is not None and not cfg.run.dir:  # config.yaml and snapshots record the chosen folder
            self.cfg = replace(cfg, run=replace(cfg.run, dir=str(self.run_dir)))
        # Rank 0's folder, known to every rank: where each writes its profile trace, or its stacks when stuck.
        self.shared_run_dir = Path(str(broadcast_from_rank0(str(self.run_dir))))
        liveness.tell_run_dir(self.shared_run_dir)
        self.profiler = None
        self.resumed_from: Snapshot | None = None
        self.progress = Progress()
        # For checkpoint.every_seconds: the clock starts with the run (a resume continues from a snapshot).
        self.last_snapshot_at, self.last_snapshot_step = time.monotonic(), -1

    def run(self) -> dict[str, Any]:
        """Hold run.dir, continue from its snapshot or start, train, write the outputs; rank 0 returns the summary."""
        lock = None
        with fail_together(self.device):
            if self.run_dir is not None:
                tracking.check_mode(self.cfg)
                lock = RunDirLock(self.run_dir)  # a second job in the same folder stops here
                for folder in (self.run_dir, snapshot_dir(self.run_dir), self.run_dir / "plots"):
                    if folder.is_dir():  # the ones a resumed run finds; a new one is made inside run.dir
                        check_writable(folder)
        # Once it exists (on this node: a multi-node run.dir may not be shared), tracebacks go there.
        keep_tracebacks_in(self.shared_run_dir if self.shared_run_dir.is_dir() else None)
        failed = True
        try:
            self.resumed_from = self.find_resume_point()
            if self.resumed_from:
                self.progress = self.resume(self.resumed_from)
            summary = self.train_and_report()
            failed = False
            return summary
        finally:
            if lock is not None:
                lock.release(failed)

    def find_resume_point(self) -> Snapshot | None:
        """Rank 0 finds and checks the snapshot to continue from; every rank gets a copy."""
        found = None
        with fail_together(self.device):
            if self.run_dir is not None:
                found = find_snapshot(self.cfg.resume, self.run_dir)
                check_one_timeline(self.cfg.resume, found, self.run_dir)
                if found:
                    check_compatible(found, to_dict(self.cfg), self.data.in_features, self.data_fingerprint)
        return broadcast_from_rank0(found)  # type: ignore[return-value]

    def resume(self, snapshot: Snapshot) -> Progress:
        """Load the snapshot's weights, optimizer, schedule and random streams; its progress."""
        self.model.load_state_dict(snapshot.model)
        load_optimizer_state(self.optimizer, self.schedule, snapshot.optimizer, snapshot.schedule)
        progress = snapshot.progress
        step, seed = progress.global_step, self.cfg.seed
        inexact = restore_streams(snapshot.host_rng, snapshot.rng, self.rank, self.world_size, seed, step, self.device)
        if inexact and self.is_main:
            say(f"{inexact}: the data order, dropout masks and shifts continue exactly (they belong to the samples)")
        if not self.is_main:
            progress.loss_carry = 0.0  # rank 0 carries the loss of the steps before the snapshot
        return progress

    def train_and_report(self) -> dict[str, Any]:
        """Train every remaining epoch and write the outputs; rank 0 returns the summary."""
        if self.run_dir is not None:
            atomic_write_text(self.run_dir / "config.yaml", to_yaml(self.cfg))
            metrics.write_metrics(self.run_dir, self.progress.records)
            self.announce()
        resume_id = self.resumed_from.wandb_run_id if self.resumed_from else None
        with tracking.tracked(self.cfg, self.run_dir, resume_id) as self.wandb_run:
            # Host-side values only in the loop: the losses stay on the device until the epoch ends.
            self.step_losses = torch.zeros(self.steps_per_epoch, device=self.device)
            self.batch_sizes = torch.full((self.steps_per_epoch,), float(self.per_rank_batch), device=self.device)
            self.batch_sizes[-1] = self.shard_len - (self.steps_per_epoch - 1) * self.per_rank_batch
            self.guard.start_at(self.progress.global_step)
            if self.cfg.train.cuda_graphs:
                self.step.capture(self.step_losses, self.shard_len)
            self.profiler = start_profiler(self.cfg.profile, self.shared_run_dir, self.rank, self.device)
            self.clock.profiling = self.profiler is not None
            counts = self.train_epochs()
            self.stop_profiler()
            return self.finish(counts)

    def stop_profiler(self) -> None:
        """End the profile (profile.steps > 0); rank 0 prints its top operations."""
        if self.profiler is None:
            return
        table = self.profiler.stop()
        self.profiler, self.clock.profiling = None, False
        if self.is_main and table:
            folder = self.shared_run_dir / "profile"
            say(f"profile: one trace per rank in {folder} (open in ui.perfetto.dev); rank 0's top operations:\n{table}")

    def precision(self) -> str:
        """What the forward pass computes in: 'bf16 autocast' or 'fp32'."""
        return "bf16 autocast" if self.bf16 else "fp32"

    def announce(self) -> None:
        """Rank 0's opening lines: data, model, ranks, where the outputs go, where it resumes."""
        data, p = self.data, self.progress
        widths = "-".join(map(str, [data.in_features, *self.cfg.model.hidden, 10]))
        say(
            f"{data.source}: {len(data.train_labels)} train / {len(data.test_labels)} test images; "
            f"model {widths} ({parameter_count(self.model):,} parameters); {self.world_size} rank(s) on"
            f" {self.device.type} ({self.backend if self.world_size > 1 else 'no process group'}),"
            f" {self.per_rank_batch} images per rank per step, {self.precision()} ({self.precision_reason});"
            f" outputs in {self.run_dir}"
        )
        if self.resumed_from:
            say(
                f"resuming from {self.resumed_from.path}: epoch {p.epoch}, step {p.step_in_epoch}"
                f" (global step {p.global_step})"
            )

    def train_epochs(self) -> EvalCounts | None:
        """The training loop; the last epoch's test counts (None when no epoch was left to run)."""
        p, cfg = self.progress, self.cfg
        counts = None
        while p.epoch <= cfg.train.epochs:
            self.model.train()
            started = time.perf_counter()
            bar = tqdm(
                total=self.steps_per_epoch,
                initial=p.step_in_epoch,
                desc=f"epoch {p.epoch}",
                leave=False,
                disable=not (self.is_main and cfg.log.progress and sys.stdout.isatty()),
            )
            logged_lrs: dict[int, float] = {}  # global step -> lr, for the steps whose loss is logged
            with syncs_reported(self.device):  # MNIST_DDP_SYNC_DEBUG: nothing here should wait for a GPU
                order = epoch_permutation(len(self.data.train_labels), cfg.seed, p.epoch)
                shard = shard_indices(to_device_without_waiting(order, self.device), self.rank, self.world_size)
                self.step_losses.zero_()
                self.step.start_epoch(shard, p.step_in_epoch)
                self.clock.loop_started()
                for step_in_epoch in range(p.step_in_epoch + 1, self.steps_per_epoch + 1):
                    batch = shard[(step_in_epoch - 1) * self.per_rank_batch : step_in_epoch * self.per_rank_batch]
                    self.take_step(batch, step_in_epoch - 1)
                    p.global_step, p.step_in_epoch = p.global_step + 1, step_in_epoch
                    bar.update()
                    if self.wandb_run is not None and p.global_step % cfg.log.every_steps == 0:
                        logged_lrs[p.global_step] = current_lr(self.optimizer, self.schedule, cfg.train.lr)
                    self.check_after_step()
                    if self.profiler is not None:
                        with self.clock.aside():  # the step that ends the window writes the trace
                            self.profiler.step()
                self.clock.loop_ended()
            bar.close()
            counts = self.end_epoch(started, logged_lrs) or counts
            liveness.steady()  # every phase has run once: the short liveness limit applies from here
        return counts

    def take_step(self, batch: torch.Tensor, position: int) -> None:
        """One training step, marked for the liveness watchdog (and a range while profiling)."""
        p = self.progress
        liveness.mark("step", p.epoch, p.global_step + 1)
        fault_injection.slow_phase("step", p.global_step + 1)
        if self.profiler is None:
            self.step(batch, p.global_step, self.step_losses, position)
        else:
            with torch.profiler.record_function("mnist_ddp/step"):
                self.step(batch, p.global_step, self.step_losses, position)
        fault_injection.log_samples(self.sample_log, p.global_step + 1, self.world_size, self.rank, batch)

    def check_after_step(self) -> None:
        """At a snapshot step agree at once and snapshot; at a check step act on the previous check,
        which may say that checkpoint.every_seconds have passed (on any rank's clock)."""
        step, ck = self.progress.global_step, self.cfg.checkpoint
        if ck.every_steps > 0 and step % ck.every_steps == 0:
            self.agree_and_snapshot()
        elif step % ck.check_every_steps == 0:
            due = 0 < ck.every_seconds <= time.monotonic() - self.last_snapshot_at
            with self.phase("agreement"):
                decision = self.guard.lagged(step, due)
            self.obey(decision)
            # Unless a snapshot was written since that check began (every rank knows the same steps).
            if decision.snapshot_due and decision.step is not None and self.last_snapshot_step < decision.step:
                self.snapshot()

    def phase(self, name: str):
        """A phase every rank runs (agreement, evaluation, snapshot): timed, marked, named in a profile."""
        return self.clock.phase(name, self.progress.epoch, self.progress.global_step)

    def agree_and_snapshot(self) -> None:
        """Agree without lag (a snapshot must not hold NaN), then snapshot, or stop as agreed."""
        with self.phase("agreement"):
            decision = self.guard.now(self.progress.global_step)
        self.obey(decision)
        self.snapshot()

    def obey(self, decision: guard.Decision) -> None:
        """Stop as every rank agreed: on NaN/inf without a snapshot, on a stop signal after one."""
        self.stop_if_diverged(decision)
        self.stop_if_asked(decision)

    def stop_if_diverged(self, decision: guard.Decision) -> None:
        """Raise Diverged when any rank saw a non-finite loss or weight; no snapshot is written."""
        if decision.first_bad_step is not None:
            kept = self.last_snapshot_step
            if kept < 0 and self.resumed_from is not None:
                kept = self.resumed_from.progress.global_step
            raise Diverged(diverged_text(decision.first_bad_step, self.progress.epoch, self.cfg, kept))

    def stop_if_asked(self, decision: guard.Decision) -> None:
        """After a stop signal on any rank: snapshot, requeue a preempted SLURM job, raise."""
        if not decision.stop:
            return
        step = self.progress.global_step
        path = self.snapshot()
        if self.world_size > 1:
            say(f"rank {self.rank}: stopping at global step {step}", sys.stderr)
        if decision.interrupted_by is not None:
            name = guard.SESSION_SIGNAL_NAMES[decision.interrupted_by]
            raise Interrupted(
                f"{name}: snapshot {path} at global step {step}; run the same command again to resume",
                decision.interrupted_by,
            )
        if self.is_main:
            guard.requeue_if_slurm(self.cfg.checkpoint.requeue)
        raise Preempted(
            f"stop signal received: snapshot {path} at global step {step}; run the same command again to resume"
        )

    def loss_sum_so_far(self) -> torch.Tensor:
        """This rank's training losses summed over the epoch's steps so far (plus rank 0's carried sum)."""
        p = self.progress
        done = slice(p.resumed_at, p.step_in_epoch)
        return (self.step_losses[done] * self.batch_sizes[done]).sum() + p.loss_carry

    def snapshot(self) -> Path | None:
        """Every rank calls this (it gathers RNG states and the loss); rank 0 writes the file."""
        with self.phase("snapshot"):
            path = self.write_snapshot()
        self.last_snapshot_at, self.last_snapshot_step = time.monotonic(), self.progress.global_step
        return path

    def write_snapshot(self) -> Path | None:
        """The snapshot's collectives on every rank, and rank 0's write."""
        rng = all_gather_tensors(device_rng_state(self.device).to(self.device))
        epoch_loss_sum = all_reduce_sum(self.loss_sum_so_far()).item()
        path = None
        if self.run_dir is not None:
            snapshot = Snapshot(
                progress=replace(self.progress, loss_carry=epoch_loss_sum),
                model=cpu_state_dict(self.model),
                optimizer=self.optimizer.state_dict(),
                schedule=self.schedule.state_dict() if self.schedule is not None else None,
                rng=[r.cpu() for r in rng],
                host_rng=host_rng_state(),
                config=to_dict(self.cfg),
                in_features=self.data.in_features,
                wandb_run_id=tracking.run_id(self.wandb_run),
                data=self.data_fingerprint,
            )
            path = save_snapshot(self.run_dir, snapshot, self.cfg.checkpoint.keep)
        barrier()
        return path

    def end_epoch(self, started: float, logged_lrs: dict[int, float]) -> EvalCounts | None:
        """Every train.eval_every_epochs: training loss over ranks, exact evaluation, agreement and
        rank 0's record; every checkpoint.every_epochs: agreement and a snapshot. The last epoch
        always does both. Returns the test counts when it evaluated."""
        p, tc, every = self.progress, self.cfg.train, self.cfg.checkpoint.every_epochs
        last = p.epoch == tc.epochs
        evaluate = last or p.epoch % tc.eval_every_epochs == 0
        snapshot = last or (every > 0 and p.epoch % every == 0)
        counts = train_loss = decision = None
        train_seconds, images = time.perf_counter() - started, self.images_trained()
        if evaluate:
            with self.phase("agreement"):
                train_loss = all_reduce_sum(self.loss_sum_so_far()).item() / (self.shard_len * self.world_size)
        self.log_step_losses(logged_lrs)
        if evaluate:
            with self.phase("evaluation"):
                counts = self.evaluate()
        if evaluate or snapshot:
            with self.phase("agreement"):
                decision = self.guard.now(p.global_step)
            self.stop_if_diverged(decision)  # before the record: a non-finite epoch is never recorded
        rank_times = self.gather_rank_times() if counts is not None else None
        if counts is not None and self.run_dir is not None:
            lr = current_lr(self.optimizer, self.schedule, tc.lr)
            record = metrics.epoch_record(p.epoch, train_loss, counts, images, train_seconds, lr)
            if rank_times is not None:
                record["rank_seconds"] = rank_times
                record["straggler"] = timing.straggler_record(rank_times, self.hosts, self.cfg.dist.straggler_factor)
            p.records.append(record)
            metrics.append_metrics(self.run_dir, record)
            say(metrics.format_epoch_line(record, tc.epochs))
            tracking.log(self.wandb_run, tracking.epoch_values(record, counts.per_class_accuracy), p.global_step)
        p.trained = {
            "epochs": p.trained["epochs"] + 1,
            "seconds": p.trained["seconds"] + train_seconds,
            "images": p.trained["images"] + images,
        }
        p.start_next_epoch()
        if decision is not None:
            self.stop_if_asked(decision)
        if snapshot:
            self.snapshot()
        return counts

    def gather_rank_times(self) -> dict[str, list[float]] | None:
        """Every rank's seconds per phase since the last record, on every rank (a collective; None when off)."""
        if not self.cfg.log.rank_times:
            return None
        mine = torch.tensor(self.clock.take(), dtype=torch.float64, device=self.device)
        return timing.rank_seconds([t.tolist() for t in all_gather_tensors(mine)])

    def log_step_losses(self, logged_lrs: dict[int, float]) -> None:
        """Rank 0 logs the per-step losses of the epoch's logged steps: the epoch's one transfer of
        them, made only when something logs them (a transfer waits for the device)."""
        if not logged_lrs:
            return
        losses, p = self.step_losses.tolist(), self.progress
        for step, lr in logged_lrs.items():  # the epoch's last step is global_step
            step_loss = losses[self.steps_per_epoch - 1 - (p.global_step - step)]
            tracking.log(self.wandb_run, {"train/loss": step_loss, "train/lr": lr}, step)

    def images_trained(self) -> int:
        """Training images this epoch's steps took, over all ranks, not counting DDP's padding."""
        p = self.progress
        padding = self.shard_len * self.world_size - len(self.data.train_labels)  # all in the last batches
        taken = max(0, self.shard_len - p.resumed_at * self.per_rank_batch) * self.world_size
        return max(0, taken - padding)

    def evaluate(self) -> EvalCounts:
        """Test counts over the whole test split, every image once across the ranks (a collective)."""
        # On the unwrapped module: a DDP forward outside training would prepare a gradient sync.
        return evaluate_across_ranks(
            self.model,
            self.data.test_images,
            self.data.test_labels,
            self.cfg.train.eval_batch_size,
            self.rank,
            self.world_size,
        )

    def finish(self, counts: EvalCounts | None) -> dict[str, Any]:
        """The final outputs: model.pt, summary.json, figures and the last line (rank 0)."""
        liveness.mark("final outputs")
        counts = counts or self.evaluate()  # None: resumed from a snapshot taken after the last epoch
        if fault_injection.print_hash_requested():
            say(f"parameter_hash rank={self.rank} {parameter_hash(self.model)}")
        peak_rss = all_gather_tensors(torch.tensor([metrics.peak_rss_mb()], device=self.device))
        if self.run_dir is None:
            return {}
        records = self.progress.records
        save_model(self.run_dir / "model.pt", self.model, to_dict(self.cfg), self.data.in_features)
        summary = metrics.build_summary(records, counts, self.world_size, self.progress.trained)
        rank_totals = metrics.rank_seconds_total(records, self.world_size)
        summary |= {
            "backend": self.backend if self.world_size > 1 else "none",
            "per_rank_batch_size": self.per_rank_batch,
            "threads_per_rank": self.threads,
            "precision": self.precision(),
            "precision_chosen_by": self.precision_reason,
            "peak_rss_mb_per_rank": [round(float(r.item()), 1) for r in peak_rss],
            "hosts": self.hosts,
            "rank_seconds": rank_totals,
            "straggler": timing.run_straggler(records, self.world_size),
        }
        metrics.write_summary(self.run_dir, summary)
        if self.cfg.log.plots:
            from mnist_ddp.observe import plots

            data = self.data
            try:
                figures = plots.write_run_plots(
                    records, counts, self.model, data.test_images, data.test_labels, self.run_dir / "plots", rank_totals
                )
            except OSError as e:  # fonts and image files to open: a low ulimit -n fails here, not in training
                raise output_error(self.run_dir / "plots", e) from None
            tracking.log_images(self.wandb_run, figures, self.progress.global_step)
        say(
            f"final test accuracy {100 * summary['test_accuracy']:.2f}% on {summary['test_examples']} images "
            f"(best {100 * summary['best_test_accuracy']:.2f}%), {summary['wall_seconds']:.1f}s since process start"
        )
        tracking.finish(self.wandb_run, summary)
        return summary


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
