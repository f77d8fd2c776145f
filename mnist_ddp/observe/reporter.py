"""Rank 0's outputs, in one place: its lines, config.yaml, metrics.jsonl, summary.json, the figures
and wandb. A reporter without a run folder (every other rank) does nothing, so the trainer has
no rank-0 branches of its own; it never takes part in a collective."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from mnist_ddp.base.atomic import atomic_write_text, output_error
from mnist_ddp.base.console import say
from mnist_ddp.config.loading import to_yaml
from mnist_ddp.config.schema import Config
from mnist_ddp.model.evaluation import EvalCounts
from mnist_ddp.observe import metrics, tracking


class Reporter:
    """What rank 0 prints and writes; ``run_dir`` None (the other ranks): nothing."""

    def __init__(self, cfg: Config, run_dir: Path | None) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        self.wandb_run: Any = None

    def say(self, line: str) -> None:
        """A line of rank 0's log."""
        if self.run_dir is not None:
            say(line)

    def check(self) -> None:
        """Before anything is written: wandb's mode can work here (a key, a server)."""
        if self.run_dir is not None:
            tracking.check_mode(self.cfg)

    def start(self, records: list[dict[str, Any]], opening: list[str]) -> None:
        """config.yaml, the records a resumed run keeps, and the opening lines."""
        if self.run_dir is None:
            return
        atomic_write_text(self.run_dir / "config.yaml", to_yaml(self.cfg))
        metrics.write_metrics(self.run_dir, records)
        for line in opening:
            say(line)

    @contextmanager
    def tracked(self, resume_id: str | None) -> Iterator[None]:
        """The wandb run (rank 0, unless disabled) for the length of the block."""
        with tracking.tracked(self.cfg, self.run_dir, resume_id) as self.wandb_run:
            yield

    def wants_loss_at(self, global_step: int) -> bool:
        """Whether this step's loss is logged (to wandb, every log.every_steps)."""
        return self.wandb_run is not None and global_step % self.cfg.log.every_steps == 0

    def log_step_losses(self, losses: torch.Tensor, logged_lrs: dict[int, float], last_step: int) -> None:
        """The logged steps' losses, read from the device once an epoch and only when logged (a read waits for it)."""
        if not logged_lrs:
            return
        values = losses.tolist()
        for step, lr in logged_lrs.items():  # the epoch's last step is last_step
            tracking.log(
                self.wandb_run, {"train/loss": values[len(values) - 1 - (last_step - step)], "train/lr": lr}, step
            )

    def record_epoch(self, record: dict[str, Any], counts: EvalCounts, global_step: int) -> None:
        """An evaluated epoch: metrics.jsonl, the epoch line, wandb."""
        if self.run_dir is None:
            return
        metrics.append_metrics(self.run_dir, record)
        say(metrics.format_epoch_line(record, self.cfg.train.epochs))
        tracking.log(self.wandb_run, tracking.epoch_values(record, counts.per_class_accuracy), global_step)

    def profile_written(self, folder: Path, table: str) -> None:
        """Where the traces are, and rank 0's top operations."""
        if table:
            self.say(
                f"profile: one trace per rank in {folder} (open in ui.perfetto.dev); rank 0's top operations:\n{table}"
            )

    def finish(self, summary: dict[str, Any], figures: dict[str, Any] | None, global_step: int) -> None:
        """summary.json, the figures (``figures``: write_run_plots' arguments, None for none), the last line, wandb."""
        if self.run_dir is None:
            return
        metrics.write_summary(self.run_dir, summary)
        if figures is not None:
            from mnist_ddp.observe import plots  # matplotlib: half a second of import, after the training

            try:
                paths = plots.write_run_plots(**figures, folder=self.run_dir / "plots")
            except OSError as e:  # fonts and image files to open: a low ulimit -n fails here, not in training
                raise output_error(self.run_dir / "plots", e) from None
            tracking.log_images(self.wandb_run, paths, global_step)
        say(
            f"final test accuracy {100 * summary['test_accuracy']:.2f}% on {summary['test_examples']} images "
            f"(best {100 * summary['best_test_accuracy']:.2f}%), {summary['wall_seconds']:.1f}s since process start"
        )
        tracking.finish(self.wandb_run, summary)
