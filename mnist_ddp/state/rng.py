"""Random streams: seeding every generator, and saving and restoring their states exactly.

States are kept as tensors and plain numbers (no pickled objects), so they travel in
snapshots that load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed every generator the run draws from."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def host_rng_state() -> dict[str, Any]:
    """numpy's and Python's generator states as tensors and numbers (no pickled objects)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
        "numpy_pos": int(pos),
        "numpy_gauss": [int(has_gauss), float(cached)],
        "python_version": int(version),
        "python_state": torch.tensor(internal, dtype=torch.int64),
        "python_gauss": gauss_next,
    }


def set_host_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`host_rng_state`."""
    has_gauss, cached = state["numpy_gauss"]
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], int(has_gauss), cached))
    internal = tuple(int(v) for v in state["python_state"].tolist())
    random.setstate((state["python_version"], internal, state["python_gauss"]))


def device_rng_state(device: torch.device) -> torch.Tensor:
    """This rank's torch generator state (CPU, plus the CUDA device's when it has one) as bytes."""
    parts = [torch.get_rng_state()]
    if device.type == "cuda":
        parts.append(torch.cuda.get_rng_state(device))
    return torch.cat(parts)


def saved_device_type(state: torch.Tensor) -> str:
    """The device type a :func:`device_rng_state` came from: 'cuda' when it holds a CUDA part."""
    return "cuda" if len(state) > len(torch.get_rng_state()) else "cpu"


def restore_plan(saved: str, device_type: str) -> tuple[bool, bool]:
    """(restore the saved CUDA generator state, the streams continue exactly) for a snapshot
    saved on ``saved`` and resumed on ``device_type``. The CPU generator state is always restored.

    CPU -> CUDA: there is no CUDA state to restore, so the CUDA generator takes a new stream;
    CUDA -> CPU: the CUDA state has nowhere to go. Training draws nothing from these generators
    (the masks and shifts are keyed to the samples, :mod:`mnist_ddp.model.sample_noise`), so this only
    decides what the resume line says.
    """
    return saved == "cuda" and device_type == "cuda", saved == device_type


def set_device_rng_state(state: torch.Tensor, device: torch.device) -> None:
    """Undo :func:`device_rng_state` (the CUDA part only when both the state and ``device`` have one)."""
    cpu_len = len(torch.get_rng_state())
    torch.set_rng_state(state[:cpu_len].clone())
    if restore_plan(saved_device_type(state), device.type)[0]:
        torch.cuda.set_rng_state(state[cpu_len:].clone(), device)


def restore_streams(
    host: dict[str, Any], per_rank: list[torch.Tensor], rank: int, world_size: int, seed: int, step: int, device
) -> str | None:
    """Continue this rank's random streams where a snapshot of ``len(per_rank)`` ranks left them.

    The host streams (and so the data order) always continue exactly. The torch generators
    continue exactly only with the same world size and device type; otherwise each rank's are
    reseeded from (seed, rank, step). Training's masks and shifts come from none of them (they are
    keyed to the samples). Returns None when exact, else what changed (for the resume line).
    """
    set_host_rng_state(host)
    if len(per_rank) == world_size:
        state = per_rank[rank]
        set_device_rng_state(state, device)
        saved = saved_device_type(state)
        if restore_plan(saved, device.type)[1]:
            return None
        if device.type == "cuda":  # CPU -> CUDA: no CUDA state was saved
            torch.cuda.manual_seed(seed + rank + 1_000_003 * step)
        return f"snapshot saved on {saved}, resuming on {device.type}"
    torch.manual_seed(seed + rank + 1_000_003 * step)  # every generator, CUDA's included
    return f"snapshot saved with {len(per_rank)} ranks, resuming with {world_size}"
