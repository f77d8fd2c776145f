"""What watches the step loop besides the algorithm, called in one fixed order on every rank:
the liveness mark and test faults before a step, the profiler's range around it and its window
after it, the sample log, the clock, the progress bar, and the learning rates wandb logs."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mnist_ddp.base import fault_injection
from mnist_ddp.base.console import QueuedStream
from mnist_ddp.config.schema import Config
from mnist_ddp.model.optimizer import current_lr
from mnist_ddp.observe.profiling import start_profiler
from mnist_ddp.observe.reporter import Reporter
from mnist_ddp.parallel import liveness
from mnist_ddp.parallel.launcher import Launch
from mnist_ddp.state.checkpoint import Progress
from mnist_ddp.training.build import Parts


class StepObservers:
    """The step loop's observers; :meth:`start_epoch` and :meth:`end_epoch` frame each epoch."""

    def __init__(self, cfg: Config, launch: Launch, device: torch.device, parts: Parts, reporter: Reporter) -> None:
        self.cfg, self.launch, self.device, self.parts, self.reporter = cfg, launch, device, parts, reporter
        self.profiler: Any = None
        self.bar: Any = None
        self.logged_lrs: dict[int, float] = {}  # global step -> lr, for the steps whose loss is logged

    def start_run(self, shared_run_dir: Path) -> None:
        """The profiler, when profile.steps asks for one."""
        self.profiler = start_profiler(self.cfg.profile, shared_run_dir, self.launch.rank, self.device)
        self.parts.clock.profiling = self.profiler is not None
        self.folder = shared_run_dir / "profile"

    def end_run(self) -> None:
        """End the profile (profile.steps > 0); rank 0 prints its top operations."""
        if self.profiler is None:
            return
        table = self.profiler.stop()
        self.profiler, self.parts.clock.profiling = None, False
        self.reporter.profile_written(self.folder, table)

    def start_epoch(self, p: Progress) -> None:
        """The progress bar (rank 0 on a terminal) and the rates to log."""
        shown = self.launch.rank == 0 and self.cfg.log.progress and sys.stdout.isatty()
        self.bar = tqdm(
            total=self.parts.steps_per_epoch,
            initial=p.step_in_epoch,
            desc=f"epoch {p.epoch}",
            leave=False,
            disable=not shown,
            file=QueuedStream(sys.stderr),  # a stopped terminal must not stall the step loop
        )
        self.logged_lrs = {}

    def start_loop(self) -> None:
        """The epoch's step loop begins (the clock times it)."""
        self.parts.clock.loop_started()

    @contextmanager
    def step(self, p: Progress, batch: torch.Tensor) -> Iterator[None]:
        """Around one step: marked for the liveness watchdog, a range while profiling, logged for the tests."""
        liveness.mark("step", p.epoch, p.global_step + 1)
        fault_injection.slow_phase("step", p.global_step + 1)
        with torch.profiler.record_function("mnist_ddp/step") if self.profiler is not None else nullcontext():
            yield
        fault_injection.log_samples(
            self.parts.sample_log, p.global_step + 1, self.launch.world_size, self.launch.rank, batch
        )

    def stepped(self, p: Progress) -> None:
        """A step is done: the bar moves, and the rate is kept where its loss will be logged."""
        self.bar.update()
        if self.reporter.wants_loss_at(p.global_step):
            self.logged_lrs[p.global_step] = current_lr(self.parts.optimizer, self.parts.schedule, self.cfg.train.lr)

    def checked(self) -> None:
        """After the step's checks: the profiler's window moves (the step that ends it writes the trace)."""
        if self.profiler is not None:
            with self.parts.clock.aside():
                self.profiler.step()

    def end_loop(self) -> None:
        """The epoch's step loop is over (inside the sync check)."""
        self.parts.clock.loop_ended()

    def end_epoch(self) -> dict[int, float]:
        """The bar goes; the rates of the steps whose loss is logged."""
        self.bar.close()
        return self.logged_lrs
