"""Liveness: who is to blame when progress stops (judge, on made-up records), the stack file, and
real 2-rank torchrun jobs: a worker frozen by SIGSTOP (named in bounded time, then torchrun's
restart resumes exactly), and a worker stuck in a Python sleep."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import CONFIGS, SMOKE_LONG

from mnist_ddp.base.errors import EXIT_UNRESPONSIVE
from mnist_ddp.base.fault_injection import FAULT_ENV, PRINT_HASH_ENV, SLOW_ENV
from mnist_ddp.parallel import blame, liveness
from mnist_ddp.parallel.blame import RUNNING, STUCK, Record, Seen, judge

POLL = 0.5


def peer(marks: int, beat_age: float, progress_age: float = 0.0, state: str = RUNNING, limit: float = 3.0) -> Seen:
    """A peer as rank 0 saw it at time 100: its beat moved ``beat_age`` s ago, its progress ``progress_age`` s ago."""
    record = Record("node2", 42, 7, marks, "global step 51 (epoch 3)", 0.5, limit, state, "/s.txt" if state else "")
    return Seen(record, 100 - beat_age, 100 - progress_age)


def test_a_silent_peer_is_named_once_its_limit_has_passed():
    # Rank 0 waits (one mark ahead, in the all-reduce) for rank 1, whose beat stopped.
    assert judge(12, 4.0, 3.0, {1: peer(11, beat_age=3.4)}, 100, POLL) is None  # within limit + a poll
    assert judge(12, 4.0, 3.0, {1: peer(11, beat_age=3.6)}, 100, POLL).culprits == [(1, "silent")]
    # Frozen while this rank already waited at the same mark (in a snapshot): not "this rank is stuck"
    # at its limit, but the peer named silent at the peer's.
    assert judge(12, 3.5, 3.0, {1: peer(12, beat_age=1.5)}, 100, POLL) is None
    assert judge(12, 4.6, 3.0, {1: peer(12, beat_age=3.6)}, 100, POLL).culprits == [(1, "silent")]
    # The peer's own limit counts: one still starting up (the long limit) is not silent yet.
    assert judge(12, 40.0, 300.0, {1: peer(11, beat_age=30, limit=300)}, 100, POLL) is None
    # A silent peer is named even while this rank still computes (it will wait for it at the next collective).
    assert judge(12, 0.0, 3.0, {1: peer(11, beat_age=3.6)}, 100, POLL).culprits == [(1, "silent")]


def test_the_rank_that_is_behind_is_stuck_not_the_ones_waiting_for_it():
    # Rank 1 is behind (fewer marks) and alive: rank 0 waits for it to say so...
    assert judge(12, 4.0, 3.0, {1: peer(10, beat_age=0.1, progress_age=4)}, 100, POLL) is None
    # ...and rank 1, with a peer ahead of it (waiting for it), finds itself stuck.
    assert judge(10, 5.0, 3.0, {0: peer(12, beat_age=0.1, progress_age=5)}, 100, POLL).culprits == []
    # Once it says so, rank 0 names it.
    assert judge(12, 5.0, 3.0, {1: peer(10, 0.1, 5, state=STUCK)}, 100, POLL).culprits == [(1, "stuck")]
    # A rank behind that never says so (its watchdog cannot run) is named after its limit and a grace.
    late = 3.0 + blame.STUCK_GRACE_POLLS * POLL + 0.1
    assert judge(12, 9.0, 3.0, {1: peer(10, 0.1, late)}, 100, POLL).culprits == [(1, "no progress")]
    # One behind whose progress moves (it computes: an evaluation, a first compile) is slow, not stuck.
    assert judge(12, 9.0, 3.0, {1: peer(10, 0.1, progress_age=0.3)}, 100, POLL) is None


def test_ranks_level_with_each_other_are_slow_together_not_stuck():
    # Every rank in the same phase at the same time (a long evaluation, a first compile, a pause of
    # the whole job): nobody waits for anybody, however long it takes.
    assert judge(10, 500.0, 3.0, {1: peer(10, beat_age=0.1, progress_age=500)}, 100, POLL) is None
    # A peer that finished is not waiting for this rank either.
    assert judge(10, 500.0, 3.0, {1: peer(14, beat_age=60, state=blame.DONE)}, 100, POLL) is None


def test_nothing_is_judged_before_this_rank_has_stalled_for_its_limit():
    assert judge(10, 2.0, 3.0, {1: peer(12, beat_age=0.1)}, 100, POLL) is None
    # A peer that finished (done) is never a culprit, however long it stays quiet.
    assert judge(10, 2.0, 3.0, {1: peer(10, beat_age=60, state=blame.DONE)}, 100, POLL) is None
    # One that exited (ranks leave one by one after a stop) only once this rank has waited its limit.
    assert judge(10, 2.0, 3.0, {1: peer(10, beat_age=60, state=blame.EXITED)}, 100, POLL) is None
    assert judge(10, 3.5, 3.0, {1: peer(10, 60, state=blame.EXITED)}, 100, POLL).culprits == [(1, "exited")]


def test_a_culprit_line_says_who_where_what_and_how_long_ago():
    text = blame.culprit_text(1, "silent", peer(11, beat_age=4.2), 100)
    assert text == (
        "rank 1 (node2, pid 42) is silent: no heartbeat for 4 s (stopped, frozen, or its node is gone);"
        " it last reported global step 51 (epoch 3), 5 s ago"
    )
    assert blame.describe("step", 3, 51, "gradients") == "global step 51 (epoch 3), waiting for gradients"
    assert blame.describe("evaluation", 2, 46, "") == "evaluation (epoch 2)"


def test_stacks_go_to_run_dir_without_following_a_planted_link(tmp_path):
    path = Path(liveness.write_stacks(tmp_path / "run", 1, "node2"))
    assert path.parent == (tmp_path / "run" / "stacks").absolute()
    text = path.read_text()
    assert text.startswith(f"rank 1 on node2, pid {os.getpid()}") and "test_stacks_go_to_run_dir" in text
    # A link planted where the file would go is not followed: the stacks go to a new temp file.
    target = tmp_path / "victim"
    target.write_text("keep")
    path.unlink()
    path.symlink_to(target)
    other = Path(liveness.write_stacks(tmp_path / "run", 1, "node2"))
    assert other != path and other.name.startswith("mnist_ddp-stacks-rank1-") and target.read_text() == "keep"
    other.unlink()


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
BOUND = 2.0  # dist.liveness_seconds for these runs


def start_job(tmp_path: Path, args: list[str], restarts: int, env: dict | None = None) -> subprocess.Popen:
    settings = [f"dist.liveness_seconds={BOUND:g}", f"run.dir={tmp_path / 'run'}"]
    return subprocess.Popen(
        [*TORCHRUN, f"--max-restarts={restarts}", "-m", "mnist_ddp.train", *args, *settings],
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def read_until(proc: subprocess.Popen, predicate) -> str:
    for line in proc.stdout:
        if predicate(line):
            return line
    raise AssertionError("the job ended without the line")


def worker_pid(agent: subprocess.Popen, rank: int) -> int:
    """The pid of torchrun's worker of ``rank``."""
    children = subprocess.run(["pgrep", "-P", str(agent.pid)], capture_output=True, text=True).stdout.split()
    for pid in children:
        if f"RANK={rank}" in Path(f"/proc/{pid}/environ").read_text().split("\0"):
            return int(pid)
    raise AssertionError(f"no worker of rank {rank} among {children}")


def wait_until_gone(pid: int, timeout: float = 20) -> None:
    """Until the process has exited (gone, or a zombie its parent has not reaped yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still runs after {timeout} s")


def test_a_frozen_worker_is_named_within_the_bound_and_torchruns_restart_resumes_exactly(tmp_path, two_rank_hash):
    job = start_job(tmp_path, SMOKE_LONG, restarts=1, env={PRINT_HASH_ENV: "1"})
    read_until(job, lambda line: line.startswith("epoch  3/12"))  # steady state: the short limit applies
    frozen, waiting = worker_pid(job, 1), worker_pid(job, 0)
    os.kill(frozen, signal.SIGSTOP)
    stopped_at = time.monotonic()
    line = read_until(job, lambda line: line.startswith("error: "))
    detected = time.monotonic() - stopped_at
    wait_until_gone(waiting)  # rank 0 ends by itself...
    os.kill(frozen, signal.SIGKILL)  # ...a stopped worker would take torchrun's SIGTERM only once continued
    rest = job.communicate(timeout=120)[0]
    assert detected < BOUND + 3, (detected, line)
    assert line.startswith(f"error: rank 1 ({os.uname().nodename}, pid {frozen}) is silent: no heartbeat for ")
    assert "; it last reported " in line and "; rank 0 waited " in line and "every rank stopped" in line
    assert f"exitcode: {EXIT_UNRESPONSIVE}" in rest  # torchrun saw rank 0 stop (69), then restarted the group
    assert job.returncode == 0, rest[-3000:]
    assert "resuming from" in rest
    hashes = {line.split()[-1] for line in rest.splitlines() if line.startswith("parameter_hash ")}
    assert hashes == {two_rank_hash}  # both ranks, equal to the uninterrupted run


def test_a_worker_stuck_in_python_exits_with_its_stack_and_is_named(tmp_path):
    started = time.monotonic()
    args = ["--config", str(CONFIGS / "smoke.yaml"), "train.epochs=500"]
    job = start_job(tmp_path, args, restarts=0, env={FAULT_ENV: "hang:1:100"})  # a sleep in rank 1's step 101
    out = job.communicate(timeout=120)[0]
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2, out[-3000:]
    named = next(e for e in errors if e.startswith("error: rank 1 "))
    own = next(e for e in errors if e.startswith("error: [rank 1] "))
    assert "made no progress for" in named and "at global step 101 (epoch 5)" in named
    stack = Path(named.split("its stack is in ")[1].split(" on ")[0])
    assert stack.parent == tmp_path / "run" / "stacks" and f"the stack of every thread is in {stack}" in own
    text = stack.read_text()
    assert "Thread MainThread:" in text and "fault_injection.py" in text and "time.sleep(fault.seconds)" in text
    assert time.monotonic() - started < 60  # not the 300 s of dist.timeout_seconds
    assert job.returncode != 0


def full_pipe() -> tuple[int, int]:
    """A pipe whose buffer is already full: every write to it blocks until the reader drains it
    (a terminal after Ctrl-S, a pager nobody scrolls)."""
    import fcntl

    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, 1031, 4096)  # F_SETPIPE_SZ: one page
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_end, b"." * 4096)
    os.set_blocking(write_end, True)
    return read_end, write_end


def test_a_job_that_is_slow_or_paused_as_a_whole_finishes(tmp_path):
    """Past every bound, and healthy: a first step longer than dist.timeout_seconds on every rank,
    standard output blocked for seconds, the whole job (torchrun and its ranks) stopped and
    continued as `scontrol suspend`/`resume` do, an evaluation on every rank and a snapshot write
    longer than dist.liveness_seconds. The job finishes, every epoch once."""
    timeout = 8
    slow = f"step:*:1:{timeout + 1},evaluation:*:100:{2 * BOUND},snapshot:0:150:{2 * BOUND}"
    read_end, write_end = full_pipe()
    errors = tmp_path / "stderr.txt"
    with errors.open("w") as err:
        job = subprocess.Popen(
            [
                *TORCHRUN,
                "-m",
                "mnist_ddp.train",
                *SMOKE_LONG,
                f"dist.timeout_seconds={timeout}",
                f"dist.liveness_seconds={BOUND:g}",
                f"run.dir={tmp_path / 'run'}",
            ],
            cwd=tmp_path,
            env={**os.environ, "PYTHONUNBUFFERED": "1", SLOW_ENV: slow},
            stdout=write_end,
            stderr=err,
            start_new_session=True,
        )
    os.close(write_end)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 90
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):  # the ranks train on, unheard
        assert job.poll() is None and time.monotonic() < deadline, errors.read_text()[-3000:]
        time.sleep(0.1)
    # torchrun starts each worker in a session of its own; a suspended job has all of them stopped.
    groups = [job.pid, worker_pid(job, 0), worker_pid(job, 1)]
    for group in groups:
        os.killpg(group, signal.SIGSTOP)
    time.sleep(2.5 * BOUND)
    for group in groups:
        os.killpg(group, signal.SIGCONT)
    with os.fdopen(read_end) as out:
        printed = out.read()  # until the job ends
    job.wait(timeout=120)
    stderr = errors.read_text()
    assert job.returncode == 0, stderr[-3000:]
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == list(range(1, 13))
    assert "final test accuracy" in printed and "error:" not in printed + stderr
    assert "the liveness watchdog does not count the pause against any rank" in stderr
