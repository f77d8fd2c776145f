"""The optimizer and the learning-rate schedule that the config asks for."""

from __future__ import annotations

from typing import Any

import torch

from mnist_ddp.config import TrainConfig


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
