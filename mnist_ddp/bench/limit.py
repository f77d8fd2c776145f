"""The machine's limit: matmul GFLOP/s at the model's shapes in every configuration a row could
train in, and the lines that name it.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from mnist_ddp.base.errors import JobError
from mnist_ddp.bench.workers import WIDTHS, worker_results

# The model's layer widths: MNIST pixels, the default hidden layers (the blog's MLP), 10 classes.


PARAMETERS = sum(i * o + o for i, o in itertools.pairwise(WIDTHS))


FLOPS_PER_SAMPLE = 6 * PARAMETERS  # forward 2, backward 4 multiply-adds per weight


EPOCH_IMAGES = 60_000


# The machine's limit is measured in every configuration a row could train in: each precision in
# 1 process with torch's default threads (1x) and in RANKS single-thread processes at once (what
# the DDP rows' ranks get, 2x1).
RANKS = 2


PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}


LIMIT_CONFIGURATIONS = [f"{precision}_{shape}" for precision in PRECISIONS for shape in ("1x", f"{RANKS}x1")]


LIMIT_BATCH = 512


# Seconds of timed repeats per precision and configuration: ~40 fp32 steps, ~100 bf16 steps with
# AVX512-BF16, and 1-2 where bf16 is ~30x slower (AVX2 only), so that CPU takes seconds, not minutes.
LIMIT_SECONDS = 0.5


LIMIT_TOLERANCE = 0.10  # a row this far above the limit means the limit was mismeasured


def matmul_gflops(dtype_name: str, batch: int, seconds: float, ready: Callable[[], None] | None = None) -> float:
    """Best GFLOP/s of one training step's matmuls at the model's shapes, timed over and over for
    ``seconds`` (at least once) after one warm-up step; ``ready`` is called between the two (the
    concurrent workers' barrier)."""
    import torch

    dtype = getattr(torch, dtype_name)
    shapes = list(itertools.pairwise(WIDTHS))
    tensors = [
        (torch.randn(batch, i, dtype=dtype), torch.randn(o, i, dtype=dtype), torch.randn(batch, o, dtype=dtype))
        for i, o in shapes
    ]

    def step() -> None:
        for x, w, dy in tensors:
            torch.mm(x, w.t())  # forward
            torch.mm(dy, w)  # gradient of the input
            torch.mm(dy.t(), x)  # gradient of the weight

    step()
    if ready is not None:
        ready()
    best, started = float("inf"), time.perf_counter()
    while True:
        began = time.perf_counter()
        step()
        ended = time.perf_counter()
        best = min(best, ended - began)
        if ended - started >= seconds:
            break
    return 6 * batch * sum(i * o for i, o in shapes) / best / 1e9


def run_limit_workers(threads: int, concurrent: int, seconds: float = LIMIT_SECONDS) -> list[dict[str, Any]]:
    """Start ``concurrent`` limit workers at once, each with ``threads`` threads (0: torch's default),
    and start each precision's timing in all of them together, once every one has warmed up."""
    command = [sys.executable, "-m", "mnist_ddp.bench", f"--worker=limit:{threads}:{round(seconds * 1000)}"]
    procs = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(concurrent)
    ]
    try:
        for _ in PRECISIONS:
            for p in procs:
                assert p.stdout is not None
                line = "?"
                while line and line.strip() != "ready":  # (skipping anything else it prints)
                    line = p.stdout.readline()
                if not line:
                    raise JobError(f"benchmark worker limit failed (exit {p.wait()})")
            for p in procs:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
        return worker_results(procs, "limit")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def measure_limit(quick: bool) -> dict[str, Any]:
    """GFLOP/s in every configuration of LIMIT_CONFIGURATIONS (the 1-process ones only with --quick,
    which checks that the benchmark runs, not the machine); RANKS processes' figure is their sum."""
    one = run_limit_workers(0, 1)[0]
    limit: dict[str, Any] = {f"{precision}_1x": one[precision] for precision in PRECISIONS}
    limit |= {"threads_1x": one["threads"], "peak_rss_mb": one["peak_rss_mb"], "quick": quick}
    if not quick:
        together = run_limit_workers(1, RANKS)
        limit |= {f"{precision}_{RANKS}x1": sum(r[precision] for r in together) for precision in PRECISIONS}
    return limit


def fastest_limit(limit: dict[str, Any]) -> tuple[str, float]:
    """The fastest configuration measured in ``limit``, and its GFLOP/s: the machine's limit."""
    measured = {key: limit[key] for key in LIMIT_CONFIGURATIONS if key in limit}
    fastest = max(measured, key=measured.__getitem__)
    return fastest, measured[fastest]


def limit_line(limit: dict[str, Any]) -> str:
    """The table's first line: the limit, its configuration, and every configuration measured."""
    fastest, gflops = fastest_limit(limit)
    figures = ", ".join(f"{key.replace('_', ' ')} {limit[key]:.1f}" for key in LIMIT_CONFIGURATIONS if key in limit)
    threads = limit.get("threads_1x")
    default = f"torch's default {threads} thread{'s' * (threads != 1)}" if threads else "torch's default threads"
    quick = " (--quick: the 1-process configurations only)" if limit.get("quick") else ""
    together = any(key.endswith(f"_{RANKS}x1") for key in limit)
    shapes = f"1x: 1 process, {default}" + (f"; {RANKS}x1: {RANKS} single-thread processes at once" * together)
    return (
        f"machine limit {gflops:.1f} GFLOP/s ({fastest.replace('_', ' ')}), the fastest of {figures} GFLOP/s{quick}:"
        f" matmuls at the model's shapes (batch {LIMIT_BATCH}); {shapes}. {FLOPS_PER_SAMPLE / 1e6:.2f} MFLOP per"
        f" sample (6 x {PARAMETERS:,} parameters)."
    )


def over_limit_line(rows: list[dict[str, Any]], limit: dict[str, Any]) -> str:
    """A line naming the rows more than LIMIT_TOLERANCE above the limit (none: ""), which no row can
    be if the limit is right."""
    over = [r for r in rows if r.get("fraction_of_limit", 0) > 1 + LIMIT_TOLERANCE]
    if not over:
        return ""
    names = ", ".join(f"{r['name']} ({r['fraction_of_limit']:.0%})" for r in over)
    quick = " (--quick measured the 1-process configurations only)" if limit.get("quick") else ""
    return (
        f"above the machine limit by more than {LIMIT_TOLERANCE:.0%}: {names}. The limit was mismeasured{quick}, or"
        f" the overrides make a smaller model than the {FLOPS_PER_SAMPLE / 1e6:.2f} MFLOP per sample assumed:"
        " this run's 'of limit' and 'x floor' are not fractions of what the machine can do."
    )
