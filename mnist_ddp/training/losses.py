"""The epoch's training losses: one value per step on the device (read once an epoch, when
logged or recorded), weighted by each step's images when summed."""

from __future__ import annotations

import torch

from mnist_ddp.state.checkpoint import Progress


class EpochLosses:
    """This rank's per-step losses of the current epoch and the images each step took."""

    def __init__(self, steps_per_epoch: int, per_rank_batch: int, shard_len: int, device: torch.device) -> None:
        self.values = torch.zeros(steps_per_epoch, device=device)
        self.images = torch.full((steps_per_epoch,), float(per_rank_batch), device=device)
        self.images[-1] = shard_len - (steps_per_epoch - 1) * per_rank_batch

    def sum_so_far(self, p: Progress) -> torch.Tensor:
        """This rank's losses summed over the epoch's steps so far (plus rank 0's carried sum)."""
        done = slice(p.resumed_at, p.step_in_epoch)
        return (self.values[done] * self.images[done]).sum() + p.loss_carry
