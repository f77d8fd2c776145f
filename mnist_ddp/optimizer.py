"""The optimizer and the learning-rate schedule that the config asks for.

For a CUDA graph that holds the optimizer step (``capturable``), the learning rate is a device
tensor: the schedule fills it in place from the host, and :func:`current_lr` reads its value
from the schedule's own arithmetic rather than from the device, which would wait for the GPU.
"""

from __future__ import annotations

from typing import Any

import torch

from mnist_ddp.config import TrainConfig


def build_optimizer(
    params: Any, cfg: TrainConfig, device: torch.device, capturable: bool = False
) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov, weight decay) or AdamW (fused kernel where torch has one).

    ``capturable``: every step of it can be captured in a CUDA graph (fused kernels, the
    learning rate a device tensor, AdamW's step count on the device).
    """
    lr: float | torch.Tensor = torch.tensor(cfg.lr, device=device) if capturable else cfg.lr
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
            fused=True if capturable else None,
        )
    return torch.optim.AdamW(
        params,
        lr=lr,
        betas=(0.9, cfg.beta2),
        weight_decay=cfg.weight_decay,
        fused=device.type in ("cuda", "cpu"),
        capturable=capturable,
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

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        # Host numbers, also when the rate is a device tensor: the scheduler then fills it in place.
        schedule.base_lrs = [cfg.lr for _ in schedule.base_lrs]
        return schedule
    return None


def current_lr(optimizer: torch.optim.Optimizer, schedule: Any, configured: float) -> float:
    """The learning rate of the next step, as a host number, without waiting for the device.

    ``configured`` is train.lr: the rate itself when there is no schedule.
    """
    lr = optimizer.param_groups[0]["lr"]
    if not isinstance(lr, torch.Tensor):
        return lr
    if isinstance(schedule, torch.optim.lr_scheduler.LambdaLR):
        return schedule.base_lrs[0] * schedule.lr_lambdas[0](schedule.last_epoch)
    return configured


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, schedule: Any, optimizer_state: dict[str, Any], schedule_state: Any
) -> None:
    """Load a snapshot's optimizer and schedule state, keeping this run's kind of optimizer.

    A snapshot saved with CUDA graphs on (device-tensor rate, capturable) resumes with them off
    (or on the CPU) and the other way round: only the values come from the snapshot.
    """
    mine = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(optimizer_state)
    for group, own in zip(optimizer.param_groups, mine, strict=True):
        saved_lr = group["lr"]
        for key in ("capturable", "fused", "foreach", "differentiable"):
            if key in own:
                group[key] = own[key]
        if isinstance(own["lr"], torch.Tensor):
            own["lr"].fill_(float(saved_lr))
            group["lr"] = own["lr"]
        else:
            group["lr"] = float(saved_lr)
    if schedule is not None:
        schedule.load_state_dict(schedule_state)
        schedule.base_lrs = [float(lr) for lr in schedule.base_lrs]
