"""A profile on request (``profile.steps=N``): torch.profiler records N steps on every rank after
``profile.skip_steps`` of warm-up, and each rank writes ``run.dir/profile/rank<R>.pt.trace.json``,
with the run's phases as named ranges; with ``profile.steps=0`` nothing here runs.

Two smaller tools for the GPU path: :func:`kernel_ops` counts the operations a function runs
that launch a kernel, and ``MNIST_DDP_SYNC_DEBUG=warn|error`` makes torch report every
host-device synchronisation inside an epoch's steps (:func:`syncs_reported`).
"""

from __future__ import annotations

import collections
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, schedule
from torch.utils._python_dispatch import TorchDispatchMode

from mnist_ddp.config.schema import ProfileConfig

SYNC_DEBUG_ENV_VAR = "MNIST_DDP_SYNC_DEBUG"
# Operations that only make a new view of existing memory (or mark the profiler): no kernel.
VIEW_OPS = {
    "alias", "as_strided", "detach", "expand", "permute", "select", "slice", "squeeze", "t",
    "transpose", "unsqueeze", "view", "_unsafe_view", "_reshape_alias", "lift_fresh",
    "_record_function_enter_new", "_record_function_exit",
}  # fmt: skip


class StepProfiler:
    """One rank's torch.profiler over a window of training steps."""

    def __init__(self, cfg: ProfileConfig, folder: Path, rank: int, device: torch.device) -> None:
        self.path = folder / f"rank{rank}.pt.trace.json"
        self.top, self.cuda = cfg.top, device.type == "cuda"
        self.table = ""
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        self.profiler = profile(
            activities=activities,
            schedule=schedule(skip_first=cfg.skip_steps, wait=0, warmup=1, active=cfg.steps, repeat=1),
            on_trace_ready=self.write,
            record_shapes=False,
        )
        self.profiler.start()

    def write(self, prof: profile) -> None:
        """The window is recorded: write this rank's trace (temp file, then rename) and keep the table."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            prof.export_chrome_trace(tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        sort = "self_cuda_time_total" if self.cuda else "self_cpu_time_total"
        self.table = prof.key_averages().table(sort_by=sort, row_limit=self.top)

    def step(self) -> None:
        """A training step ended."""
        self.profiler.step()

    def stop(self) -> str:
        """End profiling (writing the trace if the window was still open); the top operations as a table."""
        self.profiler.stop()
        return self.table


def start_profiler(cfg: ProfileConfig, run_dir: Path | None, rank: int, device: torch.device) -> StepProfiler | None:
    """A profiler when profile.steps > 0 and there is a run folder to write into; else None."""
    if cfg.steps <= 0 or run_dir is None:
        return None
    return StepProfiler(cfg, run_dir / "profile", rank, device)


class _OpCounter(TorchDispatchMode):
    """Counts every ATen operation dispatched below autograd (what a kernel launch corresponds to)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.overloadpacket.__name__
        if name not in VIEW_OPS:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def kernel_ops(fn: Callable[[], object]) -> collections.Counter[str]:
    """The operations that ``fn()`` runs, by name, leaving out views: one kernel each on a GPU
    (fused ones such as ``_fused_adamw_`` count once), the ones a CUDA graph replays."""
    with _OpCounter() as counter:
        fn()
    return counter.ops


@contextmanager
def syncs_reported(device: torch.device) -> Iterator[None]:
    """With ``MNIST_DDP_SYNC_DEBUG=warn`` (or ``error``) on a GPU, torch reports every host sync inside."""
    mode = os.environ.get(SYNC_DEBUG_ENV_VAR, "")
    if device.type != "cuda" or mode not in ("warn", "error"):
        yield
        return
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")
