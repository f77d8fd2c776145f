"""What the launcher says: rank, world size and rendezvous address (torchrun's variables, else a
bare srun's), and the device, backend and threads each rank takes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from mnist_ddp.base.errors import InputError


@dataclass(frozen=True)
class Launch:
    """This process's place in the job, as its launcher described it."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    launcher: str = "none"  # torchrun | slurm | none
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    local_world_size: int = 1  # the ranks torchrun started on this node (1 for each bare srun task)
    hosts: tuple[str, ...] = ()  # every rank's host name, in rank order (known once the ranks agreed)


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[03-05,9],cpu1' -> 'gpu03'."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?([^,]*)", nodelist.strip())
    if not match:
        raise InputError(f"cannot read a host from SLURM_JOB_NODELIST={nodelist!r}; set MASTER_ADDR")
    prefix, ranges, suffix = match.groups()
    first = re.split(r"[,-]", ranges)[0] if ranges else ""
    return prefix + first + suffix


def env_int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    """An integer launcher variable; a value that is not one is an InputError naming it."""
    value = env.get(name)
    if value is None or value == "":
        if default is None:
            raise InputError(f"{name} is not set; start the job with torchrun or srun, which set it")
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(
            f"{name}={value!r} is not a whole number; it comes from the launcher (torchrun, srun): fix or unset it"
        ) from None


def read_launch(env: Mapping[str, str] = os.environ) -> Launch:
    """Rank and rendezvous address from torchrun's variables, else a bare ``srun``'s, else world size 1."""
    if "RANK" in env and "WORLD_SIZE" in env:
        launch = Launch(
            rank=env_int(env, "RANK"),
            local_rank=env_int(env, "LOCAL_RANK", 0),
            world_size=env_int(env, "WORLD_SIZE"),
            launcher="torchrun",
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=env_int(env, "MASTER_PORT", 29500),
            local_world_size=env_int(env, "LOCAL_WORLD_SIZE", 1),
        )
    elif env_int(env, "SLURM_NTASKS", 1) > 1 and "SLURM_PROCID" in env:
        # srun starts every task itself: derive one address and port that all tasks agree on.
        job_id = env_int(env, "SLURM_JOB_ID", 0)
        launch = Launch(
            rank=env_int(env, "SLURM_PROCID"),
            local_rank=env_int(env, "SLURM_LOCALID", 0),
            world_size=env_int(env, "SLURM_NTASKS"),
            launcher="slurm",
            master_addr=env.get("MASTER_ADDR") or first_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")),
            master_port=env_int(env, "MASTER_PORT", 20000 + job_id % 20000),
        )
    else:
        return Launch()
    if not (0 <= launch.rank < launch.world_size and launch.local_rank >= 0):
        raise InputError(
            f"rank {launch.rank} (local rank {launch.local_rank}) does not fit a world of {launch.world_size} ranks;"
            f" check the {launch.launcher} launch variables"
        )
    if not 0 < launch.master_port < 65536:
        raise InputError(f"MASTER_PORT={launch.master_port} is not a TCP port; choose one in 1-65535")
    return launch


def cuda_index(launch: Launch, visible: int, share: bool = False) -> int:
    """Which of the ``visible`` CUDA devices this rank uses.

    A task that sees exactly one device (``srun --gpus-per-task=1``, or GPUs bound by cgroups)
    uses it, whatever its local rank; torchrun's ranks share the node's devices, rank i taking
    device i. More ranks than devices is an error (NCCL refuses two ranks on one GPU), unless
    ``share`` (dist.backend=gloo asked for by name): then the ranks take the devices in turn.
    """
    if visible == 1 and launch.local_world_size == 1:
        return 0
    if launch.local_rank < visible or share:
        return launch.local_rank % visible
    raise InputError(
        f"local rank {launch.local_rank} has no GPU ({visible} visible to it); start at most {visible} ranks per node,"
        " or give each task its own GPU (srun --gpus-per-task=1)"
    )


def choose_device(requested: str, launch: Launch, share: bool = False) -> torch.device:
    """A CUDA device (see :func:`cuda_index`) when CUDA is there or asked for, else the CPU."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InputError("train.device=cuda but no CUDA device is available; use train.device=auto or cpu")
    index = cuda_index(launch, torch.cuda.device_count(), share)
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def choose_backend(requested: str, device: torch.device) -> str:
    """NCCL for CUDA ranks and gloo for CPU ranks, unless dist.backend says otherwise."""
    if requested == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if requested == "nccl" and device.type != "cuda":
        raise InputError("dist.backend=nccl needs CUDA ranks; use dist.backend=gloo (or auto) on CPU")
    return requested


def threads_per_rank(configured: int, default: int, env: Mapping[str, str] = os.environ) -> int:
    """Intra-op threads for this rank: train.threads when set; else the CPUs the launcher gave it.

    torchrun sets OMP_NUM_THREADS=1 when it starts several ranks on a node (torch then defaults
    to it); otherwise each rank would use every CPU it sees, however many ranks share them. The
    CPUs given are SLURM's CPUs per task, else the CPUs this process may run on, shared by the
    ranks torchrun started on this node.
    """
    if configured:
        return configured
    if env.get("OMP_NUM_THREADS"):
        return default
    cpus = env_int(env, "SLURM_CPUS_PER_TASK", len(os.sched_getaffinity(0)))
    return max(1, min(default, cpus // env_int(env, "LOCAL_WORLD_SIZE", 1)))
