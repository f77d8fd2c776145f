"""A profile on request (``profile.steps=N``): torch.profiler records N training steps on every
rank, after ``profile.skip_steps`` steps of warm-up, and each rank writes its own Chrome trace,
``run.dir/profile/rank<R>.pt.trace.json``, which Perfetto (ui.perfetto.dev), chrome://tracing
and TensorBoard's profiler plugin open. The run's phases are named ranges in it (``mnist_ddp/step``,
``mnist_ddp/agreement``, ``mnist_ddp/evaluation``, ``mnist_ddp/snapshot``); the gradient
all-reduce is the backend's own ``gloo:all_reduce`` or ``nccl:all_reduce``. With
``profile.steps=0`` (the default) nothing here runs: no profiler, no ranges.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from mnist_ddp.config import ProfileConfig


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
