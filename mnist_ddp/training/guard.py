"""Stopping together: preemption and session signals and the non-finite guard, agreed across ranks.

A signal only sets a flag (SIGTERM, SIGUSR1: preemption; SIGINT, SIGHUP, SIGQUIT: the user's
session; a second Ctrl-C stops at once). At fixed global steps every rank contributes its flag
and whether it saw a non-finite loss or weight to one all_reduce, so all ranks decide alike at
the same step. Inside an epoch a check's result is read at the next check, so the host never
waits for the GPU; before a snapshot the ranks agree without that lag. :class:`StopGuard` holds
the state.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from types import FrameType

import torch
from torch import nn

from mnist_ddp.base.console import say, warn
from mnist_ddp.parallel.distributed import all_reduce_max

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# Stop with a snapshot and exit 128 + the signal, as a shell reports it; never requeue.
SESSION_SIGNALS = (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
STOP_SIGNALS = (*PREEMPTION_SIGNALS, *SESSION_SIGNALS)
SESSION_SIGNAL_NAMES = {
    signal.SIGINT: "Ctrl-C",
    signal.SIGHUP: "SIGHUP (the terminal or ssh session closed)",
    signal.SIGQUIT: "SIGQUIT (Ctrl-\\)",
}
NO_BAD_STEP = 2**62
# One Ctrl-C reaches a torchrun worker twice within milliseconds (from the terminal and from
# the agent, which forwards it); a second SIGINT counts as a new Ctrl-C only after this long.
SAME_CTRL_C_SECONDS = 1.0
# What a rank contributes to the agreement: nothing, the number of a session signal, or a
# preemption, which wins the maximum (the job is requeued only for a preemption).
NO_STOP, PREEMPT = 0, 1000

stop_signal: int | None = None  # the signal that asked this rank to stop (a preemption one first)
ctrl_c_at: float | None = None


def request_stop(signum: int, frame: FrameType | None) -> None:
    """Signal handler: remember the request; the training loop acts on it at the next check.

    A Ctrl-C after an earlier one stops at once.
    """
    global stop_signal, ctrl_c_at
    if signum == signal.SIGINT:
        now = time.monotonic()
        if ctrl_c_at is not None and now - ctrl_c_at > SAME_CTRL_C_SECONDS:
            raise KeyboardInterrupt
        if ctrl_c_at is None and os.environ.get("RANK", "0") == "0":
            # os.write, not print: a handler may run in the middle of another write to stdout.
            with contextlib.suppress(OSError):  # a terminal that is gone
                os.write(2, b"Ctrl-C: stopping with a snapshot at the next check; Ctrl-C again to stop at once\n")
        ctrl_c_at = ctrl_c_at or now
    if stop_signal is None or signum in PREEMPTION_SIGNALS:
        stop_signal = signum


def install_signal_handlers() -> None:
    """Route SIGTERM, SIGUSR1 and SIGINT to :func:`request_stop`, with no stop requested yet."""
    global stop_signal, ctrl_c_at
    stop_signal, ctrl_c_at = None, None
    for sig in STOP_SIGNALS:
        signal.signal(sig, request_stop)


def stop_request() -> int:
    """This rank's contribution to the agreement: NO_STOP, a session signal's number, or PREEMPT."""
    if stop_signal is None:
        return NO_STOP
    return PREEMPT if stop_signal in PREEMPTION_SIGNALS else int(stop_signal)


@dataclass
class Decision:
    """What every rank agreed on at a check."""

    stop: bool
    first_bad_step: int | None  # the earliest step any rank saw a non-finite loss or weights
    interrupted_by: int | None = None  # the session signal that stopped the run (no preemption: no requeue)
    snapshot_due: bool = False  # some rank's clock says checkpoint.every_seconds have passed since a snapshot
    step: int | None = None  # the global step the check was started at


@dataclass
class PendingCheck:
    """A check whose all_reduce is queued; its result lands in ``flags`` (host memory)."""

    flags: torch.Tensor
    done: torch.cuda.Event | None  # on CUDA: recorded after the copy to the host
    step: int


def start_check(first_bad: torch.Tensor, model: nn.Module, step: int, snapshot_due: bool = False) -> PendingCheck:
    """Every rank calls this at the same steps: queue the agreement without waiting for the device."""
    weights_ok = torch.isfinite(torch.stack([p.detach().sum() for p in model.parameters()])).all()
    bad_here = torch.where(weights_ok, first_bad, torch.clamp(first_bad, max=step))
    stop_here = torch.full((), float(stop_request()), dtype=torch.float64, device=first_bad.device)
    due_here = torch.full((), float(snapshot_due), dtype=torch.float64, device=first_bad.device)
    # max over ranks of [stop, -first bad step, snapshot due] =
    # [anyone asked to stop, -(earliest bad step), anyone's clock says a snapshot is due].
    flags = all_reduce_max(torch.stack([stop_here, -bad_here.double(), due_here]))
    if flags.device.type != "cuda":
        return PendingCheck(flags, None, step)
    host = flags.to("cpu", non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    return PendingCheck(host, done, step)


def finish_check(pending: PendingCheck) -> Decision:
    """The decision of a started check (waits only for that check's own work, long done by now)."""
    if pending.done is not None:
        pending.done.synchronize()
    flags = pending.flags.tolist()
    first_bad_step = int(-flags[1])
    request = int(flags[0])
    return Decision(
        stop=request > NO_STOP,
        first_bad_step=None if first_bad_step >= NO_BAD_STEP else first_bad_step,
        interrupted_by=request if NO_STOP < request < PREEMPT else None,
        snapshot_due=flags[2] > 0,
        step=pending.step,
    )


def agree(first_bad: torch.Tensor, model: nn.Module, step: int) -> Decision:
    """Every rank calls this at the same steps; all return the same Decision (one all_reduce)."""
    return finish_check(start_check(first_bad, model, step))


class StopGuard:
    """One rank's side of the agreement: its first non-finite step and the check in flight.

    Every rank calls :meth:`record` after each step and :meth:`lagged` or :meth:`now` at the
    same global steps, so every rank takes the same decision at the same step. Its counters
    are device tensors updated in place, so a CUDA graph can hold :meth:`record` too.
    """

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.model = model
        self.first_bad = torch.full((), NO_BAD_STEP, dtype=torch.int64, device=device)
        self.step = torch.zeros((), dtype=torch.int64, device=device)  # the global step of the next record
        self.no_bad_step = torch.full((), NO_BAD_STEP, dtype=torch.int64, device=device)  # made once, not per step
        self.pending: PendingCheck | None = None

    def start_at(self, global_step: int) -> None:
        """The global step the next recorded loss belongs to (after a resume)."""
        self.step.fill_(global_step)

    def record(self, loss: torch.Tensor) -> None:
        """Note whether the loss of the current global step is finite (on the device, no host sync).

        Steps only grow, so the first non-finite step is the smallest: a minimum. ``loss - loss``
        is 0 for a finite loss and NaN for inf or NaN: with the step count, 5 kernels of a CUDA
        graph's replay where ``isfinite`` and a first-time mask took 10.
        """
        torch.minimum(self.first_bad, torch.where((loss - loss) != 0, self.step, self.no_bad_step), out=self.first_bad)
        self.step.add_(1)

    def lagged(self, step: int, snapshot_due: bool = False) -> Decision:
        """The decision of the previous check (go on when there was none), and queue this step's
        check (with this rank's view of whether a timed snapshot is due)."""
        decision = finish_check(self.pending) if self.pending is not None else Decision(False, None)
        self.pending = start_check(self.first_bad, self.model, step, snapshot_due)
        return decision

    def now(self, step: int) -> Decision:
        """Agree at once; a check still in flight is superseded (this one sees everything it saw)."""
        if self.pending is not None:
            finish_check(self.pending)
            self.pending = None
        return agree(self.first_bad, self.model, step)


def requeue_if_slurm(enabled: bool) -> None:
    """Under SLURM, put this job back in the queue so it resumes from the snapshot just written."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if not (enabled and job_id):
        return
    if shutil.which("scontrol") is None:
        warn("checkpoint.requeue=true but scontrol is not on PATH; resubmit the job yourself")
        return
    result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if result.returncode != 0:
        warn(f"scontrol requeue {job_id} failed: {result.stderr.strip()}")
    else:
        say(f"requeued SLURM job {job_id}")
