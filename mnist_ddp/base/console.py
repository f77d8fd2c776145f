"""What a rank prints: one whole line per write, so lines from several ranks sharing a pipe do
not interleave; a reader that goes away (``| head``, a closed terminal or ssh session) silences
the log instead of stopping the training; and a reader that stops reading (Ctrl-S on a
terminal, a full pipe nobody drains) never stalls it.

Each stream has a writer thread. :func:`say` hands it the line and waits a moment for the write,
so output keeps its usual order and timing; when the stream blocks, the line stays queued in
order and the caller goes on (a blocked terminal write was a rank "making no progress" to the
liveness watchdog). :func:`drain` waits for the queue before the process exits.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import sys
import threading
import time
from typing import TextIO

# How long say() waits for its line to be written before it leaves the line queued and goes on.
HANDOFF_SECONDS = 0.2
# A writer thread with nothing to write for this long ends (a new line starts another).
IDLE_SECONDS = 30.0


class LineWriter:
    """One stream's queue and the daemon thread that writes it (a write blocked on a stopped
    terminal holds no lock the interpreter needs at exit)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lines: queue.SimpleQueue[tuple[str, threading.Event]] = queue.SimpleQueue()
        self.pending = 0  # queued and not yet written; changed under self.lock
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        threading.Thread(target=self.write_forever, name="mnist_ddp-console", daemon=True).start()

    def put(self, text: str) -> tuple[threading.Event, bool]:
        """Queue ``text``; its written-event, and whether older lines were still waiting."""
        written = threading.Event()
        with self.lock:
            self.pending += 1
            behind = self.pending > 1
        self.lines.put((text, written))
        return written, behind

    def write_forever(self) -> None:
        while True:
            try:
                text, written = self.lines.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with writers_lock:  # no put can come in between: say() queues under this lock
                    if self.lines.empty():
                        if writers.get(id(self.stream)) is self:
                            del writers[id(self.stream)]
                        return
                continue
            try:
                self.stream.write(text)
                self.stream.flush()
            except OSError:  # BrokenPipeError, EIO from a hung-up terminal, a full disk under a redirect
                silence(self.stream)
            except ValueError:  # the stream was closed (a test's captured output)
                pass
            with self.lock:
                self.pending -= 1
                self.idle.notify_all()
            written.set()

    def drain(self, timeout: float | None) -> bool:
        """Wait until every queued line is written; False if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            while self.pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self.idle.wait(left)
        return True


writers: dict[int, LineWriter] = {}
writers_lock = threading.Lock()
atexit.register(lambda: drain())  # a process that ends normally says everything it queued


def queue_text(stream: TextIO, text: str) -> tuple[threading.Event, bool]:
    """Queue ``text`` for ``stream``'s writer (made on first use, and again after it idled out:
    tests and wrappers may replace sys.stdout); its written-event, and whether lines wait before it."""
    with writers_lock:
        writer = writers.get(id(stream))
        if writer is None or writer.stream is not stream:
            writer = writers[id(stream)] = LineWriter(stream)
        return writer.put(text)


def say(line: str, stream: TextIO | None = None) -> None:
    """Write ``line`` and a newline in one call (standard output unless ``stream`` is given); wait
    at most HANDOFF_SECONDS for it, and not at all while earlier lines are still blocked."""
    written, behind = queue_text(stream or sys.stdout, line + "\n")
    if not behind:
        written.wait(HANDOFF_SECONDS)


def drain(timeout: float | None = None) -> bool:
    """Wait for every stream's queued lines (before the process exits); False if ``timeout`` passed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for writer in list(writers.values()):
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not writer.drain(left):
            return False
    return True


class QueuedStream:
    """A file-like view of a stream that writes through its writer thread (for tqdm's bar)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        queue_text(self.stream, text)
        return len(text)

    def flush(self) -> None:
        pass  # the writer thread flushes after every write

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()


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


def flush_at_exit(timeout: float | None = None) -> None:
    """Drain the queued lines, then flush the standard streams (what others wrote directly)."""
    drain(timeout)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed or vanished reader: nothing left to say
            stream.flush()
