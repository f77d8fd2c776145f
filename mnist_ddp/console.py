"""What a rank prints: one whole line per write, so lines from several ranks sharing a pipe do
not interleave; and a reader that goes away (``| head``, a closed terminal or ssh session)
silences the log instead of stopping the training."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TextIO


def say(line: str, stream: TextIO | None = None) -> None:
    """Write ``line`` and a newline in one call and flush (standard output unless ``stream`` is given)."""
    stream = stream or sys.stdout  # looked up per call: tests and wrappers may replace sys.stdout
    try:
        stream.write(line + "\n")
        stream.flush()
    except OSError:  # BrokenPipeError, EIO from a hung-up terminal, a full disk under a redirect
        silence(stream)


def silence(stream: TextIO) -> None:
    """Point ``stream``'s file descriptor at /dev/null: what it still buffers, and every later
    write, including Python's own flush at exit, goes nowhere instead of raising."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # a stream without a descriptor
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    with contextlib.suppress(OSError, ValueError):
        stream.flush()


def warn(line: str) -> None:
    """A ``warning: ...`` line on standard output, beside the log it concerns."""
    say(f"warning: {line}")
