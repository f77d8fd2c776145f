"""What a rank prints: one whole line per write, so lines from several ranks sharing a pipe do not interleave."""

from __future__ import annotations

import sys
from typing import TextIO


def say(line: str, stream: TextIO | None = None) -> None:
    """Write ``line`` and a newline in one call and flush (standard output unless ``stream`` is given)."""
    stream = stream or sys.stdout  # looked up per call: tests and wrappers may replace sys.stdout
    stream.write(line + "\n")
    stream.flush()


def warn(line: str) -> None:
    """A ``warning: ...`` line on standard output, beside the log it concerns."""
    say(f"warning: {line}")
