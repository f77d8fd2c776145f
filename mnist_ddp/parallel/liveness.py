"""Liveness: a rank the others wait for that has stopped is named within ``dist.liveness_seconds``.

The main thread marks what it does (:func:`mark`, :func:`waiting`, :func:`progress`: one tuple
assignment each); a :class:`Watchdog` thread per rank publishes a record to the job's TCPStore
(not the backend, whose heartbeat would queue behind the collective that hangs) and reads its
peers'. It judges on a clock of its own, which stands still while the watchdog is paused, and
counts marks, progress reports and CPU use as progress; :mod:`mnist_ddp.parallel.blame` decides
who is silent or stuck. docs/troubleshooting.md says what is treated as paused, slow, silent and
stuck. Exits use ``os._exit``: the main thread is blocked inside a collective that cannot return.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mnist_ddp.base.console import flush_at_exit, say
from mnist_ddp.base.errors import EXIT_UNRESPONSIVE
from mnist_ddp.parallel.blame import (
    DONE,
    EXITED,
    RUNNING,
    STUCK,
    STUCK_GRACE_POLLS,
    Record,
    Seen,
    Verdict,
    culprit_text,
    describe,
    judge,
)
from mnist_ddp.parallel.rendezvous import quiet_stderr

# Phases that repeat through a run and get the short limit once the first epoch has ended.
STEADY_PHASES = ("step", "agreement", "evaluation")


# A phase may stall this many times its longest stall so far (a snapshot on a slow file system).
HISTORY_FACTOR = 3.0


# The process used at least this share of one core since the last poll: it works, it is not stuck.
BUSY_SHARE = 0.2


# A poll counts for at most this many polls of time: longer, and the watchdog itself was paused
# (or starved: it then judges more slowly, never sooner).
PAUSE_POLLS = 2


class Watchdog:
    """This rank's side: the main thread's marks, and the thread that publishes and judges."""

    def __init__(
        self, store: Any, rank: int, world_size: int, short: float, long: float, poll: float | None = None
    ) -> None:
        self.store, self.rank, self.world_size = store, rank, world_size
        self.short, self.long = short, long
        self.poll = poll or min(2.0, max(0.1, short / 10))
        self.host, self.pid = socket.gethostname(), os.getpid()
        # (marks, phase, epoch, step, waiting, since): replaced whole, so a reader never sees half a
        # mark; a new tuple (even with the same marks: a progress report) is progress.
        self.current: tuple[int, str, int, int, str, float] = (0, "start-up", 0, 0, "", time.monotonic())
        self.is_steady = False
        self.beat = self.progress = 0
        self.longest: dict[str, float] = {}  # phase -> its longest stall so far (watchdog clock)
        self.state, self.stack = RUNNING, ""
        self.run_dir: Path | None = None
        self.lost: Exception | None = None
        self.stopped = threading.Event()
        # Not a daemon: a daemon thread inside a C++ store call when the interpreter shuts down
        # aborts the process. stop() ends it (within a poll, or a store timeout) before exit.
        self.thread = threading.Thread(target=self.watch, name="mnist_ddp-liveness")
        self.publish()  # before the first collective after this, so every peer finds a record

    # --- the main thread ---------------------------------------------------------------------

    def mark(self, phase: str, epoch: int = 0, step: int = 0) -> None:
        self.current = (self.current[0] + 1, phase, epoch, step, "", time.monotonic())

    def set_waiting(self, what: str) -> None:
        marks, phase, epoch, step, _, _ = self.current
        self.current = (marks + 1, phase, epoch, step, what, time.monotonic())

    def report_progress(self) -> None:
        marks, phase, epoch, step, waiting, _ = self.current
        self.current = (marks, phase, epoch, step, waiting, time.monotonic())

    # --- the watchdog thread -----------------------------------------------------------------

    def base_limit(self) -> float:
        """The beat's limit, and a phase's before its history: short in the steady state, else long."""
        return self.short if self.is_steady and self.current[1] in STEADY_PHASES else self.long

    def limit(self) -> float:
        return max(self.base_limit(), HISTORY_FACTOR * self.longest.get(self.current[1], 0.0))

    def record(self) -> Record:
        marks, phase, epoch, step, waiting, since = self.current
        doing = describe(phase, epoch, step, waiting)
        return Record(
            self.host,
            self.pid,
            self.beat,
            marks,
            doing,
            time.monotonic() - since,
            self.limit(),
            self.state,
            self.stack,
            self.progress,
            self.short if self.is_steady else self.long,
        )

    def publish(self) -> None:
        self.beat += 1
        self.store.set(f"live/{self.rank}", json.dumps(asdict(self.record())))

    def read_peers(self, seen: dict[int, Seen], now: float) -> dict[int, Seen]:
        keys = [f"live/{r}" for r in range(self.world_size) if r != self.rank]
        present = [k for k in keys if self.store.check([k])]
        updated = dict(seen)
        for key, raw in zip(present, self.store.multi_get(present) if present else [], strict=True):
            rank, record = int(key.split("/")[1]), Record(**json.loads(raw))
            old = seen.get(rank)
            beat_moved = now if old is None or old.record.beat != record.beat else old.beat_moved
            moved = old is None or old.record.progress != record.progress
            updated[rank] = Seen(record, beat_moved, now if moved else old.progress_moved)
        return updated

    def watch(self) -> None:
        seen: dict[int, Seen] = {}
        lost: Exception | None = None  # the store stopped answering: never touched again (each try logs in C++)
        clock = progressed_at = 0.0  # the watchdog's own clock: it stands still while the watchdog is paused
        last_wall, last_cpu, last_current = time.monotonic(), time.process_time(), self.current
        while not self.stopped.wait(self.poll):
            wall, cpu, current = time.monotonic(), time.process_time(), self.current
            elapsed, counted = wall - last_wall, min(wall - last_wall, PAUSE_POLLS * self.poll)
            if elapsed - counted >= self.short:
                self.tell_pause(elapsed)
            clock += counted
            busy = cpu - last_cpu >= BUSY_SHARE * elapsed and not current[4]  # CPU use while waiting is the wait
            if current is not last_current or busy:
                if not last_current[4]:  # a stall of its own, not a wait for the others
                    phase = last_current[1]
                    self.longest[phase] = max(self.longest.get(phase, 0.0), clock - progressed_at)
                progressed_at, self.progress = clock, self.progress + 1
            last_wall, last_cpu, last_current = wall, cpu, current
            stalled = clock - progressed_at
            if lost is not None:
                if stalled > self.limit():
                    self.exit_lost_store(lost)
                continue
            try:
                self.publish()
                if stalled < self.poll:  # progressing: nothing to judge, and old observations expire
                    seen = {}
                    continue
                seen = self.read_peers(seen, clock)
            except Exception as e:  # its host (torchrun's agent, or rank 0 under srun) is gone or frozen
                lost = self.lost = e
                continue
            verdict = judge(current[0], stalled, self.limit(), seen, clock, self.poll)
            if verdict is not None and not self.stopped.is_set():
                self.act(verdict, seen, clock, stalled)

    def tell_pause(self, seconds: float) -> None:
        """This process was paused as a whole: say so, and that nobody is blamed for it."""
        prefix = f"[rank {self.rank}] " if self.world_size > 1 else ""
        say(
            f"note: {prefix}this process was paused for {seconds:.0f} s (SIGSTOP, a suspended job, a frozen VM);"
            " the liveness watchdog does not count the pause against any rank",
            sys.stderr,
        )

    def act(self, verdict: Verdict, seen: dict[int, Seen], now: float, stalled: float) -> None:
        settings = f"dist.liveness_seconds={self.short:g}, dist.timeout_seconds={self.long:g}"
        if not verdict.culprits:
            self.stack = write_stacks(self.run_dir, self.rank, self.host)
            self.state = STUCK
            with contextlib.suppress(Exception):
                self.publish()
            time.sleep(STUCK_GRACE_POLLS * self.poll)  # the waiting peers read the path and name it
            stack = f"the stack of every thread is in {self.stack}" if self.stack else "no stack file could be written"
            prefix = f"[rank {self.rank}] " if self.world_size > 1 else ""
            self.exit(
                f"error: {prefix}made no progress for {stalled:.0f} s at {self.record().doing} while the other ranks"
                f" waited for it; {stack}; stopping ({settings})"
            )
        blamed = {rank for rank, _ in verdict.culprits}
        reporter = min(r for r in range(self.world_size) if r not in blamed)
        if self.rank != reporter:
            time.sleep(2)  # the reporter prints the line; torchrun stops the group once one worker exits
            self.exit(None)
        named = "; ".join(culprit_text(rank, why, seen[rank], now) for rank, why in verdict.culprits)
        self.exit(
            f"error: {named}; rank {self.rank} waited {stalled:.0f} s at {self.record().doing}, and every rank"
            f" stopped ({settings}); run again to resume from the last snapshot (torchrun's restarts and SLURM's"
            " requeue do)"
        )

    def exit_lost_store(self, e: Exception) -> None:
        self.exit(
            f"error: [rank {self.rank}] lost the rendezvous store ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
            " and made no progress since; the node hosting it (torchrun's agent on the first node, or rank 0 under"
            " srun) stopped or is unreachable; run again to resume from the last snapshot"
        )

    def exit(self, line: str | None) -> None:
        if line:
            say(line, sys.stderr)
        flush_at_exit(timeout=5)  # a stopped terminal must not keep a stuck job alive
        os._exit(EXIT_UNRESPONSIVE)

    def finish(self, clean: bool) -> None:
        """Say this rank is done (or exited), so its silence from now on names nobody; stop the thread."""
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join()
        self.state = DONE if clean else EXITED
        if self.lost is None:
            # After a failure the store's host may be gone already (rank 0 under srun): no C++ warning about it.
            with contextlib.suppress(Exception), quiet_stderr():
                self.publish()


def write_stacks(run_dir: Path | None, rank: int, host: str) -> str:
    """Every thread's Python stack, into run.dir/stacks (else a new file in the temp folder); the path or ''."""
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        parts.append(f"Thread {names.get(ident, ident)}:\n{''.join(traceback.format_stack(frame))}")
    text = f"rank {rank} on {host}, pid {os.getpid()}, {time.strftime('%Y-%m-%d %H:%M:%S')}\n\n" + "\n".join(parts)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        if run_dir is None:
            raise OSError("no run.dir")
        folder = run_dir / "stacks"
        folder.mkdir(parents=True, exist_ok=True)
        path = (folder / f"rank{rank}-{host}-pid{os.getpid()}.txt").absolute()
        fd = os.open(path, flags, 0o644)  # never through a planted link, never over a file
    except OSError:
        try:
            fd, name = tempfile.mkstemp(prefix=f"mnist_ddp-stacks-rank{rank}-", suffix=".txt")
            path = Path(name)
        except OSError:
            return ""
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return str(path)


active: Watchdog | None = None


def start(store: Any, rank: int, world_size: int, short: float, long: float) -> Watchdog | None:
    """Publish this rank's first record; the thread starts with :func:`run`. None when off or alone."""
    global active
    active = Watchdog(store, rank, world_size, short, long) if short > 0 and world_size > 1 else None
    return active


def run() -> None:
    """Start judging (after the ranks' first agreement: every peer has published by then)."""
    if active is not None and not active.thread.is_alive():
        active.thread.start()


def mark(phase: str, epoch: int = 0, step: int = 0) -> None:
    """The main thread starts ``phase`` (a step, an evaluation, ...): this rank made progress."""
    if active is not None:
        active.mark(phase, epoch, step)


@contextlib.contextmanager
def waiting(what: str = "the other ranks") -> Iterator[None]:
    """Inside a collective: marked on the way in and out, so the count of marks stays comparable."""
    if active is None:
        yield
        return
    active.set_waiting(what)
    try:
        yield
    finally:
        active.set_waiting("")


def progress() -> None:
    """Progress inside a long phase (an evaluation batch): the stall clock starts again, the marks stay."""
    if active is not None:
        active.report_progress()


def wait_started(what: str) -> None:
    """This rank's last gradient is in: it waits for DDP's all-reduce."""
    if active is not None:
        active.set_waiting(what)


def wait_ended() -> None:
    """That all-reduce completed (called from the backend's thread)."""
    if active is not None:
        active.set_waiting("")


def steady() -> None:
    """The first epoch has ended: every phase has run once, so the short limit applies from now on."""
    if active is not None:
        active.is_steady = True


def tell_run_dir(run_dir: Path | None) -> None:
    """Where a stuck rank writes its stacks."""
    if active is not None:
        active.run_dir = run_dir


def stop(clean: bool) -> None:
    """Publish that this rank is done (or exited) and stop the thread."""
    global active
    if active is not None:
        active.finish(clean)
    active = None
