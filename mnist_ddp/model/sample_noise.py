"""Randomness that belongs to the sample, not to the rank: dropout masks and augmentation
shifts are functions of (seed, global step, the sample's index in the dataset, unit).

The ranks of a step together take the same global batch at any world size (a prefix of the
epoch's permutation, split by rank), so keyed randomness gives every sample the same mask and
the same shift whatever the number of ranks, after any resume, eagerly or in a CUDA graph, and
with or without gradient accumulation. Each value comes from a counter-based hash (Wellons'
``lowbias32`` on 32-bit words held in int64 tensors) computed by tensor operations on the
device: no generator state to save, restore or keep apart per rank. CPU and GPU compute the
same integers, so the same masks.
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFF_FFFF
# Odd 32-bit multipliers for a sample's index and the step; a constant per use (dropout, shift).
STEP_MULTIPLIER, SAMPLE_MULTIPLIER, DRAW_MULTIPLIER = 0x9E37_79B1, 0x85EB_CA6B, 0x7FEB_352D
DROPOUT_STREAM, SHIFT_STREAM = 0x68E3_1DA4, 0xB529_7A4D


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective scramble of 32-bit words (non-negative int64 below 2**32) into 32-bit words.

    Every product is reduced to its low 32 bits, which int64 arithmetic keeps exactly even when
    the full product wraps past 2**63.
    """
    x = x ^ (x >> 16)
    x = (x * 0x7FEB_352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846C_A68B) & MASK32
    return x ^ (x >> 16)


def sample_keys(seed: int, step: torch.Tensor, samples: torch.Tensor, stream: int) -> torch.Tensor:
    """One 32-bit key per sample for global step ``step`` (an int64 tensor: 0-dim, or one step
    per sample) and one use (``stream``)."""
    return mix32((samples * SAMPLE_MULTIPLIER + step * STEP_MULTIPLIER + ((seed ^ stream) & MASK32)) & MASK32)


def epoch_keys(seed: int, shard: torch.Tensor, first_step: int, batch_size: int, stream: int) -> torch.Tensor:
    """The keys of a whole epoch's shard at once: the sample at position ``p`` is trained at global
    step ``first_step + p // batch_size``. Equal, bit for bit, to :func:`sample_keys` of each step's
    batch; computed once per epoch, outside the step, it takes 15 kernels out of every step."""
    steps = first_step + torch.arange(len(shard), device=shard.device) // batch_size
    return sample_keys(seed, steps, shard, stream)


def unit_words(units: int, device: torch.device | None = None) -> torch.Tensor:
    """One scrambled 32-bit word per unit, made once: a sample's key meets each of them."""
    return mix32(torch.arange(units, dtype=torch.int64, device=device) + DROPOUT_STREAM)


def keep_mask(keys: torch.Tensor, units: torch.Tensor, threshold: int) -> torch.Tensor:
    """(samples, units) booleans: a unit is kept when its 16-bit draw (0..65535) is at least ``threshold``.

    The draw is bits 16-31 of (sample key ^ unit word) times an odd constant, both words already
    scrambled by :func:`mix32`: those bits depend on all 32 below them. Compared in place, without
    shifting them down: 4 elementwise kernels over the activations, about what drawing them from
    the generator costs.
    """
    words = ((keys.view(-1, 1) ^ units.view(1, -1)) * DRAW_MULTIPLIER) & 0xFFFF_0000
    return words >= threshold << 16


def shift_offsets(keys: torch.Tensor, max_shift: int) -> torch.Tensor:
    """(samples, 2) offsets in 0..2*max_shift (rows, columns) from each sample's shift key."""
    span = 2 * max_shift + 1
    return torch.stack([(keys & 0xFFFF) % span, (keys >> 16) % span], dim=1)
