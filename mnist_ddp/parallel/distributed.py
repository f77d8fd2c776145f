"""Parallelism: who launched us, which device and backend, the process group, collectives, DDP.

World size 1 (no launcher) means no process group at all: every helper here is then a no-op,
so the training loop runs the same code on one process and on many.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from mnist_ddp.base.errors import InputError, JobError, PeerFailed, first_line
from mnist_ddp.parallel import liveness, rendezvous
from mnist_ddp.parallel.launcher import Launch


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
