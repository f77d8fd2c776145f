"""Run metrics: the process clock, per-epoch records, the log line, metrics.jsonl and summary.json."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Any

from mnist_ddp import PACKAGE_IMPORTED_AT
from mnist_ddp.base.atomic import atomic_write_json, atomic_write_text, json_text, output_error
from mnist_ddp.model.evaluation import EvalCounts
from mnist_ddp.observe.timing import straggler_text

# Accuracy milestones whose first crossing the summary reports: the blog's 97.4% and 98%.
ACCURACY_MILESTONES = (0.974, 0.98)
# Python reaches the package's import within a fraction of a second of starting; a pid that is
# older than this before it belonged to a shell that ran other things, then exec'd Python.
EXEC_GAP_SECONDS = 2.0


def process_start_time() -> float:
    """Wall-clock time at which Python started (so timings include Python and torch imports).

    /proc gives the start of the pid. When a shell ``exec``s Python (``bash -c "install &&
    python ..."``, a launcher script ending in ``exec``), that is the shell's start, so a pid
    older than the package import by more than EXEC_GAP_SECONDS counts from the import instead.
    """
    try:
        with open("/proc/self/stat") as f:
            # Field 22, counted after the parenthesised command name, which may hold spaces.
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        pid_start = time.time() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return PACKAGE_IMPORTED_AT
    return pid_start if PACKAGE_IMPORTED_AT - pid_start <= EXEC_GAP_SECONDS else PACKAGE_IMPORTED_AT


IMPORT_TIME = time.time()
PROCESS_START = process_start_time()


def seconds_since_start() -> float:
    """Seconds since Python started."""
    return time.time() - PROCESS_START


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def epoch_record(
    epoch: int, train_loss: float, counts: EvalCounts, samples: int, train_seconds: float, lr: float
) -> dict[str, Any]:
    """One line of metrics.jsonl."""
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "test_loss": counts.loss,
        "test_accuracy": counts.accuracy,
        "test_examples": counts.examples,
        "samples_per_second": samples / train_seconds if train_seconds > 0 else 0.0,
        "train_seconds": train_seconds,
        "lr": lr,
        "elapsed_seconds": seconds_since_start(),
    }


def format_epoch_line(record: dict[str, Any], epochs: int) -> str:
    """The one log line printed per epoch (naming the straggler, when a rank held the others back)."""
    width = len(str(epochs))
    straggler = record.get("straggler")
    return (
        f"epoch {record['epoch']:>{width}}/{epochs}  train_loss {record['train_loss']:.4f}"
        f"  test_loss {record['test_loss']:.4f}  test_acc {100 * record['test_accuracy']:.2f}%"
        f"  samples/s {record['samples_per_second']:,.0f}  elapsed {record['elapsed_seconds']:.1f}s"
        + (f"  {straggler_text(straggler)}" if straggler else "")
    )


def write_metrics(run_dir: Path, records: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl with every record so far, atomically. A run does this once, at its
    start: a resumed run's file then holds exactly its snapshot's records, whatever was appended
    after that snapshot."""
    path = run_dir / "metrics.jsonl"
    if records or path.exists():
        atomic_write_text(path, "".join(json_text(r) + "\n" for r in records))


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Add one record to metrics.jsonl: one write of one whole line, no rewrite and no fsync."""
    path = run_dir / "metrics.jsonl"
    try:
        # Never through a link (run.dir was checked at start; this holds if one appears later).
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        with os.fdopen(fd, "a") as f:
            f.write(json_text(record) + "\n")
    except OSError as e:
        raise output_error(path, e) from None


def build_summary(
    records: list[dict[str, Any]], final: EvalCounts, world_size: int, trained: dict[str, float]
) -> dict[str, Any]:
    """summary.json's contents: final and best accuracy, throughput and timings.

    Epochs, seconds and images count every epoch trained (``trained``), also those that
    train.eval_every_epochs left without a record.
    """
    best = max(records, key=lambda r: r["test_accuracy"])
    train_seconds, samples = trained["seconds"], trained["images"]
    reached = {
        f"{m:.3f}": next((r["elapsed_seconds"] for r in records if r["test_accuracy"] >= m), None)
        for m in ACCURACY_MILESTONES
    }
    return {
        "test_accuracy": final.accuracy,
        "best_test_accuracy": best["test_accuracy"],
        "best_epoch": best["epoch"],
        "test_loss": final.loss,
        "test_examples": final.examples,
        "per_class_accuracy": final.per_class_accuracy,
        "epochs": int(trained["epochs"]),
        "world_size": world_size,
        "samples_per_second": samples / train_seconds if train_seconds > 0 else 0.0,
        "train_seconds": train_seconds,
        "seconds_to_accuracy": reached,
        "wall_seconds": seconds_since_start(),
    }


def rank_seconds_total(records: list[dict[str, Any]], world_size: int) -> dict[str, list[float]] | None:
    """Every rank's seconds per phase over the run: the records' ``rank_seconds`` summed (those of
    this world size; a resume at another size starts its own count). None when none were measured."""
    measured = [
        r["rank_seconds"] for r in records if len(next(iter(r.get("rank_seconds", {}).values()), [])) == world_size
    ]
    if not measured:
        return None
    return {
        phase: [round(sum(m[phase][rank] for m in measured), 4) for rank in range(world_size)] for phase in measured[0]
    }


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """Write summary.json atomically."""
    atomic_write_json(run_dir / "summary.json", summary)
