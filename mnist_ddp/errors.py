"""The errors a command reports as one line, each with its own exit code.

Every failure the user can act on is a :class:`JobError`: the entry points print its message
as a single ``error: ...`` (or ``preempted: ...``) line without a traceback and exit with its
``exit_code``. ``rank_specific`` marks an error that only some ranks hit, so each of those
ranks prints it; an error every rank hits alike is printed by rank 0 alone.
"""

from __future__ import annotations

EXIT_INPUT = 2
EXIT_DIVERGED = 3
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: a snapshot was saved; run the same command again to resume


class JobError(Exception):
    """A failure reported as one line; subclasses set the exit code and the line's label."""

    exit_code = 1
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


class Preempted(JobError):
    """A stop was requested and a snapshot saved. Not a failure: the job resumes when rerun."""

    exit_code = EXIT_PREEMPTED
    label = "preempted"


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
