"""torchrun as the launch scripts run it (``python -m mnist_ddp.parallel.torchrun`` takes
torchrun's arguments), with what torchrun has no option for: while the rendezvous waits, a line
every WAIT_LINE_SECONDS (for what, where, until when), and a second job under a running full
job's ``RDZV_ID`` refused; no restart after a failure no restart can fix (exit 2, 3, 74); and a
signal or a failure ending with one line and its exit code instead of a traceback. The hooks
reach into torch's elastic agent and are guarded: a torch that changes them loses only the lines.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import os
import pickle
import socket
import sys
import threading
import time
from typing import Any

from mnist_ddp.base.console import flush_at_exit, say
from mnist_ddp.base.errors import EXIT_DIVERGED, EXIT_INPUT, EXIT_OUTPUT

# Exit codes after which a restart would fail the same way (mnist_ddp.base.errors).
NO_RESTART = {
    EXIT_INPUT: "bad input or settings",
    EXIT_DIVERGED: "the run diverged",
    EXIT_OUTPUT: "an output could not be written",
}
POLL_SECONDS = 2.0
FIRST_LINE_SECONDS = 4.0  # a rendezvous that completes within this says nothing
WAIT_LINE_SECONDS = 10.0
JOIN_TIMEOUT_SECONDS = 600.0  # torchrun's default join_timeout
# When this node's agent last entered the rendezvous (time.time()), while it is in there.
in_rendezvous_since: dict[str, float] = {}


def end_without_restarts(agent: Any, failures: dict[int, Any]) -> None:
    """After a worker failure no restart can fix, leave the agent no restart to try."""
    codes = sorted({f.exitcode for f in failures.values()} & NO_RESTART.keys())
    if codes and getattr(agent, "_remaining_restarts", 0) > 0:
        say(
            f"torchrun: a worker exited with {codes[0]} ({NO_RESTART[codes[0]]}): a restart cannot help,"
            " so the job ends without one",
            sys.stderr,
        )
        agent._remaining_restarts = 0


def read_rendezvous_state(endpoint: str, run_id: str) -> Any | None:
    """The c10d rendezvous state of ``run_id`` at ``endpoint`` (torch's own record), or None."""
    from datetime import timedelta

    import torch.distributed as dist

    from mnist_ddp.parallel.rendezvous import parse_endpoint, quiet_stderr

    host, port = parse_endpoint(endpoint)
    with quiet_stderr():
        store = dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=5))
        key = f"torch.rendezvous.{run_id}"
        if not store.check([key]):
            return None
        raw = store.get(key)
    # torch's agents write and read this same pickle; it comes from this job's rendezvous host.
    return pickle.loads(base64.b64decode(raw))


def waiting_line(args: Any, state: Any | None, deadline: float) -> str:
    """'waiting for 1 more node (NNODES=2, 1 joined) in the rendezvous mnist_ddp at node1:29400 ...'."""
    wanted = args.nnodes
    joined = ""
    if state is not None and hasattr(state, "participants"):
        count = len(state.participants) + len(getattr(state, "wait_list", ()))
        joined = f", {count} joined"
    until = datetime.datetime.fromtimestamp(deadline).strftime("%H:%M:%S")
    return (
        f"torchrun: waiting for the other nodes (NNODES={wanted}{joined}) in the rendezvous {args.rdzv_id} at"
        f" {args.rdzv_endpoint}; start launch/node.sh on every node with the same RDZV_ENDPOINT and RDZV_ID;"
        f" torchrun gives up at {until}"
    )


def duplicate_job(state: Any | None, max_nodes: int) -> bool:
    """Whether a complete round already holds all ``max_nodes`` nodes: a running job with this id."""
    return bool(state is not None and getattr(state, "complete", False) and len(state.participants) >= max_nodes)


def announce_waits(args: Any, in_rendezvous: threading.Event, stop: threading.Event) -> None:
    """While the agent waits in the rendezvous, say so every WAIT_LINE_SECONDS; refuse a second job."""
    max_nodes = int(str(args.nnodes).split(":")[-1])
    timeout = JOIN_TIMEOUT_SECONDS
    for item in (args.rdzv_conf or "").split(","):
        if item.startswith("join_timeout="):
            timeout = float(item.split("=", 1)[1])
    full_seen, said = 0, 0.0
    while not stop.wait(POLL_SECONDS):
        if not in_rendezvous.is_set():
            full_seen, said = 0, 0.0
            continue
        entered = in_rendezvous_since.get("t", time.time())
        state = None
        if args.rdzv_backend == "c10d":
            with contextlib.suppress(Exception):
                state = read_rendezvous_state(args.rdzv_endpoint, args.rdzv_id)
        full_seen = full_seen + 1 if duplicate_job(state, max_nodes) else 0
        if full_seen >= 2 and in_rendezvous.is_set():  # twice in a row: not a round about to restart
            say(
                f"error: the rendezvous {args.rdzv_id} at {args.rdzv_endpoint} belongs to a running job that has all"
                f" its {max_nodes} node(s); this is a second job with the same RDZV_ID: give it its own RDZV_ID and"
                " port (RDZV_ENDPOINT=HOST:<free port>)",
                sys.stderr,
            )
            flush_at_exit(timeout=5)
            os._exit(EXIT_INPUT)
        now = time.time()
        if now - entered < FIRST_LINE_SECONDS or now - said < WAIT_LINE_SECONDS:
            continue
        said = now
        say(waiting_line(args, state, entered + timeout), sys.stderr)


def watch_agent(in_rendezvous: threading.Event) -> None:
    """Hook torch's elastic agent: know when it waits in the rendezvous, and end it without restarts
    after a failure no restart can fix."""
    from torch.distributed.elastic.agent.server import api
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent

    rendezvous, monitor = api.SimpleElasticAgent._rendezvous, LocalElasticAgent._monitor_workers

    def rendezvous_announced(self: Any, worker_group: Any) -> Any:
        in_rendezvous_since["t"] = time.time()
        in_rendezvous.set()
        try:
            return rendezvous(self, worker_group)
        finally:
            in_rendezvous.clear()

    def monitor_without_futile_restarts(self: Any, worker_group: Any) -> Any:
        result = monitor(self, worker_group)
        if result.is_failed():
            end_without_restarts(self, result.failures)
        return result

    api.SimpleElasticAgent._rendezvous = rendezvous_announced  # type: ignore[method-assign]
    LocalElasticAgent._monitor_workers = monitor_without_futile_restarts  # type: ignore[method-assign]


def failure_line(e: Any) -> tuple[str, int]:
    """One line for torchrun's ChildFailedError, and the exit code to end with."""
    rank, failure = e.get_first_failure()
    code = failure.exitcode
    how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
    # Not an error: line of its own: the rank's own line is the job's one error line.
    line = f"torchrun: rank {rank} on {socket.gethostname()} {how} (its own lines above say why); the job ends"
    return line, 128 - code if code < 0 else min(code, 255)


def main(argv: list[str] | None = None) -> int:
    """Run torchrun with ``argv`` (its own arguments); its exit code."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = torchrun.parse_args(sys.argv[1:] if argv is None else argv)
    in_rendezvous, stop = threading.Event(), threading.Event()
    with contextlib.suppress(Exception):  # a torch without these hooks launches all the same
        watch_agent(in_rendezvous)
    if not args.standalone and args.rdzv_endpoint:
        threading.Thread(target=announce_waits, args=(args, in_rendezvous, stop), daemon=True).start()
    try:
        torchrun.run(args)
    except SignalException as e:  # the workers got the signal too and said what they saved
        return 128 + int(e.sigval)
    except ChildFailedError as e:
        line, code = failure_line(e)
        say(line, sys.stderr)
        return code
    finally:
        stop.set()
    return 0


if __name__ == "__main__":
    code = main()
    flush_at_exit(timeout=5)
    sys.exit(code)
