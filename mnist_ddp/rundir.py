"""The run folder: which one a run writes to, and creating it."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from mnist_ddp.errors import InputError


def choose_run_dir(configured: str) -> Path:
    """``run.dir`` when set, else runs/<torchrun run id>, else a new runs/<timestamp> folder.

    Under torchrun the run id stays the same across elastic restarts, so restarted workers find
    their own snapshots. Nothing is created here.
    """
    if configured:
        return Path(configured)
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    if run_id and run_id != "none":
        return Path("runs") / run_id
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path("runs") / stamp
    suffix = 1
    while run_dir.exists():
        run_dir = Path("runs") / f"{stamp}-{suffix}"
        suffix += 1
    return run_dir


def create_run_dir(run_dir: Path) -> None:
    """Create the output folder, or explain why it cannot be."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create run.dir={run_dir} ({e.strerror}); choose a writable folder") from None
