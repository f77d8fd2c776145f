"""torch's SGD and AdamW without TorchDynamo: the same weights and state, and no import."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from mnist_ddp.model.eager_optimizers import EagerAdamW, EagerSGD


def train(optimizer_class: type, **options: object) -> tuple[torch.Tensor, dict]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    optimizer = optimizer_class(model.parameters(), **options)
    for _ in range(5):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.randn(8, 20)), torch.randint(0, 4, (8,))).backward()
        optimizer.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()]), optimizer.state_dict()


@pytest.mark.parametrize(
    "eager, torchs, options",
    [
        (EagerSGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
        (EagerSGD, torch.optim.SGD, {"lr": torch.tensor(0.1), "fused": True}),
        (EagerAdamW, torch.optim.AdamW, {"lr": 0.01, "betas": (0.9, 0.95), "fused": True}),
        (EagerAdamW, torch.optim.AdamW, {"lr": torch.tensor(0.01), "capturable": True, "fused": True}),
        (EagerAdamW, torch.optim.AdamW, {"lr": 0.01, "foreach": True}),
    ],
)
def test_the_same_weights_and_state_as_torchs_own(eager, torchs, options):
    mine, my_state = train(eager, **options)
    theirs, their_state = train(torchs, **options)
    assert torch.equal(mine, theirs)
    assert my_state["param_groups"] == their_state["param_groups"]
    for key, state in their_state["state"].items():
        assert all(torch.equal(my_state["state"][key][name], value) for name, value in state.items())
    resumed = eager(torch.nn.Linear(1, 1).parameters(), **options)
    assert resumed.state_dict()["param_groups"][0]["params"] == [0, 1]
    assert torch.is_grad_enabled()


def test_a_whole_training_step_never_imports_torch_dynamo():
    # A fresh interpreter: build, step with a schedule, zero, save and load the state.
    code = """
import sys, torch
from mnist_ddp.model.eager_optimizers import EagerAdamW, EagerSGD
model = torch.nn.Linear(4, 2)
for optimizer in (EagerAdamW(model.parameters(), lr=0.01, fused=True), EagerSGD(model.parameters(), lr=0.1)):
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step(); schedule.step(); optimizer.zero_grad()
    optimizer.load_state_dict(optimizer.state_dict())
print("torch._dynamo" in sys.modules)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False"]
