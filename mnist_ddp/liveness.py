"""Liveness: a rank that the others wait for and that has stopped (frozen, or stuck in a sleep,
a lock, a hung read) is named within ``dist.liveness_seconds`` instead of costing every rank
``dist.timeout_seconds``; a job that is slow or paused as a whole goes on.

Why the store: a heartbeat sent through the backend (gloo or NCCL) would queue behind the very
collective that hangs. The TCPStore that every rank already holds (torchrun's agent hosts it;
rank 0 does under a bare ``srun``) works the same for both backends and is independent of any
collective in flight, so a watchdog thread can read and write it while the main thread waits.

- The main thread marks what it is doing (:func:`mark`: a step, an evaluation, a snapshot;
  :func:`waiting`: inside a collective; :class:`mnist_ddp.timing.RankClock` marks the wait for
  gradients) and may report progress inside a long phase (:func:`progress`: an evaluation
  batch). A mark is one tuple assignment: no lock, no I/O, nothing on the device. Every rank
  makes the same marks in the same order, so the count of marks is comparable across ranks:
  a rank with fewer is behind, and the others are waiting for it.
- A :class:`Watchdog` thread per rank publishes a :class:`Record` every ``poll`` seconds and
  reads everyone's. What it counts as this rank's *progress*: a new mark, a progress report,
  or the process using the CPU (compiling, a long evaluation: slow, not stuck). A sleep, a
  blocked read or write, a lock or a frozen process use none.
- Its clock is its own: each poll adds at most ``poll`` plus a second, so when the watchdog
  itself was paused (SIGSTOP, ``scontrol suspend``, a frozen VM or cgroup) the gap counts
  as one poll, never as a peer's silence or its own stall. Like torch's NCCL heartbeat
  monitor, it judges only time it was awake to see.
- :func:`judge` decides, on that clock:
  - a peer whose beat has not moved for its limit is *silent*: stopped, frozen, its node gone;
  - this rank is *stuck* when it has made no progress for its limit while a live peer is
    ahead of it (waiting for it). Ranks level with each other are in the same phase at the
    same time (an evaluation, the first compile): slow, not stuck;
  - a peer behind that never says it is stuck (its watchdog cannot run) is named after its
    limit.
  A stuck rank writes every thread's stack to a file, publishes the path, says so, and exits;
  the waiting peers name it with the path.
- Limits: ``dist.liveness_seconds`` for a step, an agreement and an evaluation once the first
  epoch has ended (:func:`steady`); ``dist.timeout_seconds`` before that (imports, data,
  compilation, the first evaluation) and for file I/O (snapshots, the final outputs), whose
  speed is the file system's. A phase that once stalled for longer may stall 3 times that.

Exits use ``os._exit``: the main thread is blocked inside a collective that cannot return.
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mnist_ddp.console import flush_at_exit, say
from mnist_ddp.errors import EXIT_UNRESPONSIVE
from mnist_ddp.rendezvous import quiet_stderr

RUNNING, STUCK, DONE, EXITED = "running", "stuck", "done", "exited"
# Phases that repeat through a run and get the short limit once the first epoch has ended.
STEADY_PHASES = ("step", "agreement", "evaluation")
# A phase may stall this many times its longest stall so far (a snapshot on a slow file system).
HISTORY_FACTOR = 3.0
# The process used at least this share of one core since the last poll: it works, it is not stuck.
BUSY_SHARE = 0.2
# A poll counts for at most this many polls of time: longer, and the watchdog itself was paused
# (or starved: it then judges more slowly, never sooner).
PAUSE_POLLS = 2
# After publishing its stack, a stuck rank waits this many polls for the others to read it.
STUCK_GRACE_POLLS = 3


@dataclass
class Record:
    """What a rank publishes about itself (JSON in the store)."""

    host: str
    pid: int
    beat: int  # advances every poll while the process runs
    marks: int  # advances with every mark of the main thread: the rank's place in the job
    doing: str  # e.g. "global step 51 (epoch 3), waiting for gradients"
    doing_seconds: float  # for how long, when the record was written
    limit: float  # the stall this rank is allowed right now (its phase's)
    state: str = RUNNING
    stack: str = ""  # the stack file a stuck rank wrote
    progress: int = 0  # advances whenever the rank progresses: a mark, a progress report, CPU use
    beat_limit: float = 0.0  # the silence its beat is allowed (0: ``limit``)


@dataclass
class Seen:
    """A peer's newest record, and when (on this rank's watchdog clock) its beat and progress last moved."""

    record: Record
    beat_moved: float
    progress_moved: float


@dataclass
class Verdict:
    """``judge``'s answer: this rank is stuck (``culprits`` empty), or it names peers."""

    culprits: list[tuple[int, str]]  # (rank, why): silent | stuck | exited | no progress


def describe(phase: str, epoch: int, step: int, waiting: str) -> str:
    """'global step 51 (epoch 3), waiting for gradients', 'evaluation (epoch 3)', 'start-up'."""
    where = f" (epoch {epoch})" if epoch else ""
    text = f"global step {step}{where}" if phase == "step" else phase + where
    return text + (f", waiting for {waiting}" if waiting else "")


def judge(marks: int, stalled: float, limit: float, seen: dict[int, Seen], now: float, poll: float) -> Verdict | None:
    """What this rank (at ``marks``, without progress for ``stalled`` seconds) concludes from its peers.

    All times are on the watchdog's own clock. Returns a Verdict, or None to go on. A peer is a
    culprit when it says it is stuck, when its beat has not moved for its beat limit (plus a
    poll of slack), or when it exited and this rank has waited its own limit. With no culprit,
    this rank is stuck once it has stalled for its limit while a live peer is ahead of it; a
    peer behind that never says so (its watchdog cannot run) is named after its own limit.
    """
    culprits: list[tuple[int, str]] = []
    for rank, s in sorted(seen.items()):
        r = s.record
        # An exited rank is blamed only after this rank's own limit: ranks leave one by one after a stop.
        if r.state == STUCK or (r.state == EXITED and stalled > limit):
            culprits.append((rank, r.state))
        elif r.state == RUNNING and now - s.beat_moved > (r.beat_limit or r.limit) + poll:
            culprits.append((rank, "silent"))
    if culprits:
        return Verdict(culprits)
    if stalled <= limit:
        return None
    live = {rank: s for rank, s in seen.items() if s.record.state == RUNNING}
    # A peer whose beat stopped moving may be frozen (SIGSTOP, a lost node) while this rank was already
    # waiting on it: wait until it can be called silent, rather than call this rank stuck first.
    if any(now - s.beat_moved > 2 * poll for s in live.values()):
        return None
    behind = sorted(rank for rank, s in live.items() if s.record.marks < marks)
    if not behind:
        ahead = any(s.record.marks > marks for s in live.values())
        return Verdict([]) if ahead else None  # level with every peer: the whole job is slow, not this rank
    grace = STUCK_GRACE_POLLS * poll
    overdue = [rank for rank in behind if now - live[rank].progress_moved > live[rank].record.limit + grace]
    return Verdict([(rank, "no progress") for rank in overdue]) if overdue else None


def culprit_text(rank: int, why: str, s: Seen, now: float) -> str:
    """One culprit, for the line: who, where, what it last reported doing and how long ago."""
    r = s.record
    who = f"rank {rank} ({r.host}, pid {r.pid})"
    if why == "silent":
        return (
            f"{who} is silent: no heartbeat for {now - s.beat_moved:.0f} s (stopped, frozen, or its node is gone);"
            f" it last reported {r.doing}, {now - s.beat_moved + r.doing_seconds:.0f} s ago"
        )
    if why == "exited":
        return f"{who} exited at {r.doing} (its own log says why)"
    stack = f"; its stack is in {r.stack} on {r.host}" if r.stack else ""
    return f"{who} made no progress for {now - s.progress_moved:.0f} s at {r.doing}{stack}"


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


# --- the module's one watchdog, so that marks need no plumbing --------------------------------

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
