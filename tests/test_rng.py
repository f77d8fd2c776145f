"""Random streams: which generator states a snapshot restores, on the device type it came from and on another."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mnist_ddp.state import rng


def test_host_rng_round_trips_without_pickles(tmp_path):
    random.seed(3), np.random.seed(3)
    state = rng.host_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand())
    rng.set_host_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand()) == expected


def test_device_rng_round_trips():
    torch.manual_seed(5)
    state = rng.device_rng_state(torch.device("cpu"))
    expected = torch.rand(3)
    rng.set_device_rng_state(state, torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    "saved, device, plan",
    [
        ("cpu", "cpu", (False, True)),  # exact
        ("cuda", "cuda", (True, True)),  # exact: CPU and CUDA generators both restored
        ("cpu", "cuda", (False, False)),  # no CUDA state saved: the GPU's masks take a new stream
        ("cuda", "cpu", (False, False)),  # the CPU state is restored, but the masks came from CUDA
    ],
)
def test_restore_plan_by_device_type(saved, device, plan):
    assert rng.restore_plan(saved, device) == plan


def fake_cuda_state() -> torch.Tensor:
    """A CPU generator state followed by 16 bytes standing for a CUDA generator's (seed and offset)."""
    return torch.cat([torch.get_rng_state(), torch.arange(16, dtype=torch.uint8)])


def test_the_saved_device_type_is_read_from_the_state():
    assert rng.saved_device_type(rng.device_rng_state(torch.device("cpu"))) == "cpu"
    assert rng.saved_device_type(fake_cuda_state()) == "cuda"


def test_same_device_and_world_size_resume_exactly():
    torch.manual_seed(5)
    host, state = rng.host_rng_state(), rng.device_rng_state(torch.device("cpu"))
    expected = torch.rand(3)
    assert rng.restore_streams(host, [state], 0, 1, seed=0, step=10, device=torch.device("cpu")) is None
    assert torch.equal(torch.rand(3), expected)


def test_a_gpu_snapshot_on_the_cpu_restores_the_cpu_stream_and_says_the_masks_cannot_continue():
    torch.manual_seed(5)
    host, state = rng.host_rng_state(), fake_cuda_state()
    expected = torch.rand(3)
    reason = rng.restore_streams(host, [state], 0, 1, seed=0, step=10, device=torch.device("cpu"))
    assert reason == "snapshot saved on cuda, resuming on cpu"
    assert torch.equal(torch.rand(3), expected)  # the CPU generator continues where it was


def test_another_world_size_reseeds_from_seed_rank_and_step():
    torch.manual_seed(5)
    host, state = rng.host_rng_state(), rng.device_rng_state(torch.device("cpu"))
    reason = rng.restore_streams(host, [state, state], 1, 3, seed=7, step=100, device=torch.device("cpu"))
    assert reason == "snapshot saved with 2 ranks, resuming with 3"
    drawn = torch.rand(3)
    torch.manual_seed(7 + 1 + 1_000_003 * 100)
    assert torch.equal(drawn, torch.rand(3))
