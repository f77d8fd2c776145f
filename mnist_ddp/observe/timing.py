"""Where each rank's time goes, per epoch (compute, the wait for the others' gradients,
agreements, evaluation, snapshots), and which rank holds the others back.

Waiting equalises ranks, so the wait for gradients is timed on its own (from the last gradient's
post-accumulate-grad hook until ``backward()`` returns) and the straggler is found by compute.
No host sync is added: host clocks on the CPU, CUDA events read at the epoch's end on a GPU.
docs/troubleshooting.md ("Where the time goes") says more.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

from mnist_ddp.base import fault_injection
from mnist_ddp.parallel import liveness

PHASES = ("compute", "gradient_wait", "agreement", "evaluation", "snapshot")
# A rank must compute at least this much longer than the others' median to be named: below it,
# a few milliseconds of noise on a short epoch would read as a large factor.
MIN_EXCESS_SECONDS = 0.05


class RankClock:
    """This rank's seconds per phase since the last :meth:`take`."""

    def __init__(self, device: torch.device, enabled: bool) -> None:
        self.enabled, self.cuda = enabled, device.type == "cuda"
        self.profiling = False  # while a profiler runs: phases become named ranges in the trace
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.loop_start: Any = None
        self.loop_inner = 0.0  # host seconds of the phases inside the current step loop
        # On a GPU: (start, end, seconds of inner phases) per step loop, and (ready, reduced) per step.
        self.loops: list[tuple[Any, Any, float]] = []
        self.waits: list[tuple[Any, Any]] = []
        self.ready: Any = None  # when the last gradient of the current step was in

    def now(self) -> Any:
        """A point in time: the host clock, or on a GPU an event recorded on the current stream."""
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    @contextmanager
    def phase(self, name: str, epoch: int, step: int) -> Iterator[None]:
        """A phase (agreement, evaluation, snapshot) on every rank: marked for liveness, timed, named in a profile."""
        liveness.mark(name, epoch, step)
        fault_injection.slow_phase(name, step)
        started = time.perf_counter()
        with torch.profiler.record_function(f"mnist_ddp/{name}") if self.profiling else nullcontext():
            yield
        if self.enabled:
            elapsed = time.perf_counter() - started
            self.seconds[name] += elapsed
            if self.loop_start is not None:
                self.loop_inner += elapsed

    @contextmanager
    def aside(self) -> Iterator[None]:
        """Time inside the step loop that is none of the phases and no compute (the profiler writing its trace)."""
        started = time.perf_counter()
        yield
        if self.enabled and self.loop_start is not None:
            self.loop_inner += time.perf_counter() - started

    def loop_started(self) -> None:
        """The epoch's step loop begins."""
        if self.enabled:
            self.loop_start, self.loop_inner = self.now(), 0.0

    def loop_ended(self) -> None:
        """The step loop is over: what it took, less the phases inside it (and later the wait), is compute."""
        if self.enabled and self.loop_start is not None:
            if self.cuda:
                self.loops.append((self.loop_start, self.now(), self.loop_inner))
            else:
                self.seconds["compute"] += time.perf_counter() - self.loop_start - self.loop_inner
            self.loop_start = None

    def watch_gradients(self, first_layer: list[torch.Tensor]) -> None:
        """Hook the parameters whose gradients backward computes last (under DDP, several ranks)."""
        for param in first_layer:
            param.register_post_accumulate_grad_hook(self.gradient_ready)

    def gradient_ready(self, param: torch.Tensor) -> None:
        """A last gradient is in: this rank's backward compute is done, the wait for the others begins."""
        liveness.wait_started("gradients")
        if self.enabled:
            self.ready = self.now()

    def gradients_reduced(self) -> None:
        """``backward()`` returned: DDP's all-reduce completed."""
        liveness.wait_ended()
        if not self.enabled or self.ready is None:
            return
        if self.cuda:
            self.waits.append((self.ready, self.now()))
        else:
            self.seconds["gradient_wait"] += time.perf_counter() - self.ready
        self.ready = None

    def take(self) -> list[float]:
        """This rank's seconds per phase (in PHASES order) since the last take; counting starts anew.

        On a GPU this reads the events: call it after the host has waited for the device.
        """
        if self.cuda:
            self.seconds["compute"] += sum(a.elapsed_time(b) / 1000 - inner for a, b, inner in self.loops)
            self.seconds["gradient_wait"] += sum(a.elapsed_time(b) / 1000 for a, b in self.waits)
            self.loops, self.waits = [], []
        values = [self.seconds[p] for p in PHASES]
        values[0] = max(0.0, values[0] - values[1])  # the loop held the wait: compute is the rest
        self.seconds = dict.fromkeys(PHASES, 0.0)
        return values


def device_clock(device: torch.device) -> float:
    """``time.perf_counter()`` once the device has run everything queued so far. On CUDA the host
    runs ahead of the GPU (with graphs by ~17 steps), so an epoch timed without waiting reads up
    to ~15% fast; one wait per epoch costs nothing the epoch would not wait for anyway."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def find_straggler(compute: list[float], factor: float) -> tuple[int, float] | None:
    """The rank whose compute stands out: (rank, its compute over the median of the others), or None.

    Named when that ratio is at least ``factor`` and the rank computes MIN_EXCESS_SECONDS more
    than the others' median. Compute, not step time: waiting makes every rank's steps equally long.
    """
    if factor <= 0 or len(compute) < 2:
        return None
    best: tuple[int, float] | None = None
    for rank, seconds in enumerate(compute):
        others = statistics.median(compute[:rank] + compute[rank + 1 :])
        if others <= 0:
            continue
        ratio = seconds / others
        if ratio >= factor and seconds - others >= MIN_EXCESS_SECONDS and (best is None or ratio > best[1]):
            best = (rank, ratio)
    return best


def rank_seconds(gathered: list[list[float]]) -> dict[str, list[float]]:
    """Per phase, every rank's seconds (from each rank's :meth:`RankClock.take`, in rank order)."""
    return {phase: [round(values[i], 4) for values in gathered] for i, phase in enumerate(PHASES)}


def straggler_record(rank_times: dict[str, list[float]], hosts: list[str], factor: float) -> dict[str, Any] | None:
    """The straggler of these times as a record entry: rank, host, factor; None when no rank stands out."""
    found = find_straggler(rank_times["compute"], factor)
    if found is None:
        return None
    rank, ratio = found
    return {"rank": rank, "host": hosts[rank] if rank < len(hosts) else "?", "factor": round(ratio, 2)}


def run_straggler(records: list[dict[str, Any]], world_size: int) -> dict[str, Any] | None:
    """The run's straggler: the rank named in more than half of the epochs measured at this world
    size, with the median of its factors; None otherwise. A rank slow for one epoch (a pause, a
    noisy neighbour) is that epoch's straggler, not the run's."""
    measured = [r for r in records if len(next(iter(r.get("rank_seconds", {}).values()), [])) == world_size]
    named = [r["straggler"] for r in measured if r.get("straggler")]
    for rank in {s["rank"] for s in named}:
        mine = [s for s in named if s["rank"] == rank]
        if 2 * len(mine) > len(measured):
            return {**mine[-1], "factor": round(statistics.median(s["factor"] for s in mine), 2)}
    return None


def straggler_text(straggler: dict[str, Any]) -> str:
    """'straggler: rank 1 (node2) computes 1.9x slower than the other ranks' median'."""
    return (
        f"straggler: rank {straggler['rank']} ({straggler['host']}) computes {straggler['factor']:.1f}x slower"
        " than the other ranks' median"
    )
