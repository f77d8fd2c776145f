"""The training step's options: what CUDA graphs need of the config and the device."""

from __future__ import annotations

import pytest
import torch

from mnist_ddp.base.errors import InputError
from mnist_ddp.config.schema import TrainConfig
from mnist_ddp.training.step import check_step_options, smoothed_targets

CUDA = torch.device("cuda", 0)  # only compared, never used: no GPU is needed here


def test_graphs_with_a_schedule_that_changes_more_than_the_rate_are_refused():
    for schedule in ("onecycle", "cosine"):
        with pytest.raises(InputError, match=f"works with train\\.schedule=none or linear, not {schedule}"):
            check_step_options(TrainConfig(cuda_graphs=True, schedule=schedule), CUDA, 1)
    check_step_options(TrainConfig(cuda_graphs=True, schedule="linear"), CUDA, 1)
    check_step_options(TrainConfig(cuda_graphs=True, schedule="none", optimizer="sgd"), CUDA, 1)


@pytest.mark.parametrize(
    "device, world_size, accumulate",
    [(torch.device("cpu"), 1, 1), (CUDA, 2, 1), (CUDA, 1, 2)],
)
def test_graphs_need_one_cuda_rank_without_accumulation(device, world_size, accumulate):
    with pytest.raises(InputError, match=r"train\.cuda_graphs=true needs one CUDA rank and train\.accumulate_steps=1"):
        check_step_options(TrainConfig(cuda_graphs=True, accumulate_steps=accumulate), device, world_size)


def test_cross_entropy_against_smoothed_rows_is_label_smoothed_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(256, 10, generator=generator, requires_grad=True)
    labels = torch.randint(0, 10, (256,), generator=generator)
    for smoothing in (0.1, 0.3):
        expected = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=smoothing)
        (expected_grad,) = torch.autograd.grad(expected, logits)
        got = torch.nn.functional.cross_entropy(logits, smoothed_targets(smoothing, 10, torch.device("cpu"))[labels])
        (got_grad,) = torch.autograd.grad(got, logits)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
        torch.testing.assert_close(got_grad, expected_grad, rtol=1e-5, atol=1e-9)
    assert smoothed_targets(0.0, 10, torch.device("cpu")) is None
