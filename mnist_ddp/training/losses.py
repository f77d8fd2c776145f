"""The epoch's training losses: one value per step on the device (read once an epoch, when
logged or recorded), weighted by each step's images when summed."""

from __future__ import annotations

import torch

from mnist_ddp.data.order import step_images
from mnist_ddp.state.checkpoint import Progress


class EpochLosses:
    """This rank's per-step losses of the current epoch, and each step's weight: its global
    batch's images over the ranks. A rank's loss is scaled by its share of the global batch
    (mnist_ddp.training.step), so the ranks' sum of loss times weight is the step's loss summed
    over its images, whatever the number of ranks."""

    def __init__(self, batch_size: int, epoch_images: int, world_size: int, device: torch.device) -> None:
        steps = -(-epoch_images // batch_size)
        self.values = torch.zeros(steps, device=device)
        weights = [step_images(step, batch_size, epoch_images) / world_size for step in range(steps)]
        self.images = torch.tensor(weights, dtype=torch.float32, device=device)

    def sum_so_far(self, p: Progress) -> torch.Tensor:
        """This rank's losses summed over the epoch's steps so far (plus rank 0's carried sum)."""
        done = slice(p.resumed_at, p.step_in_epoch)
        return (self.values[done] * self.images[done]).sum() + p.loss_carry
