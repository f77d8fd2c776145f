"""Output folders: which run folder a run writes to, holding it for one job at a time, and
checking that a command's output folder can be written before the work starts."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import stat
from pathlib import Path

from mnist_ddp.base.errors import InputError
from mnist_ddp.config.checks import check_path_names


def choose_run_dir(configured: str, dataset: str, identity: str) -> Path:
    """``run.dir`` when set, else runs/<dataset>-<identity>: a hash of the settings that decide what
    the run computes (checkpoint.config_identity), so running the same command again finds the
    same folder and resumes from its snapshots, wherever it stopped (Ctrl-C, preemption, a
    killed process, a torchrun restart). Nothing is created here."""
    return Path(configured) if configured else Path("runs") / f"{dataset}-{identity}"


def create_run_dir(run_dir: Path) -> None:
    """Create the output folder, or explain why it cannot be."""
    if run_dir.is_symlink() and not run_dir.exists():
        raise InputError(
            f"run.dir={run_dir} is a link that leads nowhere (to {os.readlink(run_dir)}: a loop, or a missing"
            " target); remove it, or choose another run.dir"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create run.dir={run_dir} ({e.strerror}); choose a writable folder") from None


# What a run writes inside run.dir: none of them may be a link (a write would land at its target).
OUTPUT_NAMES = ("config.yaml", "metrics.jsonl", "summary.json", "model.pt", "plots", "checkpoints", "stacks", "profile")


def owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def check_run_dir_is_yours(run_dir: Path) -> None:
    """Refuse a run folder that someone else could have prepared, as ssh refuses a key file that
    others can write: one owned by another user, one that others can write into (or a folder
    above it that others can write into without the sticky bit, so they could swap it), and any
    output inside it that is a link. Such a folder's snapshots could be planted (resumed as this
    run's past), and its links would send this run's writes anywhere the user can write."""
    key = f"run.dir={run_dir}"
    here = run_dir.absolute()
    info = os.stat(here)
    if info.st_uid != os.geteuid():
        raise InputError(
            f"{key} belongs to {owner_name(info.st_uid)}, not to you: its snapshots and links could be planted;"
            " choose a run.dir of your own"
        )
    if info.st_mode & stat.S_IWOTH:
        raise InputError(
            f"{key}: everyone can write into it (mode {stat.S_IMODE(info.st_mode):o}), so its snapshots and links"
            f" could be planted; run chmod o-w {here}, or choose another run.dir"
        )
    for folder in here.parents:
        mode = os.stat(folder).st_mode
        if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
            raise InputError(
                f"{key}: everyone can write into {folder} (mode {stat.S_IMODE(mode):o}, no sticky bit), so anyone"
                " could replace the run folder; choose a run.dir under a folder only you can change"
            )
    inside = [here / name for name in OUTPUT_NAMES]
    if (here / "checkpoints").is_dir() and not (here / "checkpoints").is_symlink():
        inside += list((here / "checkpoints").iterdir())
    for path in inside:
        if path.is_symlink():
            raise InputError(
                f"{key}: {path} is a link (to {os.readlink(path)}); outputs are never written through a link:"
                " remove it, or choose another run.dir"
            )


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
        try:
            check_run_dir_is_yours(run_dir)
        except InputError:
            self.fd = None
            self.release(failed=True)
            raise
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
