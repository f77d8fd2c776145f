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


def set_device_rng_state(state: torch.Tensor, device: torch.device) -> None:
    """Undo :func:`device_rng_state`."""
    cpu_len = len(torch.get_rng_state())
    torch.set_rng_state(state[:cpu_len].clone())
    if device.type == "cuda":
        torch.cuda.set_rng_state(state[cpu_len:].clone(), device)


def restore_streams(
    host: dict[str, Any], per_rank: list[torch.Tensor], rank: int, world_size: int, seed: int, step: int, device
) -> bool:
    """Continue this rank's random streams where a snapshot of ``len(per_rank)`` ranks left them.

    With another world size the host streams (and so the data order) continue exactly, but
    the dropout masks cannot: each rank is reseeded from (seed, rank, step). Returns whether
    the restore was exact.
    """
    set_host_rng_state(host)
    if len(per_rank) == world_size:
        set_device_rng_state(per_rank[rank], device)
        return True
    torch.manual_seed(seed + rank + 1_000_003 * step)
    return False
