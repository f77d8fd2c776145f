"""The optimizer and the learning-rate schedule that the config asks for.

On CUDA with a schedule computed on the host (none, linear) the learning rate is a float32
device tensor and the kernels are fused, whether or not the step is captured in a CUDA graph:
a captured step needs the rate on the device, and both fused kernels read a tensor rate as
float32 while they read a Python rate as a double (``float32(0.006) != 0.006``), so one
representation for both is what lets the eager and the graphed step end bit-identical.
:func:`step_schedule` fills the rate in place from the host, and :func:`current_lr` reads it
from the schedule's own arithmetic rather than from the device, which would wait for the GPU.
"""

from __future__ import annotations

from typing import Any

import torch

from mnist_ddp.config.schema import TrainConfig
from mnist_ddp.model.eager_optimizers import EagerAdamW, EagerSGD

HOST_SCHEDULES = ("none", "linear")  # schedules that change only the rate, by host arithmetic


def uses_device_rate(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether the learning rate is a device tensor: on CUDA, whenever the step could be captured."""
    return device.type == "cuda" and cfg.schedule in HOST_SCHEDULES


def build_optimizer(
    params: Any,
    cfg: TrainConfig,
    device: torch.device,
    capturable: bool = False,
    device_rate: bool | None = None,
) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov, weight decay) or AdamW (fused kernel where torch has one).

    ``capturable``: its step may be captured in a CUDA graph (AdamW's flag; the kernel is the
    same). ``device_rate``: the rate as a float32 tensor on ``device`` with fused kernels
    (default: :func:`uses_device_rate`; a test passes True to build the CUDA kind on the CPU).
    """
    if device_rate is None:
        device_rate = uses_device_rate(cfg, device) or capturable
    lr: float | torch.Tensor = torch.tensor(cfg.lr, dtype=torch.float32, device=device) if device_rate else cfg.lr
    if cfg.optimizer == "sgd":
        return EagerSGD(
            params,
            lr=lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
            # foreach SGD turns a tensor rate into a host number each step (a GPU sync); fused does not.
            fused=True if device_rate or device.type == "cuda" else None,
        )
    return EagerAdamW(
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


def step_schedule(schedule: Any) -> None:
    """Advance the schedule by one optimizer step.

    For the linear schedule over a device rate this does what ``LambdaLR.step`` does (the
    same host arithmetic, the rate filled in place, the same state) without the copy of the
    device rate that ``LRScheduler.step`` keeps as its last rate since torch 2.10: one kernel
    and one allocation per step, for nothing this job reads.
    """
    if schedule is None:
        return
    group = schedule.optimizer.param_groups[0]
    if not (type(schedule) is torch.optim.lr_scheduler.LambdaLR and isinstance(group["lr"], torch.Tensor)):
        schedule.step()
        return
    schedule._step_count += 1
    schedule.last_epoch += 1
    rate = schedule.base_lrs[0] * schedule.lr_lambdas[0](schedule.last_epoch)
    group["lr"].fill_(rate)
    schedule._last_lr = [rate]


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
