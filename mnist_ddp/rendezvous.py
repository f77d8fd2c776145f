"""Meeting the other nodes: the checks that turn a silent multi-node hang into one line.

- :func:`wait_for_endpoint` runs in ``launch/node.sh`` before torchrun, on every node that does
  not host the rendezvous (``python -m mnist_ddp.rendezvous HOST:PORT``): it waits for the
  endpoint to accept connections, saying so every few seconds, and gives up with one line.
- :func:`check_reachable_hostname` stops a rank of a multi-node gloo job whose host name
  resolves to a loopback address: gloo would advertise that address, and the ranks on other
  nodes would wait for it until the timeout.
- :func:`join` is a barrier on the store before the process group: every rank learns how many
  have joined, and rank 0 prints whom it is waiting for.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import time
from collections.abc import Mapping

from mnist_ddp.console import say
from mnist_ddp.errors import InputError

WAITING_LINE_SECONDS = 3.0


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


def wait_for_endpoint(endpoint: str, timeout: float, poll: float = 1.0) -> None:
    """Return once HOST:PORT accepts TCP connections (at once if HOST is this machine, whose
    torchrun hosts the rendezvous); an InputError naming the endpoint after ``timeout`` seconds."""
    host, _, port_text = endpoint.rpartition(":")
    if not host or not port_text.isdigit():
        raise InputError(f"RDZV_ENDPOINT={endpoint!r} is not HOST:PORT; give the first node's name and a port")
    address, port = resolve(host), int(port_text)
    if is_local(address):
        return
    started = last_said = time.monotonic()
    while True:
        try:
            with socket.create_connection((address, port), timeout=poll):
                return
        except OSError as e:
            reason = e.strerror or type(e).__name__
        now = time.monotonic()
        if now - started >= timeout:
            raise InputError(
                f"no rendezvous at {host}:{port} ({address}) after {timeout:g} s ({reason}); start launch/node.sh on"
                f" {host} too, or check RDZV_ENDPOINT and that {host} is reachable from {socket.gethostname()}"
            )
        if now - last_said >= WAITING_LINE_SECONDS:
            say(f"waiting for the rendezvous at {host}:{port} ({address}): {reason}", sys.stderr)
            last_said = now
        time.sleep(max(0.0, poll - (time.monotonic() - now)))


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
    """``python -m mnist_ddp.rendezvous HOST:PORT [TIMEOUT_SECONDS]``: wait for a rendezvous endpoint."""
    args = sys.argv[1:] if argv is None else argv
    try:
        if not 1 <= len(args) <= 2:
            raise InputError("usage: python -m mnist_ddp.rendezvous HOST:PORT [TIMEOUT_SECONDS]")
        timeout = args[1] if len(args) > 1 else "120"
        if not timeout.replace(".", "", 1).isdigit():
            raise InputError(f"timeout {timeout!r} is not a number of seconds")
        wait_for_endpoint(args[0], float(timeout))
    except InputError as e:
        say(f"error: {e}", sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
