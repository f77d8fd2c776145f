"""Speed benchmark: ``python -m mnist_ddp.bench [--quick] [--out FILE] [key=value ...]``.

Each measurement in its own process: the machine's matmul limit at the model's shapes
(:mod:`~mnist_ddp.bench.limit`), the blog's loop and real training runs of mnist_ddp in one
process and under torchrun (:mod:`~mnist_ddp.bench.rows`), and the diagnostics' and the keyed
masks' cost, A/B inside one job (:mod:`~mnist_ddp.bench.workers`). The table goes to stdout,
everything to ``--out`` (JSON); ``key=value`` overrides go to every training run.
docs/performance.md says what each row measures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from mnist_ddp.base.atomic import atomic_write_json
from mnist_ddp.base.console import say
from mnist_ddp.base.errors import InputError, JobError
from mnist_ddp.bench.limit import LIMIT_BATCH, PRECISIONS, RANKS, matmul_gflops, measure_limit
from mnist_ddp.bench.rows import DDP_ROWS, annotate, format_table, train_row
from mnist_ddp.bench.workers import (
    MASK_BLOCKS,
    MASK_BLOCKS_QUICK,
    diagnostics_ab,
    diagnostics_cost,
    masks_ab,
    masks_cost,
    run_diagnostics_ab,
    run_worker,
    seed_loop,
)
from mnist_ddp.config.loading import load_config
from mnist_ddp.parallel.entry import report_unexpected
from mnist_ddp.state.rundir import check_output_folder


def worker(kind: str, argument: int, milliseconds: int = 0) -> None:
    """Run one measurement in this (fresh) process and print it as JSON."""
    import torch

    from mnist_ddp.observe.metrics import peak_rss_mb

    if kind == "diagnostics":
        ab = diagnostics_ab(argument)
        if ab is not None:
            print(json.dumps(ab))
        return
    if kind == "masks":
        print(json.dumps(masks_ab(argument)))
        return
    if kind == "limit":  # argument: threads (0: torch's default); each precision waits for "go"
        if argument:
            torch.set_num_threads(argument)

        def ready() -> None:
            print("ready", flush=True)
            sys.stdin.readline()

        result: dict[str, Any] = {"threads": torch.get_num_threads()}
        for precision, dtype_name in PRECISIONS.items():
            result[precision] = matmul_gflops(dtype_name, LIMIT_BATCH, milliseconds / 1000, ready)
    else:
        result = seed_loop(argument)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m mnist_ddp.bench", description=(__doc__ or "").split("\n\n")[0]
    )  # None under python -OO
    parser.add_argument("--quick", action="store_true", help="2 epochs, 1 DDP row: a check that it runs")
    parser.add_argument("--out", default="bench.json", help="JSON results file (default: bench.json)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every training run")
    args = parser.parse_args(argv)
    if args.worker:
        kind, *arguments = args.worker.split(":")
        worker(kind, *map(int, arguments))
        return 0

    try:
        load_config(None, args.overrides)  # a bad override fails here, before minutes of measuring
        check_bench_arguments(args.out, args.overrides)
    except InputError as e:
        say(f"error: {e}", sys.stderr)
        return e.exit_code
    limit: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    ab: dict[str, Any] = {}
    code = 0
    try:
        measure(args, limit, rows, ab)
    except JobError as e:  # a row that failed: report it, keep the rows that finished
        say(f"error: {e}", sys.stderr)
        code = e.exit_code
    except Exception as e:
        code = report_unexpected(e, "bench")
    if not limit:
        return code
    annotate(rows, limit)
    masks = ab.pop("masks", None)
    table = "\n".join(filter(None, [format_table(rows, limit), diagnostics_cost(ab), masks_cost(masks)]))
    say(table)
    report = {
        "limit": limit,
        "rows": rows,
        "diagnostics_ab": ab or None,
        "masks_ab": masks,
        "table": table,
        "complete": code == 0,
    }
    atomic_write_json(args.out, report)
    say(f"\nwrote {args.out}" + ("" if code == 0 else " (the rows that finished)"))
    return code


# Settings each row sets for itself: a folder of its own, resuming nothing.
ROW_KEYS = ("run.dir", "resume")


def check_bench_arguments(out: str, overrides: list[str]) -> None:
    """--out must be a file that can be written, and the overrides must leave each row its own run.dir."""
    if Path(out).is_dir():
        raise InputError(
            f"--out={out} is a folder; give the name of a JSON file, e.g. --out={Path(out) / 'bench.json'}"
        )
    check_output_folder(Path(out).parent, "--out")
    taken = [o.partition("=")[0] for o in overrides if o.partition("=")[0] in ROW_KEYS]
    if taken:
        raise InputError(f"the benchmark sets {taken[0]} for each row itself; leave {taken[0]}=... out")


def measure(args: argparse.Namespace, limit: dict[str, Any], rows: list[dict[str, Any]], ab: dict[str, Any]) -> None:
    """Fill ``limit``, append each row to ``rows`` as it finishes (so a failure keeps the finished
    ones), then fill ``ab`` with the masks A/B (``ab["masks"]``) and the diagnostics A/B (not with --quick)."""
    limit |= measure_limit(args.quick)
    seed = run_worker("seed", 50 if args.quick else 500)[0]
    rows.append({"name": "seed-loop (blog)", "ranks": 1, **seed, "peak_rss_mb": [seed["peak_rss_mb"]]})
    epochs = ["train.epochs=2"] if args.quick else []
    ddp_epochs = ["train.epochs=2"] if args.quick else ["train.epochs=3"]
    ab["masks"] = run_worker("masks", MASK_BLOCKS_QUICK if args.quick else MASK_BLOCKS)[0]
    with tempfile.TemporaryDirectory(prefix="mnist_ddp_bench_") as tmp:
        rows.append(train_row("mnist_ddp default", 1, [*epochs, *args.overrides], Path(tmp)))
        for name, options in DDP_ROWS[:1] if args.quick else DDP_ROWS:
            rows.append(train_row(name, RANKS, ["train.threads=1", *ddp_epochs, *options, *args.overrides], Path(tmp)))
        if not args.quick:
            rows.append(
                train_row("ddp 2x2 threads", RANKS, ["train.threads=2", *ddp_epochs, *args.overrides], Path(tmp))
            )
            ab.update(run_diagnostics_ab())


if __name__ == "__main__":
    sys.exit(main())
