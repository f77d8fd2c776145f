"""Test-only fault injection, driven by environment variables so no user-facing key exists.

MNIST_DDP_TEST_FAULT (a crash, kill -9, NaN, a hang, a slow rank, a signal at a known step),
MNIST_DDP_TEST_SLOW (a slow step, evaluation or snapshot), MNIST_DDP_TEST_PRINT_HASH (the final
weights' hash) and MNIST_DDP_TEST_SAMPLE_LOG (every image each rank trains): docs/testing.md
("Test-only switches") gives their syntax.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch

FAULT_ENV = "MNIST_DDP_TEST_FAULT"
PRINT_HASH_ENV = "MNIST_DDP_TEST_PRINT_HASH"
SAMPLE_LOG_ENV = "MNIST_DDP_TEST_SAMPLE_LOG"
SLOW_ENV = "MNIST_DDP_TEST_SLOW"
KINDS = ("raise", "kill", "nan", "hang", "slow", "signal")


@dataclass(frozen=True)
class Fault:
    kind: str
    step: int
    arg: str = ""  # seconds for hang and slow, a signal's name for signal

    @property
    def seconds(self) -> float:
        return float(self.arg) if self.arg else 1e9


def planned_fault(rank: int) -> Fault | None:
    """The fault this rank must inject, if the environment asks for one."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    kind, fault_rank, step, *arg = spec.split(":")
    if kind not in KINDS:
        raise ValueError(f"{FAULT_ENV}={spec!r}: kind must be one of {KINDS}")
    if int(fault_rank) != rank:
        return None
    if kind in ("kill", "hang") and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return None  # the restarted worker must get through
    return Fault(kind, int(step), *arg)


def inject(fault: Fault | None, step: int, loss: torch.Tensor | None) -> torch.Tensor | None:
    """Apply ``fault`` if it is due at ``step``; returns the (possibly poisoned) loss.

    A CUDA graph step passes no loss: a crash or kill -9 still happens, a NaN cannot be injected.
    """
    if fault is not None and fault.kind == "slow" and step >= fault.step:
        time.sleep(fault.seconds)
    if fault is None or fault.step != step:
        return loss
    if fault.kind == "hang":
        time.sleep(fault.seconds)
        return loss
    if fault.kind == "signal":
        os.kill(os.getpid(), signal.Signals[fault.arg])
        return loss
    if fault.kind == "raise":
        raise RuntimeError(f"test fault: rank fails at step {step}")
    if fault.kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault.kind == "nan" and loss is not None:
        return loss * float("nan")
    return loss


# (the MNIST_DDP_TEST_SLOW text read, this rank's entries yet to strike): parsed once, not every step.
slow_plan: tuple[str, list[tuple[str, int, float]]] = ("", [])


def slow_phase(phase: str, step: int) -> None:
    """Make this phase slow if MNIST_DDP_TEST_SLOW asks for it (each entry once)."""
    global slow_plan
    spec = os.environ.get(SLOW_ENV, "")
    if spec != slow_plan[0]:
        rank, pending = os.environ.get("RANK", "0"), []
        for entry in filter(None, spec.split(",")):
            name, who, after, seconds = entry.split(":")
            if who in ("*", rank):
                pending.append((name, int(after), float(seconds)))
        slow_plan = (spec, pending)
    for entry in slow_plan[1]:
        name, after, seconds = entry
        if name != phase or step < after:
            continue
        slow_plan[1].remove(entry)
        if phase == "snapshot":
            time.sleep(seconds)  # waiting, as a slow file system does
            return
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass  # computing
        return


def print_hash_requested() -> bool:
    """Whether every rank should print its final parameter hash."""
    return os.environ.get(PRINT_HASH_ENV) == "1"


def open_sample_log(rank: int) -> TextIO | None:
    """This rank's sample log, when the environment asks for one (line-buffered: a killed rank's
    finished steps are on disk)."""
    folder = os.environ.get(SAMPLE_LOG_ENV)
    if not folder:
        return None
    path = Path(folder) / f"{socket.gethostname()}-{os.getpid()}-rank{rank}.txt"
    return path.open("a", buffering=1)


def log_samples(log: TextIO | None, global_step: int, world_size: int, rank: int, batch: torch.Tensor) -> None:
    """One line for the step that just trained on ``batch`` (dataset indices), if logging."""
    if log is not None:
        indices = ",".join(str(i) for i in batch.tolist()) or "-"  # "-": none of a short last step
        log.write(f"{time.time():.3f} {global_step} {world_size} {rank} {indices}\n")
