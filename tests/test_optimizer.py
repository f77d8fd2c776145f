"""The optimizer and schedule: what each config builds, and state that moves between kinds of optimizer."""

from __future__ import annotations

import pytest
import torch

from mnist_ddp.config.schema import TrainConfig
from mnist_ddp.model.optimizer import (
    build_optimizer,
    build_schedule,
    current_lr,
    load_optimizer_state,
    step_schedule,
    uses_device_rate,
)


def test_onecycle_peaks_at_lr_and_ends_near_zero():
    params = [torch.nn.Parameter(torch.zeros(1))]
    cfg = TrainConfig(lr=0.01, schedule="onecycle")
    optimizer = build_optimizer(params, cfg, torch.device("cpu"))
    schedule = build_schedule(optimizer, cfg, total_steps=100)
    lrs = []
    for _ in range(100):
        optimizer.step()
        lrs.append(optimizer.param_groups[0]["lr"])
        schedule.step()
    assert max(lrs) == pytest.approx(0.01, rel=1e-3) and lrs[-1] < 1e-5


def test_linear_schedule_warms_up_then_decays_to_zero():
    params = [torch.nn.Parameter(torch.zeros(1))]
    cfg = TrainConfig(lr=0.01, schedule="linear", warmup_fraction=0.1)
    optimizer = build_optimizer(params, cfg, torch.device("cpu"))
    schedule = build_schedule(optimizer, cfg, total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] == pytest.approx(0.001) and lrs[9] == pytest.approx(0.01) == max(lrs)
    assert lrs[:10] == sorted(lrs[:10]) and lrs[9:] == sorted(lrs[9:], reverse=True)
    assert lrs[-1] == pytest.approx(0.01 / 90) and optimizer.param_groups[0]["lr"] == 0
    assert optimizer.param_groups[0]["betas"] == (0.9, cfg.beta2)


def test_onecycle_leaves_plain_sgd_without_momentum():
    params = [torch.nn.Parameter(torch.zeros(1))]
    cfg = TrainConfig(optimizer="sgd", lr=0.01, momentum=0.0, schedule="onecycle")
    optimizer = build_optimizer(params, cfg, torch.device("cpu"))
    schedule = build_schedule(optimizer, cfg, total_steps=10)
    for _ in range(5):
        optimizer.step()
        schedule.step()
        assert optimizer.param_groups[0]["momentum"] == 0.0


def test_sgd_gets_momentum_and_nesterov():
    params = [torch.nn.Parameter(torch.zeros(1))]
    cfg = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, schedule="none")
    optimizer = build_optimizer(params, cfg, torch.device("cpu"))
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.SGD)
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.1, 0.9, True, 1e-4)
    assert build_schedule(optimizer, cfg, 10) is None


def trained_sgd(lr) -> tuple[torch.optim.Optimizer, object]:
    params = [torch.nn.Parameter(torch.ones(3))]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
    schedule = build_schedule(optimizer, TrainConfig(lr=0.1, schedule="linear", warmup_fraction=0.5), total_steps=8)
    for _ in range(3):
        params[0].grad = torch.ones(3)
        optimizer.step()
        schedule.step()
    return optimizer, schedule


@pytest.mark.parametrize("saved_lr, resumed_lr", [(0.1, torch.tensor(0.1)), (torch.tensor(0.1), 0.1)])
def test_state_moves_between_a_host_rate_and_a_device_tensor_rate(saved_lr, resumed_lr):
    # A snapshot of a CUDA-graph run (rate as a tensor) resumes eagerly, and the other way round.
    saved, saved_schedule = trained_sgd(saved_lr)
    resumed, resumed_schedule = trained_sgd(resumed_lr)
    load_optimizer_state(resumed, resumed_schedule, saved.state_dict(), saved_schedule.state_dict())
    group = resumed.param_groups[0]
    assert isinstance(group["lr"], torch.Tensor) == isinstance(resumed_lr, torch.Tensor)  # this run's kind
    assert float(group["lr"]) == pytest.approx(float(saved.param_groups[0]["lr"]))  # the snapshot's value
    assert torch.equal(
        resumed.state[group["params"][0]]["momentum_buffer"],
        saved.state[saved.param_groups[0]["params"][0]]["momentum_buffer"],
    )
    assert resumed_schedule.last_epoch == 3 and all(isinstance(b, float) for b in resumed_schedule.base_lrs)


def test_current_lr_reads_the_schedule_not_the_device():
    optimizer, schedule = trained_sgd(torch.tensor(0.1))
    assert current_lr(optimizer, schedule, 0.1) == pytest.approx(float(optimizer.param_groups[0]["lr"]))
    constant = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=torch.tensor(0.25))
    assert current_lr(constant, None, 0.25) == 0.25
    assert current_lr(torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.5), None, 0.5) == 0.5


def test_the_rate_is_a_device_tensor_on_cuda_whenever_the_step_could_be_captured():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")  # only compared: no GPU needed
    for schedule in ("none", "linear"):
        assert uses_device_rate(TrainConfig(schedule=schedule), cuda)  # graphs on or off: one representation
        assert not uses_device_rate(TrainConfig(schedule=schedule), cpu)
    for schedule in ("cosine", "onecycle"):  # graphs refuse these; the rate stays a host number
        assert not uses_device_rate(TrainConfig(schedule=schedule), cuda)
    for name in ("sgd", "adamw"):
        params = [torch.nn.Parameter(torch.zeros(3))]
        optimizer = build_optimizer(params, TrainConfig(optimizer=name), cpu, device_rate=True)
        group = optimizer.param_groups[0]
        assert group["lr"].dtype == torch.float32 and group["fused"]


@pytest.mark.parametrize("device_rate", [False, True])
def test_step_schedule_does_what_lambda_lr_step_does_without_copying_the_rate(device_rate):
    cfg = TrainConfig(lr=0.01, schedule="linear", warmup_fraction=0.2)
    mine, theirs = (
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg, torch.device("cpu"), device_rate=device_rate)
        for _ in range(2)
    )
    mine_schedule, their_schedule = build_schedule(mine, cfg, 50), build_schedule(theirs, cfg, 50)
    rate = mine.param_groups[0]["lr"]
    for _ in range(50):
        mine.step(), theirs.step()
        step_schedule(mine_schedule)
        their_schedule.step()
        assert float(mine.param_groups[0]["lr"]) == float(theirs.param_groups[0]["lr"])
    if device_rate:
        assert mine.param_groups[0]["lr"] is rate  # filled in place: a captured graph reads this tensor
    mine_state, their_state = mine_schedule.state_dict(), their_schedule.state_dict()
    assert mine_state.keys() == their_state.keys()
    assert mine_state["last_epoch"] == their_state["last_epoch"] == 50
    assert mine_state["_step_count"] == their_state["_step_count"]
    assert [float(r) for r in mine_state["_last_lr"]] == [float(r) for r in their_state["_last_lr"]]
