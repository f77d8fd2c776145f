"""The benchmark's training rows: each a real run of mnist_ddp.train in a folder of its own, read
back from its metrics, and the table that compares them with the limit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from mnist_ddp.base.errors import JobError
from mnist_ddp.bench.limit import EPOCH_IMAGES, FLOPS_PER_SAMPLE, fastest_limit, limit_line, over_limit_line

# (row name, overrides) for the 2-rank rows, each at the default global batch.
NO_DIAGNOSTICS = ["dist.liveness_seconds=0", "log.rank_times=false"]


DDP_ROWS = [
    ("ddp 2x1 plain", []),
    ("ddp 2x1 no diagnostics", NO_DIAGNOSTICS),
    ("ddp 2x1 profile 20 steps", ["profile.steps=20"]),
    ("ddp 2x1 bucket 1 MB", ["dist.bucket_cap_mb=1"]),
    ("ddp 2x1 bf16 hook", ["dist.comm_hook=bf16"]),
    ("ddp 2x1 powersgd r2", ["dist.comm_hook=powersgd"]),
    ("ddp 2x1 accumulate 2", ["train.accumulate_steps=2"]),
]


def steady_samples_per_second(run_dir: Path) -> float:
    """The median epoch's samples/s in a run's metrics.jsonl, leaving out the first epoch.

    The first epoch pays for warm-up (allocations, thread pools, cuBLAS handles).
    """
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steady = sorted(r["samples_per_second"] for r in records[1:] or records)
    return steady[len(steady) // 2]


def train_row(name: str, ranks: int, overrides: list[str], folder: Path) -> dict[str, Any]:
    """Run mnist_ddp.train (under torchrun when ranks > 1) and read back what it measured."""
    run_dir = folder / name.replace(" ", "_")
    args = ["-m", "mnist_ddp.train", f"run.dir={run_dir}", "wandb.mode=disabled", "log.plots=false", *overrides]
    if ranks > 1:
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", *args]
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise JobError(f"benchmark run '{name}' failed (exit {result.returncode}): {tail}")
    summary = json.loads((run_dir / "summary.json").read_text())
    rate = steady_samples_per_second(run_dir)
    return {
        "name": name,
        "ranks": ranks,
        "overrides": overrides,
        "samples_per_second": rate,
        "seconds_per_epoch": EPOCH_IMAGES / rate,
        "seconds_to_accuracy": summary["seconds_to_accuracy"],
        "final_accuracy": summary["test_accuracy"],
        "peak_rss_mb": summary["peak_rss_mb_per_rank"],
    }


def format_table(rows: list[dict[str, Any]], limit: dict[str, Any]) -> str:
    """The results as a fixed-width text table (``limit`` as ``annotate`` leaves it)."""
    lines = [
        limit_line(limit),
        "",
        f"{'row':<24} {'samples/s':>10} {'s/epoch':>8} {'of limit':>9} {'x floor':>8} {'to 97.4%':>9}"
        f" {'to 98.0%':>9} {'final':>7} {'vs 1 proc':>9}  peak RSS MB",
    ]

    def cell(value: float | None, fmt: str, width: int) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:{width}{fmt}}"

    for r in rows:
        reached = r.get("seconds_to_accuracy") or {}
        lines.append(
            f"{r['name']:<24} {r['samples_per_second']:>10,.0f} {r['seconds_per_epoch']:>8.2f}"
            f" {cell(r.get('fraction_of_limit'), '.0%', 9)} {cell(r.get('times_floor'), '.2f', 8)}"
            f" {cell(reached.get('0.974'), '.1f', 9)} {cell(reached.get('0.980'), '.1f', 9)}"
            f" {cell(r.get('final_accuracy'), '.2%', 7)} {cell(r.get('vs_one_process'), '.2f', 9)}"
            f"  {', '.join(f'{m:.0f}' for m in r['peak_rss_mb'])}"
        )
    over = over_limit_line(rows, limit)
    return "\n".join([*lines, over] if over else lines)


def annotate(rows: list[dict[str, Any]], limit: dict[str, Any]) -> None:
    """Record the limit's fastest configuration in ``limit``; then each row's fraction of that limit,
    the default's multiple of the matmul floor at it, DDP's speed-up."""
    limit["fastest"], limit["gflops"] = fastest_limit(limit)
    limit_rate = limit["gflops"] * 1e9 / FLOPS_PER_SAMPLE
    one = next((r for r in rows if r["name"] == "mnist_ddp default"), None)
    for r in rows:
        r["fraction_of_limit"] = r["samples_per_second"] / limit_rate
        if r is one:
            r["times_floor"] = r["seconds_per_epoch"] / (EPOCH_IMAGES / limit_rate)
        if r["ranks"] > 1 and one is not None:
            r["vs_one_process"] = r["samples_per_second"] / one["samples_per_second"]
