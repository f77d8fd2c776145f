"""Train the MNIST dropout MLP: ``python -m mnist_ddp.train [--config FILE] [key=value ...]``.

The same code runs as one process and under ``torchrun`` (or ``srun``); one rank's run is a
:class:`mnist_ddp.training.trainer.Trainer`.
"""

from __future__ import annotations

from typing import Any

import torch

from mnist_ddp.config.loading import parse_args
from mnist_ddp.config.schema import Config
from mnist_ddp.parallel.entry import exit_process, run_command
from mnist_ddp.parallel.launcher import Launch
from mnist_ddp.training.trainer import Trainer


def train(cfg: Config, launch: Launch, device: torch.device, backend: str) -> dict[str, Any]:
    """Run the whole job described by ``cfg`` on this rank; rank 0 returns the summary."""
    return Trainer(cfg, launch, device, backend).run()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; see README for the exit codes."""
    return run_command(lambda: parse_args(argv, prog="python -m mnist_ddp.train"), train)


if __name__ == "__main__":
    exit_process(main())
