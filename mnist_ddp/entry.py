"""The life cycle every distributed command shares (train, evaluate): launcher, device, process
group, one-line errors with their exit codes, and a teardown that leaves no rank waiting."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch

from mnist_ddp import distributed
from mnist_ddp.config import Config
from mnist_ddp.console import say
from mnist_ddp.errors import JobError


def run_command(
    parse: Callable[[], Config], body: Callable[[Config, distributed.Launch, torch.device, str], object]
) -> int:
    """Parse the config, join the process group, run ``body``, report errors once, and leave cleanly."""
    launch = distributed.Launch()
    clean = False
    try:
        launch = distributed.read_launch()
        cfg = parse()
        device = distributed.choose_device(cfg.train.device, launch.local_rank)
        backend = distributed.choose_backend(cfg.dist.backend, device)
        distributed.init(launch, backend, device, cfg.dist.timeout_seconds)
        body(cfg, launch, device, backend)
        clean = True
    except JobError as e:
        # Errors every rank hits alike are printed once, by rank 0.
        if launch.rank == 0 or e.rank_specific:
            prefix = f"[rank {launch.rank}] " if launch.world_size > 1 else ""
            say(f"{e.label}: {prefix}{e}", sys.stderr)
        else:
            # torchrun stops the whole group as soon as one worker exits: give rank 0 time to print.
            time.sleep(2)
        return e.exit_code
    finally:
        distributed.shutdown(clean)
    return 0
