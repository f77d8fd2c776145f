"""Parallelism: who launched us, which device and backend, the process group, collectives, DDP.

World size 1 (no launcher) means no process group at all: every helper here is then a no-op,
so the training loop runs the same code on one process and on many.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from mnist_ddp import liveness, rendezvous
from mnist_ddp.config import DistConfig
from mnist_ddp.errors import InputError, JobError, PeerFailed, first_line


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


def job_id(env: Mapping[str, str] = os.environ) -> str:
    """This job's identity: torchrun's rendezvous id (``--rdzv_id``), else SLURM's job id, else ''."""
    return env.get("TORCHELASTIC_RUN_ID") or env.get("SLURM_JOB_ID") or ""


def connect_store(launch: Launch, timeout_seconds: float, host_it: bool = False) -> dist.TCPStore:
    """A connection to the job's TCPStore (``host_it``: this process serves it, as rank 0 under srun does)."""
    return dist.TCPStore(
        launch.master_addr,
        launch.master_port,
        launch.world_size,
        is_master=host_it,
        timeout=timedelta(seconds=timeout_seconds),
        wait_for_workers=False,
    )


def agent_hosts_store() -> bool:
    """Whether torchrun's agent hosts the workers' store (else rank 0 does, as under srun, or in
    an elastic job launched by launch/node.sh)."""
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"


def job_store(store: dist.Store) -> dist.PrefixStore:
    """This job's and this attempt's keys in ``store``.

    The store torchrun's agent hosts outlives its workers: after a restart it still holds the
    dead workers' addresses, and gloo would dial them ("Connection refused"); a prefix per job and
    attempt keeps each apart. A store that rank 0 hosts is new with every attempt, and there the
    attempt must not count: in an elastic job a node that joins later has restarted fewer times
    than the others, so its ranks would wait under another prefix.
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") if agent_hosts_store() else "0"
    return dist.PrefixStore(f"mnist_ddp/{job_id() or 'job'}/attempt_{attempt}", store)


def claim_store(store: dist.Store, address: str) -> None:
    """Refuse a store that another job already uses: two jobs on one port would meet in one store,
    and the second would die with the first. The first job's ranks write its id; later ones compare."""
    job = job_id() or "-"
    holder = store.compare_set(rendezvous.JOB_KEY, "", job).decode()
    if holder != job:
        raise InputError(
            f"the store at {address} belongs to job {holder}, not to this job ({job}): two jobs share a port;"
            " give each job its own (RDZV_ENDPOINT=HOST:<free port> for launch/node.sh, MASTER_PORT under srun)"
        )


def claim_rendezvous(timeout_seconds: float, env: Mapping[str, str] = os.environ) -> None:
    """Claim the rendezvous store that launch/node.sh names (MNIST_DDP_RDZV_ENDPOINT) for this job.

    torchrun's agents keep using that store for the whole run, while the workers get a store of
    their own; so this is where a second job on the same port must find the first one's id
    (launch/node.sh checks it before starting torchrun).
    """
    endpoint = env.get(rendezvous.ENDPOINT_ENV)
    if not endpoint:
        return
    host, port = rendezvous.parse_endpoint(endpoint)
    try:
        store = dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=timeout_seconds))
    except (RuntimeError, ValueError) as e:
        raise InputError(
            f"cannot reach the rendezvous store at {endpoint} ({type(e).__name__}: {first_line(e)});"
            " check that its node's torchrun (launch/node.sh) still runs and is reachable from here",
            rank_specific=True,
        ) from None
    claim_store(store, endpoint)


def check_store_port(launch: Launch) -> None:
    """Under a bare launch, a rank that joins rank 0's store first makes sure that what listens on
    MASTER_PORT, if anything does yet, answers as a store: a TCPStore client would wait on a
    foreign service for the whole timeout, while rank 0 fails at once on the taken port."""
    address = rendezvous.resolve(launch.master_addr)
    if rendezvous.listening(address, launch.master_port) is None:
        fix = "set MASTER_PORT to a free port on every rank"
        try:
            rendezvous.store_holder(launch.master_addr, address, launch.master_port, fix=fix)
        except InputError as e:  # this rank's finding: rank 0 may have failed, or not started yet
            raise InputError(str(e), rank_specific=True) from None


def init(launch: Launch, backend: str, device: torch.device, timeout_seconds: float) -> dist.Store | None:
    """Claim the job's stores and join the process group; this job's keys in the store (None for
    one process, which needs no group but still claims launch/node.sh's rendezvous)."""
    timeout = timedelta(seconds=timeout_seconds)
    address = f"{launch.master_addr}:{launch.master_port}"
    try:
        claim_rendezvous(min(timeout_seconds, 30))
        if launch.world_size == 1:
            return None
        rendezvous.check_reachable_hostname(backend)
        if launch.rank != 0 and not agent_hosts_store():
            check_store_port(launch)
        store = connect_store(launch, timeout_seconds, host_it=launch.rank == 0 and not agent_hosts_store())
        claim_store(store, address)
        keys = job_store(store)
        rendezvous.join(keys, launch.rank, launch.world_size, address, timeout_seconds)
        dist.init_process_group(
            backend=backend,
            store=keys,
            rank=launch.rank,
            world_size=launch.world_size,
            timeout=timeout,
            device_id=device if device.type == "cuda" else None,
        )
    except (RuntimeError, ValueError) as e:  # torch's DistError family: a port in use, a peer missing
        raise InputError(
            f"rank {launch.rank} of {launch.world_size} could not join the process group at {address}"
            f" ({type(e).__name__}: {first_line(e)}); check that MASTER_ADDR:MASTER_PORT is a free port every"
            f" node can reach and that all {launch.world_size} ranks start (dist.timeout_seconds={timeout_seconds:g})",
            rank_specific=True,
        ) from None
    return keys


def is_peer_loss(e: BaseException) -> bool:
    """Whether a collective failed because a peer went away (gloo and NCCL say so in their messages)."""
    text = str(e)
    return isinstance(e, dist.DistError) or any(
        sign in text for sign in ("Connection reset by peer", "Connection closed by peer", "/gloo/transport/")
    )


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


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place (unchanged for world size 1)."""
    if dist.is_initialized():
        with liveness.waiting():
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    """Wait for every rank (nothing to wait for with world size 1)."""
    if dist.is_initialized():
        with liveness.waiting():
            dist.barrier()


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum of ``tensor`` over all ranks, in place (unchanged for world size 1)."""
    if dist.is_initialized():
        with liveness.waiting():
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def broadcast_from_rank0(obj: object) -> object:
    """Rank 0's ``obj`` on every rank (for the resume state, which rank 0 alone reads from disk)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    with liveness.waiting("rank 0"):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_tensors(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``tensor`` (same shape on all), in rank order; everyone gets the list."""
    if not dist.is_initialized():
        return [tensor]
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    with liveness.waiting():
        dist.all_gather(parts, tensor)
    return parts


def raise_unless_all_ok(error: JobError | None, device: torch.device) -> None:
    """Every rank calls this after a step that may fail on some ranks only (a download, a file read).

    All ranks learn whether any failed, so none goes on to wait in a collective that a
    failed peer will never reach. The failed rank re-raises its own error; the others raise
    PeerFailed.
    """
    failed = torch.tensor([0.0 if error is None else 1.0], device=device)
    all_reduce_sum(failed)
    count = int(failed.item())
    if error is not None:
        # When every rank failed alike, rank 0 alone reports it; otherwise each failed rank does.
        error.rank_specific = count < (dist.get_world_size() if dist.is_initialized() else 1)
        raise error
    if count:
        raise PeerFailed(f"{count} other rank(s) failed; their errors are printed above")


@contextmanager
def fail_together(device: torch.device) -> Iterator[None]:
    """Every rank runs the block; if it raised a JobError on any rank, every rank raises.

    For work that may fail on some ranks only (a download, a file read, a folder to create):
    no rank goes on to wait in a collective that a failed peer will never reach.
    """
    error = None
    try:
        yield
    except JobError as e:  # bad input (2), an output that cannot be written (74)
        error = e
    raise_unless_all_ok(error, device)


def shutdown(clean: bool) -> None:
    """Leave the process group. After a clean run, wait for every rank first, so none exits early."""
    if not dist.is_initialized():
        return
    if clean:
        dist.barrier()
    dist.destroy_process_group()


def cast_hook(dtype: torch.dtype):
    """A DDP comm hook that all-reduces each gradient bucket in ``dtype`` (half the bytes of fp32).

    torch's own bf16 hook refuses anything but NCCL; this one works on gloo too.
    """

    # No annotations: DDP compares them with the real classes, and here they would be strings.
    def hook(state, bucket):
        buffer = bucket.buffer()
        compressed = buffer.to(dtype).div_(dist.get_world_size())
        future = dist.all_reduce(compressed, async_op=True).get_future()

        def decompress(done: torch.futures.Future) -> torch.Tensor:
            buffer.copy_(done.value()[0])
            return buffer

        return future.then(decompress)

    return hook


def wrap_ddp(model: torch.nn.Module, device: torch.device, cfg: DistConfig) -> torch.nn.Module:
    """``model`` under DistributedDataParallel with the configured buckets and comm hook; itself for world size 1."""
    if not dist.is_initialized():
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    ddp_model = DistributedDataParallel(
        model, device_ids=device_ids, gradient_as_bucket_view=True, bucket_cap_mb=cfg.bucket_cap_mb
    )
    register_comm_hook(ddp_model, cfg.comm_hook, cfg.powersgd_rank)
    return ddp_model


def register_comm_hook(ddp_model: DistributedDataParallel, hook: str, powersgd_rank: int) -> None:
    """Compress DDP's gradient all_reduce: bf16/fp16 halve the bytes sent, PowerSGD sends low-rank factors.

    PowerSGD keeps error-feedback state that snapshots do not hold, so a resumed run is close to,
    not bit-identical with, an uninterrupted one.
    """
    if hook in ("bf16", "fp16"):
        ddp_model.register_comm_hook(None, cast_hook(torch.bfloat16 if hook == "bf16" else torch.float16))
    elif hook == "powersgd":
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook  # only when used

        # Plain all_reduce for the first steps, as the PowerSGD paper recommends.
        state = powerSGD_hook.PowerSGDState(
            process_group=None, matrix_approximation_rank=powersgd_rank, start_powerSGD_iter=10
        )
        ddp_model.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
