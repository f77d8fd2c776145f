"""Randomness that belongs to the sample: masks and shifts as functions of (seed, step, sample, unit)."""

from __future__ import annotations

import pytest
import torch

from mnist_ddp.data.order import epoch_permutation, shard_indices
from mnist_ddp.model.mlp import BitsDropout
from mnist_ddp.model.sample_noise import (
    DROPOUT_STREAM,
    SHIFT_STREAM,
    epoch_keys,
    keep_mask,
    mix32,
    sample_keys,
    shift_offsets,
    unit_words,
)

STEP = torch.tensor(41)


def test_mix32_is_a_32_bit_bijection_that_spreads_neighbours():
    x = torch.arange(1 << 16, dtype=torch.int64)
    y = mix32(x)
    assert y.min() >= 0 and y.max() < 2**32 and len(torch.unique(y)) == len(x)  # no collisions
    # Neighbouring inputs differ in about half of their 32 output bits.
    flips = ((y[1:] ^ y[:-1]).unsqueeze(1) >> torch.arange(32)) & 1
    assert abs(flips.float().sum(1).mean().item() - 16) < 0.5
    assert mix32(torch.tensor([2**32 - 1])).item() < 2**32  # products past 2**63 keep their low bits


def test_a_samples_key_depends_on_seed_step_sample_and_stream_only():
    samples = torch.tensor([5, 17, 60_000 - 1])
    keys = sample_keys(3, STEP, samples, DROPOUT_STREAM)
    assert torch.equal(keys, sample_keys(3, STEP.clone(), samples.clone(), DROPOUT_STREAM))
    assert torch.equal(keys[1:], sample_keys(3, STEP, samples[1:], DROPOUT_STREAM))  # not its neighbours
    for other in (
        sample_keys(4, STEP, samples, DROPOUT_STREAM),
        sample_keys(3, STEP + 1, samples, DROPOUT_STREAM),
        sample_keys(3, STEP, samples + 1, DROPOUT_STREAM),
        sample_keys(3, STEP, samples, SHIFT_STREAM),
    ):
        assert (other != keys).all()


def test_a_global_batch_split_over_ranks_gets_the_masks_it_gets_whole():
    # 96 samples on 1 rank, or as 2 x 48 and 3 x 32 strided shards (DistributedSampler's split).
    drop = BitsDropout(0.5, 128).train()
    batch = torch.randperm(1000, generator=torch.Generator().manual_seed(0))[:96]
    x = torch.ones(96, 128)
    whole = drop(x, sample_keys(0, STEP, batch, DROPOUT_STREAM))
    for ranks in (2, 3):
        parts = [drop(x[r::ranks], sample_keys(0, STEP, batch[r::ranks], DROPOUT_STREAM)) for r in range(ranks)]
        for r, part in enumerate(parts):
            assert torch.equal(part, whole[r::ranks])
    masks = (whole == 0).float()
    assert 0.45 < masks.mean() < 0.55 and (masks[0] != masks[1]).any()  # rows differ
    assert (masks[:, 0] != masks[:, 1]).any()  # units differ


def test_shift_offsets_cover_every_offset_evenly():
    keys = sample_keys(0, STEP, torch.arange(25_000), SHIFT_STREAM)
    offsets = shift_offsets(keys, 2)
    counts = torch.bincount(offsets[:, 0] * 5 + offsets[:, 1], minlength=25)
    assert len(counts) == 25 and counts.min() > 800 and counts.max() < 1200  # 1000 expected each


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_an_epochs_keys_computed_at_once_are_each_steps_keys_bit_for_bit(ranks):
    # A whole epoch of 1,000 samples in global batches of 96 (the last one short), from global
    # step 123 on: the keys and masks planned once equal those computed step by step.
    per_rank, first = 96 // ranks, 123
    units = unit_words(128)
    for rank in range(ranks):
        shard = shard_indices(epoch_permutation(1000, 7, 3), rank, ranks, 96)
        planned = {stream: epoch_keys(7, shard, first, per_rank, stream) for stream in (DROPOUT_STREAM, SHIFT_STREAM)}
        steps = -(-len(shard) // per_rank)
        for step in range(steps):
            batch = slice(step * per_rank, (step + 1) * per_rank)
            for stream, keys in planned.items():
                each = sample_keys(7, torch.tensor(first + step), shard[batch], stream)
                assert torch.equal(keys[batch], each)
            masks = keep_mask(planned[DROPOUT_STREAM][batch], units, 32768)
            assert torch.equal(
                masks, keep_mask(sample_keys(7, torch.tensor(first + step), shard[batch], DROPOUT_STREAM), units, 32768)
            )
        assert steps * per_rank >= len(shard) > (steps - 1) * per_rank
