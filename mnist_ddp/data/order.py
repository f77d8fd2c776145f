"""Each epoch's order of the training images, each rank's shard of it, and the shifts that augment it."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from mnist_ddp.data.readers import PIXEL_MEAN, PIXEL_STD


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of ``range(n)`` for one epoch: the same on every rank, new each epoch."""
    generator = torch.Generator().manual_seed(seed + epoch)  # DistributedSampler's seeding
    return torch.randperm(n, generator=generator)


def to_device_without_waiting(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on ``device``; to a GPU through pinned memory, without waiting for it.

    A copy from pageable memory waits until the GPU has run everything queued before it: at
    every epoch's start that drained the queue of steps. From pinned memory the copy is queued
    like a kernel, so the host builds the next epoch's order while the GPU still trains.
    """
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def shard_indices(order: torch.Tensor, rank: int, world_size: int, batch_size: int) -> torch.Tensor:
    """This rank's share of an epoch's order, step by step: of each step's global batch (the next
    ``batch_size`` images of the order; the last step takes what is left) the images at places
    rank, rank + W, rank + 2W, ... So the ranks of a step take one prefix of the order whatever
    their number W: ``ceil(B/W)`` images each or ``floor(B/W)``, every image of the epoch once
    and no padding. Where W divides B this is ``order[rank::W]``, DistributedSampler's split.
    """
    return order[shard_positions(len(order), batch_size, rank, world_size, order.device)]


@functools.cache
def shard_positions(n: int, batch_size: int, rank: int, world_size: int, device: torch.device) -> torch.Tensor:
    """The places in an epoch's order of ``n`` images that :func:`shard_indices` takes, on
    ``device``: computed once on the host (``nonzero`` on a GPU would wait for it) and copied
    without waiting, so that taking a shard is one gather inside the epoch's no-sync region."""
    within_batch = torch.arange(n) % batch_size
    return to_device_without_waiting(torch.nonzero(within_batch % world_size == rank).flatten(), device)


def rank_batch(batch_size: int, world_size: int, rank: int) -> int:
    """The images ``rank`` takes of a full global batch of ``batch_size``: ceil(B/W) or floor(B/W)."""
    return (batch_size - rank + world_size - 1) // world_size


def step_images(step_in_epoch: int, batch_size: int, epoch_images: int) -> int:
    """The images the whole global batch of an epoch's step (0-based) takes: the last one is short."""
    return max(0, min(batch_size, epoch_images - step_in_epoch * batch_size))


def shift_images(images: torch.Tensor, max_shift: int, offsets: torch.Tensor) -> torch.Tensor:
    """Each square, flattened, normalized image moved by its own offset (``offsets``: one row and one
    column offset per image, 0..2*max_shift: each axis moves by up to ``max_shift`` pixels either way);
    pixels moved in from outside are background (0 before normalizing).

    One gather on the device: cheap next to the matmuls, so augmentation costs ~5% of a CPU step.
    """
    n, pixels = images.shape
    side, wide = math.isqrt(pixels), math.isqrt(pixels) + 2 * max_shift
    background = -PIXEL_MEAN / PIXEL_STD
    padded = F.pad(images.view(n, side, side), (max_shift,) * 4, value=background).view(n, wide * wide)
    grid = torch.arange(side, device=images.device)
    window = (grid.view(side, 1) * wide + grid.view(1, side)).view(1, pixels)  # the unshifted image
    return padded.gather(1, window + offsets[:, :1] * wide + offsets[:, 1:])
