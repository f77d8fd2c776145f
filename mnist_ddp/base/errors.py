"""The errors a command reports as one line, each with its own exit code.

Every failure the user can act on is a :class:`JobError`: the entry points print its message
as a single ``error: ...`` (or ``preempted: ...``) line without a traceback and exit with its
``exit_code``. ``rank_specific`` marks an error that only some ranks hit, so each of those
ranks prints it; an error every rank hits alike is printed by rank 0 alone.
"""

from __future__ import annotations

EXIT_CRASH = 1  # an unexpected exception: one line here, the traceback in a file
EXIT_INPUT = 2
EXIT_DIVERGED = 3
# EX_UNAVAILABLE: a rank went silent or stopped making progress (or lost the store); the line
# names it, and a rerun (torchrun's restart, SLURM's requeue) resumes from the last snapshot.
EXIT_UNRESPONSIVE = 69
EXIT_OUTPUT = 74  # EX_IOERR: an output could not be written (disk full, read-only, no permission)
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: a snapshot was saved; run the same command again to resume
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


class JobError(Exception):
    """A failure reported as one line; subclasses set the exit code and the line's label."""

    exit_code = EXIT_CRASH
    label = "error"

    def __init__(self, message: str, rank_specific: bool = False) -> None:
        super().__init__(message)
        self.rank_specific = rank_specific


class InputError(JobError):
    """Bad input from the user (config, data files, checkpoint); the message names the thing and the fix."""

    exit_code = EXIT_INPUT


class PeerFailed(JobError):
    """Another rank failed; it printed the reason, this rank only stops."""

    exit_code = EXIT_INPUT


class Diverged(JobError):
    """The loss or the weights became NaN or infinite."""

    exit_code = EXIT_DIVERGED


class OutputError(JobError):
    """An output file could not be written; the message names the file and the system's reason."""

    exit_code = EXIT_OUTPUT


class Preempted(JobError):
    """A stop was requested and a snapshot saved. Not a failure: the job resumes when rerun."""

    exit_code = EXIT_PREEMPTED
    label = "preempted"


class Interrupted(JobError):
    """A signal from the user's session (Ctrl-C, a closed terminal, Ctrl-\\): stopped at an agreed
    step with a snapshot. The exit code is 128 + the signal, as shells report it."""

    exit_code = EXIT_INTERRUPTED
    label = "interrupted"

    def __init__(self, message: str, signum: int = 2) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
