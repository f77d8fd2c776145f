"""The life cycle every distributed command shares (train, evaluate): launcher, device, process
group, one-line errors with their exit codes, and a teardown that leaves no rank waiting.

Every failure ends as one line on stderr and a distinct exit code: a :class:`JobError` prints
its own message; Ctrl-C is ``interrupted: ...`` (130); anything unexpected is ``error: ...
unexpected <type>: <message>`` (1) with the full traceback written to a file named on that
line (or printed, with ``MNIST_DDP_DEBUG=1``).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from mnist_ddp.base.console import flush_at_exit, say
from mnist_ddp.base.errors import EXIT_CRASH, EXIT_INTERRUPTED, JobError, first_line
from mnist_ddp.config.schema import Config
from mnist_ddp.parallel import agreement, distributed, launcher, liveness

DEBUG_ENV = "MNIST_DDP_DEBUG"


# Where tracebacks go once the run's folder is known (keep_tracebacks_in); the temp folder before.
traceback_dir: Path | None = None


def keep_tracebacks_in(folder: Path | None) -> None:
    """Write the traceback of an unexpected error into ``folder`` (the run's) from now on."""
    global traceback_dir
    traceback_dir = folder


def save_traceback(command: str, rank: int) -> Path | None:
    """Write the exception being handled, traceback and all, to a new file; its path (None if unwritable).

    The file is created new under an unpredictable name (mkstemp: O_EXCL, mode 0600), so a link
    planted at a guessable name cannot redirect the write.
    """
    for folder in (traceback_dir, None):  # None: the temp folder
        try:
            fd, name = tempfile.mkstemp(prefix=f"mnist_ddp-{command}-rank{rank}-", suffix=".traceback", dir=folder)
        except OSError:
            continue
        with os.fdopen(fd, "w") as f:
            f.write(traceback.format_exc())
        return Path(name)
    return None


def report_unexpected(e: Exception, command: str, rank: int = 0, world_size: int = 1) -> int:
    """One line for an exception that is no JobError, naming where its traceback went; the exit code.

    With MNIST_DDP_DEBUG=1 the exception is raised again instead, traceback and all.
    """
    if os.environ.get(DEBUG_ENV) == "1":
        raise e
    where = save_traceback(command, rank)
    kept = f"traceback in {where}" if where else "no traceback file could be written"
    prefix = f"[rank {rank}] " if world_size > 1 else ""
    what = f"unexpected {type(e).__name__}"
    if distributed.is_peer_loss(e):
        what = "lost contact with another rank (its process or node failed; its own log says why)"
    say(f"error: {prefix}{what}: {first_line(e)} ({kept}; {DEBUG_ENV}=1 prints it here)", sys.stderr)
    return EXIT_CRASH


def run_command(
    parse: Callable[[], Config],
    body: Callable[[Config, launcher.Launch, torch.device, str], object],
    command: str = "train",
) -> int:
    """Parse the config, join the process group, make sure every rank runs the same job, run
    ``body`` under the liveness watchdog, report errors once, and leave cleanly."""
    launch = launcher.Launch()
    clean = False
    try:
        launch = launcher.read_launch()
        cfg = parse()
        device = launcher.choose_device(cfg.train.device, launch, share=cfg.dist.backend == "gloo")
        backend = launcher.choose_backend(cfg.dist.backend, device)
        d = cfg.dist
        if distributed.init(launch, backend, device, d.timeout_seconds) is not None and d.liveness_seconds > 0:
            # Its own connection, with a short timeout: the watchdog must not wait on a frozen store for minutes.
            store = distributed.job_store(distributed.connect_store(launch, max(d.liveness_seconds, 5.0)))
            liveness.start(store, launch.rank, launch.world_size, d.liveness_seconds, d.timeout_seconds)
        hosts = agreement.check_ranks_agree(agreement.job_items(cfg))
        liveness.run()
        body(cfg, replace(launch, hosts=tuple(hosts)), device, backend)
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
    except KeyboardInterrupt:
        if launch.rank == 0:
            say("interrupted: stopped at once; a training run resumes from its last snapshot if run again", sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        return report_unexpected(e, command, launch.rank, launch.world_size)
    finally:
        keep_tracebacks_in(None)
        liveness.stop(clean)
        distributed.shutdown(clean)
    return 0


def exit_process(code: int) -> None:
    """End a launched rank's process with ``code`` once its outputs are flushed, skipping the
    interpreter's finalization.

    Everything the job owns is closed by then (process group, watchdog, wandb, files). What is
    left for finalization is torch's C++ objects, and a rank of a finished 2-node job was seen
    to abort there ("terminate called without an active exception", exit -6), which torchrun
    takes for a failure and restarts. One process without a launcher exits normally.
    """
    world_size = os.environ.get("WORLD_SIZE", "1").strip()
    if not world_size.isdigit() or int(world_size) <= 1:  # a bad value was reported already
        sys.exit(code)
    flush_at_exit()
    os._exit(code)
