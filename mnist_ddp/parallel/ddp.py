"""The model wrapped in DistributedDataParallel, with its bucket size and communication hook."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from mnist_ddp.config.schema import DistConfig


def cast_hook(dtype: torch.dtype):
    """A DDP comm hook that all-reduces each gradient bucket in ``dtype`` (half the bytes of fp32).

    torch's own bf16 hook refuses anything but NCCL; this one works on gloo too.
    """

    # No annotations: DDP compares them with the real classes, and here they would be strings.
    def hook(state, bucket):
        buffer = bucket.buffer()
        compressed = buffer.to(dtype).div_(dist.get_world_size())
        future = dist.all_reduce(compressed, async_op=True).get_future()

        def decompress(done: torch.futures.Future) -> torch.Tensor:
            buffer.copy_(done.value()[0])
            return buffer

        return future.then(decompress)

    return hook


def wrap_ddp(model: torch.nn.Module, device: torch.device, cfg: DistConfig) -> torch.nn.Module:
    """``model`` under DistributedDataParallel with the configured buckets and comm hook; itself for world size 1."""
    if not dist.is_initialized():
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    ddp_model = DistributedDataParallel(
        model, device_ids=device_ids, gradient_as_bucket_view=True, bucket_cap_mb=cfg.bucket_cap_mb
    )
    register_comm_hook(ddp_model, cfg.comm_hook, cfg.powersgd_rank)
    return ddp_model


def register_comm_hook(ddp_model: DistributedDataParallel, hook: str, powersgd_rank: int) -> None:
    """Compress DDP's gradient all_reduce: bf16/fp16 halve the bytes sent, PowerSGD sends low-rank factors.

    PowerSGD keeps error-feedback state that snapshots do not hold, so a resumed run is close to,
    not bit-identical with, an uninterrupted one.
    """
    if hook in ("bf16", "fp16"):
        ddp_model.register_comm_hook(None, cast_hook(torch.bfloat16 if hook == "bf16" else torch.float16))
    elif hook == "powersgd":
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook  # only when used

        # Plain all_reduce for the first steps, as the PowerSGD paper recommends.
        state = powerSGD_hook.PowerSGDState(
            process_group=None, matrix_approximation_rank=powersgd_rank, start_powerSGD_iter=10
        )
        ddp_model.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
