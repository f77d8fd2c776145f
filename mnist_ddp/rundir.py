"""Output folders: which run folder a run writes to, holding it for one job at a time, and
checking that a command's output folder can be written before the work starts."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from mnist_ddp.config import check_path_names
from mnist_ddp.errors import InputError


def choose_run_dir(configured: str, dataset: str, identity: str) -> Path:
    """``run.dir`` when set, else runs/<dataset>-<identity>: a hash of the settings that decide what
    the run computes (checkpoint.config_identity), so running the same command again finds the
    same folder and resumes from its snapshots, wherever it stopped (Ctrl-C, preemption, a
    killed process, a torchrun restart). Nothing is created here."""
    return Path(configured) if configured else Path("runs") / f"{dataset}-{identity}"


def create_run_dir(run_dir: Path) -> None:
    """Create the output folder, or explain why it cannot be."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create run.dir={run_dir} ({e.strerror}); choose a writable folder") from None


def check_output_folder(folder: Path, key: str) -> None:
    """Fail now, not after minutes of work, when ``folder`` could not be created or written to."""
    check_path_names(f"{key}={folder}", str(folder))
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{key}={folder}: {existing} is a file, not a folder; choose another {key}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{key}={folder}: {existing} is not writable here; choose another {key}")


def lock_holder(path: Path) -> str:
    """' (pid N)' for the process holding a flock on ``path``, from /proc/locks; '' if unknown."""
    try:
        inode = os.stat(path).st_ino
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()  # "1: FLOCK ADVISORY WRITE <pid> <maj:min:inode> 0 EOF"
                if len(parts) > 5 and parts[1] == "FLOCK" and parts[5].endswith(f":{inode}"):
                    return f" (pid {parts[4]})"
    except (OSError, ValueError):
        pass
    return ""


class RunDirLock:
    """An exclusive lock on a run folder for as long as a job writes to it.

    A ``flock`` on the folder itself: nothing is written for it, and the kernel drops it when
    the holder exits, however it exits, so a killed job never blocks the next one. A second
    job that finds the folder locked is refused at start.
    """

    def __init__(self, run_dir: Path) -> None:
        existed = run_dir.exists()
        create_run_dir(run_dir)
        self.run_dir, self.created = run_dir, not existed
        self.fd: int | None = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release(failed=False)
            raise InputError(
                f"run.dir={run_dir} is in use by another job{lock_holder(run_dir)}; wait for it to end,"
                " or choose another run.dir"
            ) from None
        except OSError:
            pass  # a file system without locks (some network ones): the run goes on unguarded

    def release(self, failed: bool) -> None:
        """Drop the lock; after a failed start, remove the folder again if this job created it empty."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if failed and self.created:
            with contextlib.suppress(OSError):  # rmdir fails when something was written into it
                self.run_dir.rmdir()
