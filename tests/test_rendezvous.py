"""The multi-node checks: waiting for a rendezvous endpoint, a host name that resolves to
loopback, and the join barrier's waiting lines and timeout (real sockets and a real TCPStore)."""

from __future__ import annotations

import socket
import threading
import time
from datetime import timedelta

import pytest
import torch.distributed as dist
from conftest import free_port

from mnist_ddp.base.errors import InputError
from mnist_ddp.parallel import rendezvous


def test_an_endpoint_on_this_machine_needs_no_wait():
    started = time.monotonic()
    rendezvous.wait_for_endpoint(f"127.0.0.1:{free_port()}", timeout=30)  # our torchrun will host it
    assert time.monotonic() - started < 1


def test_a_remote_endpoint_is_waited_for_until_it_listens(monkeypatch):
    monkeypatch.setattr(rendezvous, "is_local", lambda address: False)
    port = free_port()
    server = socket.socket()

    def open_later() -> None:
        time.sleep(1.5)
        server.bind(("127.0.0.1", port))
        server.listen()

    threading.Thread(target=open_later).start()
    started = time.monotonic()
    try:
        rendezvous.wait_for_endpoint(f"localhost:{port}", timeout=20, poll=0.2)
    finally:
        server.close()
    assert 1.4 < time.monotonic() - started < 10


def test_an_endpoint_nobody_opens_is_one_error_naming_it(monkeypatch, capsys):
    monkeypatch.setattr(rendezvous, "is_local", lambda address: False)
    monkeypatch.setattr(rendezvous, "WAITING_LINE_SECONDS", 0.5)
    port = free_port()
    started = time.monotonic()
    with pytest.raises(InputError) as err:
        rendezvous.wait_for_endpoint(f"localhost:{port}", timeout=2, poll=0.2)
    assert 2 <= time.monotonic() - started < 6
    assert str(err.value).startswith(f"no rendezvous at localhost:{port} (127.0.0.1) after 2 s (Connection refused);")
    assert f"waiting for the rendezvous at localhost:{port} (127.0.0.1): Connection refused" in capsys.readouterr().err


@pytest.mark.parametrize("endpoint", ["node1", "node1:http", ":29400"])
def test_an_endpoint_that_is_not_host_port_is_refused(endpoint):
    with pytest.raises(InputError, match="is not HOST:PORT"):
        rendezvous.wait_for_endpoint(endpoint, timeout=1)


def test_the_command_line_form_exits_2_with_one_line(capsys):
    assert rendezvous.main(["no-such-host.invalid:29400", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot resolve host name 'no-such-host.invalid'") and err.count("\n") == 1


@pytest.mark.parametrize(
    "env, spans",
    [
        ({"LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2"}, False),
        ({"LOCAL_WORLD_SIZE": "1", "WORLD_SIZE": "2"}, True),
        ({"SLURM_NNODES": "2"}, True),
        ({"SLURM_JOB_NUM_NODES": "1"}, False),
        ({}, False),
    ],
)
def test_spans_nodes(env, spans):
    assert rendezvous.spans_nodes(env) is spans


def test_a_loopback_host_name_is_refused_only_for_multi_node_gloo(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "localhost")  # resolves to 127.0.0.1
    multi = {"LOCAL_WORLD_SIZE": "1", "WORLD_SIZE": "2"}
    with pytest.raises(InputError) as err:
        rendezvous.check_reachable_hostname("gloo", multi)
    assert str(err.value).startswith("this node's host name localhost resolves to 127.0.0.1, a loopback address")
    assert "GLOO_SOCKET_IFNAME" in str(err.value) and err.value.rank_specific
    rendezvous.check_reachable_hostname("nccl", multi)
    rendezvous.check_reachable_hostname("gloo", {"LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2"})
    rendezvous.check_reachable_hostname("gloo", {**multi, "GLOO_SOCKET_IFNAME": "eth0"})


def test_join_waits_for_every_rank_and_rank_0_says_so(monkeypatch, capsys):
    monkeypatch.setattr(rendezvous, "WAITING_LINE_SECONDS", 0.4)
    port = free_port()
    store = dist.TCPStore("127.0.0.1", port, 2, is_master=True, timeout=timedelta(seconds=10), wait_for_workers=False)
    peer = dist.TCPStore("127.0.0.1", port, 2, is_master=False, timeout=timedelta(seconds=10))

    def second_rank() -> None:
        time.sleep(1.0)
        rendezvous.join(peer, 1, 2, f"127.0.0.1:{port}", timeout=10)

    thread = threading.Thread(target=second_rank)
    thread.start()
    rendezvous.join(store, 0, 2, f"127.0.0.1:{port}", timeout=10)
    thread.join()
    lines = capsys.readouterr().err.splitlines()
    assert lines and set(lines) == {f"waiting for 1 of 2 ranks at 127.0.0.1:{port}"}


def test_join_gives_up_after_the_timeout_naming_the_address():
    port = free_port()
    store = dist.TCPStore("127.0.0.1", port, 3, is_master=True, timeout=timedelta(seconds=10), wait_for_workers=False)
    with pytest.raises(InputError, match=rf"only 1 of 3 ranks joined at 127.0.0.1:{port} within 1 s; start the"):
        rendezvous.join(store, 0, 3, f"127.0.0.1:{port}", timeout=1)


def silent_listener() -> socket.socket:
    """A plain TCP service that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    return server


def test_a_port_held_by_another_service_is_one_line_within_seconds(capsys):
    server = silent_listener()
    port = server.getsockname()[1]
    started = time.monotonic()
    try:
        code = rendezvous.main([f"127.0.0.1:{port}", "5", "jobB"])  # what launch/node.sh runs first
    finally:
        server.close()
    assert code == 2 and time.monotonic() - started < rendezvous.PROBE_SECONDS + 2
    assert capsys.readouterr().err == (
        f"error: port {port} on 127.0.0.1 is held by another service, not a torchrun rendezvous (no answer within"
        f" {rendezvous.PROBE_SECONDS:g} s); choose a free port: RDZV_ENDPOINT=127.0.0.1:<port>\n"
    )


def test_a_store_is_asked_which_job_holds_it():
    port = free_port()
    store = dist.TCPStore("127.0.0.1", port, 1, is_master=True, timeout=timedelta(seconds=10), wait_for_workers=False)
    assert rendezvous.store_holder("127.0.0.1", "127.0.0.1", port) == ""  # nobody claimed it yet
    rendezvous.check_endpoint(f"127.0.0.1:{port}", 5, "jobA")
    store.set(rendezvous.JOB_KEY, "jobA")
    assert rendezvous.store_holder("127.0.0.1", "127.0.0.1", port) == "jobA"
    rendezvous.check_endpoint(f"127.0.0.1:{port}", 5, "jobA")  # its own job's store: fine
    with pytest.raises(InputError) as err:
        rendezvous.check_endpoint(f"127.0.0.1:{port}", 5, "jobB")
    assert str(err.value) == (
        f"port {port} on 127.0.0.1 serves the rendezvous of job jobA; this job is jobB: give each job its own port"
        " (RDZV_ENDPOINT=127.0.0.1:<free port>)"
    )


def test_a_free_port_on_this_host_needs_no_probe():
    started = time.monotonic()
    rendezvous.check_endpoint(f"127.0.0.1:{free_port()}", 5, "jobA")  # this node's torchrun will host it
    assert time.monotonic() - started < 1
