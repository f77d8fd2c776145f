"""What a rank prints: whole lines in order, a reader that stops reading never stalls the caller,
and every queued line is written before the process ends."""

from __future__ import annotations

import io
import threading
import time

from mnist_ddp.base import console


class StoppedTerminal(io.StringIO):
    """A stream whose writes block until ``resume`` is set, as a terminal after Ctrl-S."""

    def __init__(self) -> None:
        super().__init__()
        self.resume = threading.Event()

    def write(self, text: str) -> int:
        self.resume.wait()
        return super().write(text)


def test_lines_are_written_before_say_returns_on_a_stream_that_reads():
    stream = io.StringIO()
    console.say("epoch 1", stream)
    assert stream.getvalue() == "epoch 1\n"  # no wait for a drain: the usual order and timing


def test_a_stream_that_stops_reading_does_not_stall_the_caller_and_loses_nothing():
    stream = StoppedTerminal()
    started = time.monotonic()
    for i in range(50):
        console.say(f"line {i}", stream)
    assert time.monotonic() - started < 2 * console.HANDOFF_SECONDS + 0.5  # one hand-off wait, then none
    assert stream.getvalue() == "" and not console.drain(timeout=0.1)
    stream.resume.set()
    assert console.drain(timeout=10)
    assert stream.getvalue() == "".join(f"line {i}\n" for i in range(50))


def test_a_reader_that_went_away_silences_the_stream_instead_of_raising():
    class Gone(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    console.say("nobody reads this", Gone())  # no exception
    assert console.drain(timeout=5)
