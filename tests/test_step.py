"""The training step's options: what CUDA graphs need of the config and the device."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from mnist_ddp.base.errors import InputError
from mnist_ddp.config.schema import Config, DistConfig, ModelConfig, TrainConfig
from mnist_ddp.data.splits import Splits
from mnist_ddp.model.mlp import build_model
from mnist_ddp.model.optimizer import build_optimizer
from mnist_ddp.observe.profiling import kernel_ops
from mnist_ddp.parallel.ddp import wrap_ddp
from mnist_ddp.training.guard import StopGuard
from mnist_ddp.training.step import StepParts, TrainStep, check_step_options, smoothed_targets

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


def test_under_ddp_gradients_set_to_none_cost_one_kernel_each(tmp_path):
    # One gloo rank is enough for DDP's buckets. Gradients set to None: DDP writes each new one
    # into its bucket view scaled by 1/world size (one mul each). Zeroed in place instead, each
    # would cost a zeroing, an add into the view and an in-place divide: measured, not assumed.
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        tc = TrainConfig(batch_size=32, schedule="none")
        g = torch.Generator().manual_seed(0)
        images, labels = torch.randint(0, 256, (128, 64), dtype=torch.uint8, generator=g), torch.arange(128) % 10
        data = Splits(images, labels, images[:10], labels[:10], "random")
        model = build_model(Config(train=tc, model=ModelConfig(hidden=[16])), 64)
        ddp_model = wrap_ddp(model, torch.device("cpu"), DistConfig())
        optimizer = build_optimizer(model.parameters(), tc, torch.device("cpu"))
        guard = StopGuard(model, torch.device("cpu"))
        step = TrainStep(tc, StepParts(data, model, ddp_model, optimizer, None, guard, tc.batch_size))
        step.start_epoch(torch.arange(128), 0, 0)
        for position in (0, 1):  # DDP rebuilds its buckets once, after the first step
            step(position, position, torch.zeros(4))
        views = [p.grad.data_ptr() for p in model.parameters()]
        ops = kernel_ops(lambda: step(2, 2, torch.zeros(4)))
        assert [p.grad.data_ptr() for p in model.parameters()] == views  # still the bucket views
        assert "_foreach_zero_" not in ops and ops["div_"] == 0, ops
    finally:
        dist.destroy_process_group()
