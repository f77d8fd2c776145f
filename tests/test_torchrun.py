"""torchrun as the launch scripts run it: no restart where none can help, a signal's exit code
without a traceback, a rendezvous that says what it waits for, and a second job under a
running job's RDZV_ID refused (the hooks on made-up agents, then launch/local.sh and
launch/node.sh as a user runs them)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from conftest import CONFIGS, REPO, free_port

from mnist_ddp.base.errors import EXIT_INPUT, EXIT_INTERRUPTED
from mnist_ddp.parallel import torchrun

SMOKE = ["--config", str(CONFIGS / "smoke.yaml"), "log.plots=false"]


def test_a_failure_no_restart_can_fix_leaves_the_agent_none(capsys):
    agent = SimpleNamespace(_remaining_restarts=3)
    torchrun.end_without_restarts(agent, {0: SimpleNamespace(exitcode=1), 1: SimpleNamespace(exitcode=1)})
    assert agent._remaining_restarts == 3  # a crash or a lost peer: a restart may help
    torchrun.end_without_restarts(agent, {0: SimpleNamespace(exitcode=74), 1: SimpleNamespace(exitcode=1)})
    assert agent._remaining_restarts == 0
    assert capsys.readouterr().err == (
        "torchrun: a worker exited with 74 (an output could not be written): a restart cannot help, so the job ends"
        " without one\n"
    )


def test_a_failed_job_ends_with_one_line_and_the_workers_exit_code():
    def failed(code: int) -> SimpleNamespace:
        return SimpleNamespace(get_first_failure=lambda: (1, SimpleNamespace(exitcode=code)))

    assert torchrun.failure_line(failed(69)) == (
        f"torchrun: rank 1 on {socket.gethostname()} exited with 69 (its own lines above say why); the job ends",
        69,
    )
    line, code = torchrun.failure_line(failed(-9))
    assert "was killed by signal 9" in line and code == 137


def test_a_full_rendezvous_round_is_a_running_job_a_partial_one_is_not():
    args = SimpleNamespace(nnodes="1:2", rdzv_id="job7", rdzv_endpoint="node1:29400")
    full = SimpleNamespace(complete=True, participants={"a": 0, "b": 1}, wait_list=set())
    assert torchrun.duplicate_job(full, 2) and not torchrun.duplicate_job(full, 3)
    assert not torchrun.duplicate_job(SimpleNamespace(complete=False, participants={"a": 0, "b": 1}), 2)
    assert not torchrun.duplicate_job(None, 1)
    line = torchrun.waiting_line(args, SimpleNamespace(participants={"a": 0}, wait_list=set()), 0)
    assert line.startswith("torchrun: waiting for the other nodes (NNODES=1:2, 1 joined) in the rendezvous job7 at")
    assert line.endswith(f"torchrun gives up at {time.strftime('%H:%M:%S', time.localtime(0))}")


def launch(script: str, tmp_path: Path, args: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(REPO / "launch" / script), *SMOKE, *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHON": sys.executable, "NPROC": "1", "PYTHONUNBUFFERED": "1", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_bad_input_in_the_workers_ends_the_job_without_restarts(tmp_path):
    job = launch("local.sh", tmp_path, ["data.dataset=mnist", f"data.root={tmp_path / 'none'}", "data.download=false"])
    _, err = job.communicate(timeout=120)
    assert job.returncode == EXIT_INPUT, err[-3000:]
    assert err.count("a restart cannot help, so the job ends without one") == 1
    assert sum(line.startswith("error: ") and "data.root" in line for line in err.splitlines()) == 1  # one attempt
    assert "Traceback" not in err


def test_a_signal_to_the_launch_script_ends_it_with_its_code_and_no_traceback(tmp_path):
    job = launch("local.sh", tmp_path, ["train.epochs=500", f"run.dir={tmp_path / 'run'}"], NPROC="2")
    for line in job.stdout:
        if line.startswith("epoch "):
            break
    job.send_signal(signal.SIGINT)  # Ctrl-C: the agent forwards it to the workers, which snapshot
    _, err = job.communicate(timeout=120)
    assert job.returncode == EXIT_INTERRUPTED, err[-3000:]
    assert "interrupted: [rank 0] Ctrl-C: snapshot " in err and "Traceback" not in err


def test_a_waiting_rendezvous_says_so_and_a_second_job_under_a_running_jobs_id_is_refused(tmp_path):
    # A two-node job whose second node never starts: lines within seconds, instead of silence for 600 s.
    alone = launch(
        "node.sh", tmp_path, [f"run.dir={tmp_path / 'alone'}"], NNODES="2", RDZV_ENDPOINT=f"127.0.0.1:{free_port()}"
    )
    # A one-node job that trains, and a second job started with the same endpoint and the default RDZV_ID.
    endpoint = f"127.0.0.1:{free_port()}"
    first = launch("node.sh", tmp_path, ["train.epochs=5000", f"run.dir={tmp_path / 'first'}"], RDZV_ENDPOINT=endpoint)
    for line in first.stdout:
        if line.startswith("epoch "):
            break
    started = time.monotonic()
    second = launch("node.sh", tmp_path, [f"run.dir={tmp_path / 'second'}"], RDZV_ENDPOINT=endpoint)
    _, second_err = second.communicate(timeout=120)
    refused_after = time.monotonic() - started
    assert first.poll() is None  # the first job goes on
    for job in (alone, first):
        job.send_signal(signal.SIGTERM)
    _, alone_err = alone.communicate(timeout=60)
    first.communicate(timeout=60)
    waiting = [line for line in alone_err.splitlines() if line.startswith("torchrun: waiting for the other nodes")]
    assert waiting and waiting[0].startswith(
        "torchrun: waiting for the other nodes (NNODES=2, 1 joined) in the rendezvous mnist_ddp at"
    )
    assert (
        "start launch/node.sh on every node with the same RDZV_ENDPOINT and RDZV_ID; torchrun gives up at" in waiting[0]
    )
    assert second.returncode == EXIT_INPUT, second_err[-3000:]
    assert second_err.splitlines()[-1] == (
        f"error: the rendezvous mnist_ddp at {endpoint} belongs to a running job that has all its 1 node(s); this is"
        " a second job with the same RDZV_ID: give it its own RDZV_ID and port (RDZV_ENDPOINT=HOST:<free port>)"
    )
    assert refused_after < 30 and not (tmp_path / "second").exists()
