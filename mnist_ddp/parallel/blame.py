"""Who is to blame when progress stops: what each rank publishes about itself, and the verdict
one rank draws from its peers' records (silent, stuck, exited, no progress), on the watchdog's clock.
"""

from __future__ import annotations

from dataclasses import dataclass

RUNNING, STUCK, DONE, EXITED = "running", "stuck", "done", "exited"
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
