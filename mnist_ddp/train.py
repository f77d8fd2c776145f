"""Train the MNIST dropout MLP: ``python -m mnist_ddp.train [--config FILE] [key=value ...]``.

Read top to bottom: config -> data on the device -> model, optimizer, schedule -> for each
epoch: shuffle, step through index batches, score the whole test split, log -> save.
"""

from __future__ import annotations

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

from mnist_ddp import metrics
from mnist_ddp.atomic import atomic_write_text
from mnist_ddp.checkpoint import save_model
from mnist_ddp.config import Config, TrainConfig, parse_args, to_dict, to_yaml
from mnist_ddp.data import epoch_permutation, load_splits, shard_indices
from mnist_ddp.errors import InputError
from mnist_ddp.evaluation import evaluate
from mnist_ddp.model import MLP, parameter_count


def select_device(name: str) -> torch.device:
    """The device the config asks for; 'auto' takes CUDA when present."""
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("train.device=cuda but no CUDA device is available; use train.device=auto or cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def build_optimizer(params: Any, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov, weight decay) or AdamW (fused kernel where torch has one)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type in ("cuda", "cpu"))


def build_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> Any:
    """The learning-rate schedule, stepped once per batch; None for a constant rate."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if cfg.schedule == "onecycle":
        # OneCycle also cycles momentum; it must not switch momentum on for plain SGD.
        cycle_momentum = cfg.optimizer == "adamw" or cfg.momentum > 0
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total_steps, cycle_momentum=cycle_momentum
        )
    return None


def create_run_dir(cfg: Config) -> Path:
    """The output folder: run.dir, or a new runs/<timestamp> folder."""
    if cfg.run.dir:
        run_dir = Path(cfg.run.dir)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / stamp
        suffix = 1
        while run_dir.exists():
            run_dir = Path("runs") / f"{stamp}-{suffix}"
            suffix += 1
        cfg.run.dir = str(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create run.dir={run_dir} ({e.strerror}); choose a writable folder") from None
    return run_dir


def seed_everything(seed: int) -> None:
    """Seed every generator the run draws from (initialisation, dropout)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(cfg: Config) -> dict[str, Any]:
    """Run the whole job described by ``cfg`` and return its summary."""
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = select_device(tc.device)
    seed_everything(cfg.seed)

    data = load_splits(cfg.data, cfg.seed).to(device)
    model = MLP(data.in_features, list(cfg.model.hidden), cfg.model.dropout).to(device)
    forward = torch.compile(model) if tc.compile else model

    rank, world_size = 0, 1
    per_rank_batch = tc.batch_size // world_size
    steps_per_epoch = -(-len(shard_indices(torch.arange(len(data.train_labels)), rank, world_size)) // per_rank_batch)
    optimizer = build_optimizer(model.parameters(), tc, device)
    schedule = build_schedule(optimizer, tc, tc.epochs * steps_per_epoch)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if tc.bf16 else nullcontext()

    run_dir = create_run_dir(cfg)
    atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
    widths = "-".join(map(str, [data.in_features, *cfg.model.hidden, 10]))
    print(
        f"{data.source}: {len(data.train_labels)} train / {len(data.test_labels)} test images; "
        f"model {widths} ({parameter_count(model):,} parameters) on {device}; outputs in {run_dir}",
        flush=True,
    )

    records: list[dict[str, Any]] = []
    for epoch in range(1, tc.epochs + 1):
        model.train()
        order = epoch_permutation(len(data.train_labels), cfg.seed, epoch).to(device)
        shard = shard_indices(order, rank, world_size)
        loss_sum = torch.zeros((), device=device)
        started = time.perf_counter()
        for start in range(0, len(shard), per_rank_batch):
            batch = shard[start : start + per_rank_batch]
            images, labels = data.train_images[batch], data.train_labels[batch]
            with autocast:
                loss = F.cross_entropy(forward(images).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            loss_sum += loss.detach() * len(batch)
        train_loss = loss_sum.item() / len(shard)  # the epoch's one host sync
        train_seconds = time.perf_counter() - started

        counts = evaluate(forward, data.test_images, data.test_labels, tc.eval_batch_size)
        lr = optimizer.param_groups[0]["lr"]
        records.append(metrics.epoch_record(epoch, train_loss, counts, len(shard), train_seconds, lr))
        metrics.write_metrics(run_dir, records)
        print(metrics.format_epoch_line(records[-1], tc.epochs), flush=True)

    save_model(run_dir / "model.pt", model, to_dict(cfg), data.in_features)
    summary = metrics.build_summary(records, counts, world_size)
    metrics.write_summary(run_dir, summary)
    print(
        f"final test accuracy {100 * summary['test_accuracy']:.2f}% on {summary['test_examples']} images "
        f"(best {100 * summary['best_test_accuracy']:.2f}%), {summary['wall_seconds']:.1f}s since process start",
        flush=True,
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; bad input prints one line and returns 2."""
    try:
        cfg = parse_args(argv, prog="python -m mnist_ddp.train")
        train(cfg)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
