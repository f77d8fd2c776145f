"""Meeting the other nodes: the checks that turn a silent multi-node hang into one line.

:func:`check_endpoint` runs in ``launch/node.sh`` before torchrun (``python -m
mnist_ddp.parallel.rendezvous HOST:PORT [SECONDS] [JOB_ID]``): wait for the endpoint, then make
sure a TCPStore of no other job answers there (:data:`JOB_KEY`). :func:`check_reachable_hostname`
stops a multi-node gloo rank whose host name resolves to loopback, and :func:`join` is a barrier
on the store before the process group, rank 0 saying whom it waits for.
"""

from __future__ import annotations

import contextlib
import importlib
import ipaddress
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import timedelta

from mnist_ddp.base.console import flush_at_exit, say
from mnist_ddp.base.errors import InputError, first_line

WAITING_LINE_SECONDS = 3.0
# The key under which a job's ranks record its id in the store (distributed.claim_store).
JOB_KEY = "mnist_ddp/job"
# launch/node.sh tells the workers the rendezvous endpoint here, so that they can claim it.
ENDPOINT_ENV = "MNIST_DDP_RDZV_ENDPOINT"
# How long whatever listens on the endpoint has to answer as a TCPStore.
PROBE_SECONDS = 3.0


def resolve(host: str) -> str:
    """The IPv4 address ``host`` names here (as gloo and the store resolve it)."""
    try:
        return socket.gethostbyname(host)
    except OSError as e:
        raise InputError(f"cannot resolve host name {host!r} ({e}); check the name, or give an IP address") from None


def is_local(address: str) -> bool:
    """Whether ``address`` belongs to this machine (a socket can bind to it)."""
    with socket.socket() as s:
        try:
            s.bind((address, 0))
        except OSError:
            return False
    return True


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """HOST and PORT of ``HOST:PORT``."""
    host, _, port_text = endpoint.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InputError(f"RDZV_ENDPOINT={endpoint!r} is not HOST:PORT; give the first node's name and a port")
    return host, int(port_text)


def listening(address: str, port: int, timeout: float = 1.0) -> str | None:
    """None when something accepts TCP connections at address:port, else why not."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return None
    except OSError as e:
        return e.strerror or type(e).__name__


def wait_for_endpoint(endpoint: str, timeout: float, poll: float = 1.0, etcd: bool = False) -> None:
    """Return once HOST:PORT accepts TCP connections (at once if HOST is this machine, whose
    torchrun hosts a c10d rendezvous); an InputError naming the endpoint after ``timeout`` seconds.
    ``etcd``: the endpoint is an etcd server, which no node's torchrun starts."""
    host, port = parse_endpoint(endpoint)
    address = resolve(host)
    if is_local(address) and not etcd:
        return
    serve = f"start etcd on {host}" if etcd else f"start launch/node.sh on {host} too"
    started = last_said = time.monotonic()
    while True:
        reason = listening(address, port, timeout=poll)
        if reason is None:
            return
        now = time.monotonic()
        if now - started >= timeout:
            raise InputError(
                f"no rendezvous at {host}:{port} ({address}) after {timeout:g} s ({reason}); {serve}, or check"
                f" RDZV_ENDPOINT and that {host} is reachable from {socket.gethostname()}"
            )
        if now - last_said >= WAITING_LINE_SECONDS:
            say(f"waiting for the rendezvous at {host}:{port} ({address}): {reason}", sys.stderr)
            last_said = now
        time.sleep(max(0.0, poll - (time.monotonic() - now)))


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (torch's C++ warnings about a failed connection) for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def store_holder(host: str, address: str, port: int, timeout: float = PROBE_SECONDS, fix: str = "") -> str:
    """The id of the job whose ranks use the TCPStore at address:port ('' when none has yet).

    Whatever listens there must answer as a TCPStore within ``timeout`` seconds; otherwise it is
    another service, and an InputError says so. (A TCPStore client waits on a silent peer without
    a timeout, hence the thread.)
    """
    import torch.distributed as dist  # two seconds of import, only when something listens

    answer: dict[str, object] = {}

    def ask() -> None:
        try:
            store = dist.TCPStore(address, port, is_master=False, timeout=timedelta(seconds=timeout))
            answer["holder"] = store.get(JOB_KEY).decode() if store.check([JOB_KEY]) else ""
        except Exception as e:  # DistNetworkError, DistStoreError, RuntimeError: all mean "not a store"
            answer["error"] = e

    with quiet_stderr():
        asking = threading.Thread(target=ask, daemon=True)
        asking.start()
        asking.join(timeout + 1)
    if "holder" in answer:
        return str(answer["holder"])
    error = answer.get("error")
    reason = first_line(error) if isinstance(error, Exception) else f"no answer within {timeout:g} s"
    raise InputError(
        f"port {port} on {host} is held by another service, not a torchrun rendezvous ({reason}); choose a free"
        f" port: {fix or f'RDZV_ENDPOINT={host}:<port>'}"
    )


def check_endpoint(endpoint: str, timeout: float, job: str = "", poll: float = 1.0) -> None:
    """Wait for the endpoint (see :func:`wait_for_endpoint`), then make sure that what listens there
    is a TCPStore that no other job uses. Nothing listening on this host's own endpoint is fine:
    this node's torchrun will host the store."""
    host, port = parse_endpoint(endpoint)
    address = resolve(host)
    if is_local(address):
        if listening(address, port) is not None:
            return
    else:
        # The probe needs torch (two seconds of import): load it while waiting for the first node.
        threading.Thread(target=importlib.import_module, args=("torch.distributed",), daemon=True).start()
        wait_for_endpoint(endpoint, timeout, poll)
    holder = store_holder(host, address, port)
    if holder and job and holder != job:
        raise InputError(
            f"port {port} on {host} serves the rendezvous of job {holder}; this job is {job}: give each job its own"
            f" port (RDZV_ENDPOINT={host}:<free port>)"
        )


def spans_nodes(env: Mapping[str, str]) -> bool:
    """Whether the launcher put ranks on more than one node."""
    if env.get("LOCAL_WORLD_SIZE") and env.get("WORLD_SIZE"):
        return int(env["LOCAL_WORLD_SIZE"]) < int(env["WORLD_SIZE"])
    return int(env.get("SLURM_NNODES") or env.get("SLURM_JOB_NUM_NODES") or 1) > 1


def check_reachable_hostname(backend: str, env: Mapping[str, str] = os.environ) -> None:
    """Refuse to join a multi-node gloo group under a host name that resolves to loopback."""
    if backend != "gloo" or env.get("GLOO_SOCKET_IFNAME") or not spans_nodes(env):
        return
    name = socket.gethostname()
    address = resolve(name)
    if ipaddress.ip_address(address).is_loopback:
        raise InputError(
            f"this node's host name {name} resolves to {address}, a loopback address the other nodes cannot reach"
            f" (gloo connects to the address of each host's name); map {name} to this node's network address in"
            " /etc/hosts, or set GLOO_SOCKET_IFNAME to the network interface to use (e.g. eth0)",
            rank_specific=True,
        )


def join(store, rank: int, world_size: int, address: str, timeout: float, poll: float = 0.2) -> None:
    """A barrier on ``store``: every rank counts itself in and waits for all; rank 0 says whom it waits for."""
    key = "mnist_ddp/joined"
    joined = store.add(key, 1)
    started = last_said = time.monotonic()
    while joined < world_size:
        now = time.monotonic()
        if now - started >= timeout:
            raise InputError(
                f"only {joined} of {world_size} ranks joined at {address} within {timeout:g} s; start the missing"
                f" ranks, and check that every node can reach {address} and resolve its own host name to an address"
                " the others can reach (dist.timeout_seconds sets this wait)",
                rank_specific=True,
            )
        if rank == 0 and now - last_said >= WAITING_LINE_SECONDS:
            say(f"waiting for {world_size - joined} of {world_size} ranks at {address}", sys.stderr)
            last_said = now
        time.sleep(poll)
        joined = store.add(key, 0)


def main(argv: list[str] | None = None) -> int:
    """``python -m mnist_ddp.parallel.rendezvous [--etcd] HOST:PORT [TIMEOUT_SECONDS] [JOB_ID]``: wait for a
    rendezvous endpoint and check what listens there (see :func:`check_endpoint`); with ``--etcd``,
    wait for the etcd server (jobs keep apart there by their ids: nothing to check)."""
    args = sys.argv[1:] if argv is None else argv
    etcd = args[:1] == ["--etcd"]
    args = args[1:] if etcd else args
    try:
        if not 1 <= len(args) <= 3:
            raise InputError(
                "usage: python -m mnist_ddp.parallel.rendezvous [--etcd] HOST:PORT [TIMEOUT_SECONDS] [JOB_ID]"
            )
        timeout = args[1] if len(args) > 1 else "120"
        if not timeout.replace(".", "", 1).isdigit():
            raise InputError(f"timeout {timeout!r} is not a number of seconds")
        if etcd:
            wait_for_endpoint(args[0], float(timeout), etcd=True)
        else:
            check_endpoint(args[0], float(timeout), args[2] if len(args) > 2 else "")
    except InputError as e:
        say(f"error: {e}", sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    code = main()
    # A probe thread may still hang on a silent service: leave without waiting for it.
    flush_at_exit(timeout=5)
    os._exit(code)
