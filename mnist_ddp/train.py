"""Train the MNIST dropout MLP: ``python -m mnist_ddp.train [--config FILE] [key=value ...]``.

The same code runs as one process and under ``torchrun`` (or ``srun``). Read top to bottom:
config -> process group -> data on the device -> model (DDP-wrapped when there are several
ranks), optimizer, schedule -> for each epoch: shuffle, take this rank's shard, step through
index batches, score this rank's share of the test split and sum the counts over ranks ->
rank 0 logs and saves.
"""

from __future__ import annotations

import os
import random
import sys
import time
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from mnist_ddp import checkpoint, cuda_graphs, distributed, fault_injection, guard, metrics, tracking
from mnist_ddp.atomic import atomic_write_text
from mnist_ddp.config import Config, TrainConfig, parse_args, to_dict, to_yaml
from mnist_ddp.data import (
    Splits,
    epoch_permutation,
    load_splits,
    normalize_pixels,
    prepare_files,
    shard_indices,
    shift_images,
)
from mnist_ddp.entry import run_command, say
from mnist_ddp.errors import InputError
from mnist_ddp.evaluation import evaluate_across_ranks
from mnist_ddp.model import MLP, parameter_count, parameter_hash


def build_optimizer(params: Any, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov, weight decay) or AdamW (fused kernel where torch has one)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(
        params, lr=cfg.lr, betas=(0.9, cfg.beta2), weight_decay=cfg.weight_decay, fused=device.type in ("cuda", "cpu")
    )


def build_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> Any:
    """The learning-rate schedule, stepped once per global step; None for a constant rate."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if cfg.schedule == "onecycle":
        # OneCycle also cycles momentum; it must not switch momentum on for plain SGD.
        cycle_momentum = cfg.optimizer == "adamw" or cfg.momentum > 0
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total_steps, cycle_momentum=cycle_momentum
        )
    if cfg.schedule == "linear":
        warmup = max(1, round(cfg.warmup_fraction * total_steps))

        def factor(step: int) -> float:
            return min((step + 1) / warmup, max(0.0, (total_steps - step) / max(1, total_steps - warmup)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return None


def per_rank_batch_size(batch_size: int, world_size: int) -> int:
    """Each rank's share of the global batch, which must split evenly."""
    if batch_size % world_size:
        raise InputError(
            f"train.batch_size={batch_size} does not split evenly across {world_size} ranks;"
            f" use a multiple of {world_size}"
        )
    return batch_size // world_size


def check_step_options(tc: TrainConfig, per_rank_batch: int, device: torch.device, world_size: int) -> None:
    """Gradient accumulation and CUDA graphs each need a setting they can work with."""
    if per_rank_batch % tc.accumulate_steps:
        raise InputError(
            f"train.accumulate_steps={tc.accumulate_steps} does not split the {per_rank_batch} images per rank"
            " per step evenly; use a divisor of train.batch_size / ranks"
        )
    if tc.cuda_graphs and (device.type != "cuda" or world_size > 1 or tc.accumulate_steps > 1):
        raise InputError(
            "train.cuda_graphs=true needs one CUDA rank and train.accumulate_steps=1"
            f" (here: {world_size} rank(s) on {device.type}, accumulate_steps={tc.accumulate_steps});"
            " set train.cuda_graphs=false"
        )


def check_fits_ranks(data: Splits, world_size: int) -> None:
    """Every rank needs at least one training image of its own."""
    if len(data.train_labels) < world_size:
        raise InputError(
            f"{len(data.train_labels)} training images cannot be shared by {world_size} ranks;"
            " start fewer processes or use a larger dataset"
        )


def choose_run_dir(cfg: Config) -> Path:
    """The output folder: run.dir, else runs/<torchrun run id>, else a new runs/<timestamp> folder.

    Under torchrun the run id stays the same across elastic restarts, so restarted workers find
    their own snapshots. Nothing is created here.
    """
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    if cfg.run.dir:
        return Path(cfg.run.dir)
    if run_id and run_id != "none":
        run_dir = Path("runs") / run_id
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / stamp
        suffix = 1
        while run_dir.exists():
            run_dir = Path("runs") / f"{stamp}-{suffix}"
            suffix += 1
    cfg.run.dir = str(run_dir)
    return run_dir


def create_run_dir(run_dir: Path) -> None:
    """Create the output folder, or explain why it cannot be."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create run.dir={run_dir} ({e.strerror}); choose a writable folder") from None


def seed_everything(seed: int) -> None:
    """Seed every generator the run draws from."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_data_everywhere(cfg: Config, launch: distributed.Launch, device: torch.device) -> Splits:
    """Download once per node (local rank 0), then read on every rank; a failure anywhere stops all."""
    error = None
    if launch.local_rank == 0:
        try:
            prepare_files(cfg.data)
        except InputError as e:
            error = e
    distributed.raise_unless_all_ok(error, device)  # also the barrier the other local ranks wait at
    data, error = None, None
    try:
        data = load_splits(cfg.data, cfg.seed)
        check_fits_ranks(data, launch.world_size)
    except InputError as e:
        error = e
    distributed.raise_unless_all_ok(error, device)
    assert data is not None
    return data.to(device)


def resume_state(cfg: Config, run_dir: Path | None, in_features: int, device: torch.device) -> dict | None:
    """Rank 0 finds and checks the snapshot to continue from; every rank gets a copy."""
    state, error = None, None
    if run_dir is not None:
        try:
            found = checkpoint.find_snapshot(cfg.resume, run_dir)
            if found:
                path, state = found
                checkpoint.check_compatible(state, to_dict(cfg), in_features, path)
                state["path"] = str(path)
        except InputError as e:
            error = e
    distributed.raise_unless_all_ok(error, device)
    return distributed.broadcast_from_rank0(state)  # type: ignore[return-value]


def restore_rng(state: dict, launch: distributed.Launch, seed: int, device: torch.device) -> None:
    """Continue each rank's random stream (dropout) where the snapshot left it."""
    checkpoint.set_host_rng_state(state["host_rng"])
    if state["world_size"] == launch.world_size:
        checkpoint.set_device_rng_state(state["rng"][launch.rank], device)
    else:
        # Another world size: the order of the data continues exactly, the dropout masks cannot.
        torch.manual_seed(seed + launch.rank + 1_000_003 * state["global_step"])
        if launch.rank == 0:
            print(f"warning: snapshot saved with {state['world_size']} ranks, resuming with {launch.world_size}")


def train(cfg: Config, launch: distributed.Launch, device: torch.device, backend: str) -> dict[str, Any]:
    """Run the whole job described by ``cfg`` on this rank; rank 0 returns the summary."""
    tc, ck, rank, world_size = cfg.train, cfg.checkpoint, launch.rank, launch.world_size
    is_main = rank == 0
    per_rank_batch = per_rank_batch_size(tc.batch_size, world_size)
    check_step_options(tc, per_rank_batch, device, world_size)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    seed_everything(cfg.seed)
    guard.install_signal_handlers()

    data = load_data_everywhere(cfg, launch, device)
    model = MLP(data.in_features, list(cfg.model.hidden), cfg.model.dropout).to(device)
    # Same initial weights on every rank (seeded above); different dropout masks per rank.
    torch.manual_seed(cfg.seed + rank)
    ddp_model = model
    if world_size > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        ddp_model = DistributedDataParallel(
            model, device_ids=device_ids, gradient_as_bucket_view=True, bucket_cap_mb=cfg.dist.bucket_cap_mb
        )
        distributed.register_comm_hook(ddp_model, cfg.dist.comm_hook, cfg.dist.powersgd_rank)
    forward = torch.compile(ddp_model) if tc.compile else ddp_model

    # Every rank's shard has the same length (padded), hence the same number of steps.
    shard_len = len(shard_indices(torch.arange(len(data.train_labels)), rank, world_size))
    steps_per_epoch = -(-shard_len // per_rank_batch)
    optimizer = build_optimizer(model.parameters(), tc, device)
    schedule = build_schedule(optimizer, tc, tc.epochs * steps_per_epoch)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if tc.bf16 else nullcontext()
    fault = fault_injection.planned_fault(rank)

    def batch_loss(batch: torch.Tensor) -> torch.Tensor:
        """Mean loss over the images at indices ``batch`` (shifted when train.augment_shift > 0)."""
        images = normalize_pixels(data.train_images[batch])
        if tc.augment_shift:
            images = shift_images(images, tc.augment_shift)
        with autocast:
            logits = forward(images).float()
        return F.cross_entropy(logits, data.train_labels[batch], label_smoothing=tc.label_smoothing)

    def loss_and_grads(batch: torch.Tensor) -> torch.Tensor:
        """Gradients of the batch's mean loss into .grad, from accumulate_steps micro-batches.

        DDP all-reduces the gradients during the last micro-batch's backward only (no_sync).
        """
        parts = batch.split(len(batch) // tc.accumulate_steps if len(batch) >= tc.accumulate_steps else 1)
        total = torch.zeros((), device=device)
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            with nullcontext() if last or world_size == 1 else ddp_model.no_sync():
                loss = batch_loss(part) * (len(part) / len(batch))
                loss = fault_injection.inject(fault, global_step, loss)
                loss.backward()  # DDP averages the gradients across ranks here (last micro-batch)
            total += loss.detach()
        return total

    run_dir = choose_run_dir(cfg) if is_main else None
    resumed = resume_state(cfg, run_dir, data.in_features, device)
    epoch, skip_steps, global_step, records, loss_carry = 1, 0, 0, [], 0.0
    if resumed:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        if schedule is not None:
            schedule.load_state_dict(resumed["schedule"])
        restore_rng(resumed, launch, cfg.seed, device)
        epoch, skip_steps, global_step = resumed["epoch"], resumed["step_in_epoch"], resumed["global_step"]
        records, loss_carry = resumed["records"], resumed["epoch_loss_sum"] if is_main else 0.0
    error = None
    if is_main:
        try:
            create_run_dir(run_dir)
        except InputError as e:
            error = e
    distributed.raise_unless_all_ok(error, device)
    if is_main:
        atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
        widths = "-".join(map(str, [data.in_features, *cfg.model.hidden, 10]))
        print(
            f"{data.source}: {len(data.train_labels)} train / {len(data.test_labels)} test images; "
            f"model {widths} ({parameter_count(model):,} parameters); {world_size} rank(s) on {device.type}"
            f" ({backend if world_size > 1 else 'no process group'}), {per_rank_batch} images per rank per step;"
            f" outputs in {run_dir}",
            flush=True,
        )
        if resumed:
            print(f"resuming from {resumed['path']}: epoch {epoch}, step {skip_steps} (global step {global_step})")
    wandb_run = tracking.start(cfg, run_dir, resumed and resumed.get("wandb_run_id")) if is_main else None

    def snapshot(epoch: int, step_in_epoch: int) -> Path | None:
        """Every rank calls this (it gathers RNG states and the loss); rank 0 writes the file."""
        rng = distributed.all_gather_tensors(checkpoint.device_rng_state(device).to(device))
        epoch_loss_sum = distributed.all_reduce_sum(loss_sum_so_far(step_in_epoch)).item()
        path = None
        if is_main:
            state = {
                "model": checkpoint.cpu_state_dict(model),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict() if schedule is not None else None,
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "global_step": global_step,
                "epoch_loss_sum": epoch_loss_sum,
                "records": records,
                "rng": [r.cpu() for r in rng],
                "host_rng": checkpoint.host_rng_state(),
                "world_size": world_size,
                "in_features": data.in_features,
                "config": to_dict(cfg),
                "wandb_run_id": tracking.run_id(wandb_run),
            }
            path = checkpoint.save_snapshot(run_dir, state, ck.keep)
        distributed.barrier()
        return path

    def loss_sum_so_far(step_in_epoch: int) -> torch.Tensor:
        """Sum of this rank's training losses over the epoch's first ``step_in_epoch`` steps."""
        done = slice(skip_steps, step_in_epoch)
        return (step_losses[done] * batch_sizes[done]).sum() + loss_carry

    def act_on(decision: guard.Decision, epoch: int, step_in_epoch: int) -> None:
        """Stop as every rank agreed: on NaN/inf without a snapshot, on a stop signal after one."""
        if decision.first_bad_step is not None:
            raise guard.Diverged(
                f"non-finite loss or weights at step {decision.first_bad_step} (epoch {epoch}); stopped without"
                f" writing a snapshot, the last good one stays in {checkpoint.snapshot_dir(Path(cfg.run.dir))};"
                f" lower train.lr (now {tc.lr}) or turn off train.bf16"
            )
        if not decision.stop:
            return
        path = snapshot(epoch, step_in_epoch)
        if world_size > 1:
            say(f"rank {rank}: stopping at global step {global_step}", sys.stderr)
        if is_main:
            guard.requeue_if_slurm(ck.requeue)
        raise guard.Preempted(
            f"stop signal received: snapshot {path} at global step {global_step}; run the same command again to resume"
        )

    def check_now(epoch: int, step_in_epoch: int, pending: guard.PendingCheck | None) -> None:
        """Agree at once (before a snapshot: it must not hold NaN), then snapshot, or stop as agreed."""
        if pending is not None:
            guard.finish_check(pending)  # superseded: the agreement below sees everything it saw
        act_on(guard.agree(first_bad, model, global_step), epoch, step_in_epoch)
        snapshot(epoch, step_in_epoch)

    try:
        first_bad = torch.full((), guard.NO_BAD_STEP, dtype=torch.int64, device=device)
        graphed_step = None
        if tc.cuda_graphs:
            graphed_step = cuda_graphs.capture_loss_and_grads(batch_loss, per_rank_batch, model, device)
        # Host-side values only in the loop: the losses stay on the device until the epoch ends.
        step_losses = torch.zeros(steps_per_epoch, device=device)
        batch_sizes = torch.full((steps_per_epoch,), float(per_rank_batch), device=device)
        batch_sizes[-1] = shard_len - (steps_per_epoch - 1) * per_rank_batch
        counts, pending = None, None
        while epoch <= tc.epochs:
            model.train()
            order = epoch_permutation(len(data.train_labels), cfg.seed, epoch).to(device)
            shard = shard_indices(order, rank, world_size)
            step_losses.zero_()
            logged_lrs: dict[int, float] = {}  # global step -> lr, for the steps whose loss is logged
            started = time.perf_counter()
            bar = tqdm(
                total=steps_per_epoch,
                initial=skip_steps,
                desc=f"epoch {epoch}",
                leave=False,
                disable=not (is_main and cfg.log.progress and sys.stdout.isatty()),
            )
            for step_in_epoch in range(skip_steps + 1, steps_per_epoch + 1):
                batch = shard[(step_in_epoch - 1) * per_rank_batch : step_in_epoch * per_rank_batch]
                if graphed_step is not None and len(batch) == per_rank_batch:
                    loss = graphed_step(batch)
                else:
                    # With CUDA graphs the .grad tensors belong to the graph: zero them, keep them.
                    optimizer.zero_grad(set_to_none=graphed_step is None)
                    loss = loss_and_grads(batch)
                optimizer.step()
                if schedule is not None:
                    schedule.step()
                step_losses[step_in_epoch - 1] = loss.detach()
                first_bad = guard.track_loss(first_bad, loss.detach(), global_step)
                global_step += 1
                bar.update()
                if is_main and global_step % cfg.log.every_steps == 0:
                    logged_lrs[global_step] = optimizer.param_groups[0]["lr"]
                snapshot_due = ck.every_steps > 0 and global_step % ck.every_steps == 0
                if snapshot_due:
                    check_now(epoch, step_in_epoch, pending)
                    pending = None
                elif global_step % ck.check_every_steps == 0:
                    # Act on the previous check's result and queue this one: no waiting on the device.
                    if pending is not None:
                        act_on(guard.finish_check(pending), epoch, step_in_epoch)
                    pending = guard.start_check(first_bad, model, global_step)
            bar.close()
            trained = (steps_per_epoch - skip_steps) * per_rank_batch * world_size
            loss_sum = loss_sum_so_far(steps_per_epoch)
            train_loss = distributed.all_reduce_sum(loss_sum).item() / (shard_len * world_size)
            train_seconds = time.perf_counter() - started
            if is_main and logged_lrs:  # the epoch's one transfer of per-step losses
                losses = step_losses.tolist()
                for step, lr in logged_lrs.items():  # the epoch's last step is global_step
                    step_loss = losses[steps_per_epoch - 1 - (global_step - step)]
                    tracking.log(wandb_run, {"train/loss": step_loss, "train/lr": lr}, step)

            # On the unwrapped module: a DDP forward outside training would prepare a gradient sync.
            counts = evaluate_across_ranks(
                model, data.test_images, data.test_labels, tc.eval_batch_size, rank, world_size
            )
            if is_main:
                lr = optimizer.param_groups[0]["lr"]
                records.append(metrics.epoch_record(epoch, train_loss, counts, trained, train_seconds, lr))
                metrics.write_metrics(run_dir, records)
                print(metrics.format_epoch_line(records[-1], tc.epochs), flush=True)
                tracking.log(wandb_run, tracking.epoch_values(records[-1], counts.per_class_accuracy), global_step)
            epoch, skip_steps, loss_carry = epoch + 1, 0, 0.0
            check_now(epoch, 0, pending)  # the last in-epoch check, if one is queued, is superseded
            pending = None

        if counts is None:  # resumed from a snapshot taken after the last epoch
            counts = evaluate_across_ranks(
                model, data.test_images, data.test_labels, tc.eval_batch_size, rank, world_size
            )
        if fault_injection.print_hash_requested():
            say(f"parameter_hash rank={rank} {parameter_hash(model)}")
        peak_rss = distributed.all_gather_tensors(torch.tensor([metrics.peak_rss_mb()], device=device))
        if not is_main:
            return {}
        checkpoint.save_model(run_dir / "model.pt", model, to_dict(cfg), data.in_features)
        summary = metrics.build_summary(records, counts, world_size)
        summary |= {
            "backend": backend if world_size > 1 else "none",
            "per_rank_batch_size": per_rank_batch,
            "peak_rss_mb_per_rank": [round(float(r.item()), 1) for r in peak_rss],
        }
        metrics.write_summary(run_dir, summary)
        if cfg.log.plots:
            from mnist_ddp import plots  # matplotlib: half a second of import, after the training

            figures = plots.write_run_plots(
                records, counts, model, data.test_images, data.test_labels, run_dir / "plots"
            )
            tracking.log_images(wandb_run, figures, global_step)
        print(
            f"final test accuracy {100 * summary['test_accuracy']:.2f}% on {summary['test_examples']} images "
            f"(best {100 * summary['best_test_accuracy']:.2f}%), {summary['wall_seconds']:.1f}s since process start",
            flush=True,
        )
        tracking.finish(wandb_run, summary)
        return summary
    except BaseException:
        tracking.finish(wandb_run, {}, failed=True)
        raise


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; see README for the exit codes."""
    return run_command(lambda: parse_args(argv, prog="python -m mnist_ddp.train"), train)


if __name__ == "__main__":
    sys.exit(main())
