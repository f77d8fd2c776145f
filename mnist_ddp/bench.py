"""Speed benchmark: ``python -m mnist_ddp.bench [--quick] [--out FILE] [key=value ...]``.

One invocation on one machine measures, each in its own process:

- the machine's limit: matmul GFLOP/s at the model's shapes (forward, and both backward
  products, of every layer, batch 512), the best of half a second of repeats, in every
  configuration a row could train in: fp32 and bf16, each in one process with torch's default
  threads (``1x``) and in 2 single-thread processes at once, summed (``2x1``: what 2 DDP ranks
  get; the processes start each precision together). The limit is the fastest of the four,
  whichever it is on this CPU (bf16 where it runs natively, 2x1 where torch's threads scale
  badly at these small shapes); ``--quick`` measures the two ``1x`` configurations only;
- ``seed-loop``: the blog's loop as written (a DataLoader over a TensorDataset, batch 100,
  SGD lr 0.01, fp32, 50,000 training images);
- mnist_ddp's default config in one process, timed from process start to 97.4% and 98.0%;
- mnist_ddp under torchrun, 2 ranks x 1 thread (gloo), at the default global batch, plain (with
  the distributed diagnostics on, as by default), without them, recording a profile, and with
  each DDP option;
- the diagnostics' cost per step, A/B inside one 2-rank job (``diagnostics_ab``): whole runs
  differ by +-10% on a shared machine, more than the cost to measure;
- the cost of dropout masks keyed to the samples against masks drawn from the generator, A/B
  inside one process (``masks_ab``): the default model's training step, blocks taking turns.

Every row shows samples/s, seconds per 60,000-image epoch, its fraction of the limit
(samples/s over the fastest configuration's GFLOP/s / (6 x parameters)), and the peak resident
memory of each process; the default row also its multiple of the matmul floor at that limit.
No row should beat the limit: one more than 10% above it is named in a line under the table
(the limit was mismeasured, or the overrides make a smaller model than the FLOPs assumed).
The table goes to stdout and everything to ``--out`` (JSON). Extra ``key=value`` overrides
(``data.root=...``) go to every training run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mnist_ddp.base.atomic import atomic_write_json
from mnist_ddp.base.console import say
from mnist_ddp.base.errors import InputError, JobError
from mnist_ddp.config.loading import load_config
from mnist_ddp.config.schema import ModelConfig
from mnist_ddp.parallel.entry import report_unexpected
from mnist_ddp.state.rundir import check_output_folder

# The model's layer widths: MNIST pixels, the default hidden layers (the blog's MLP), 10 classes.
WIDTHS = [784, *ModelConfig().hidden, 10]
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

# (row name, overrides) for the 2-rank rows, each at the default global batch.
NO_DIAGNOSTICS = ["dist.liveness_seconds=0", "log.rank_times=false"]
AB_BLOCKS, AB_STEPS = 24, 40  # blocks of steps per variant in the A/B job, taking turns
MASK_BLOCKS, MASK_BLOCKS_QUICK, MASK_STEPS = 30, 2, 20  # the same for the masks A/B
DDP_ROWS = [
    ("ddp 2x1 plain", []),
    ("ddp 2x1 no diagnostics", NO_DIAGNOSTICS),
    ("ddp 2x1 profile 20 steps", ["profile.steps=20"]),
    ("ddp 2x1 bucket 1 MB", ["dist.bucket_cap_mb=1"]),
    ("ddp 2x1 bf16 hook", ["dist.comm_hook=bf16"]),
    ("ddp 2x1 powersgd r2", ["dist.comm_hook=powersgd"]),
    ("ddp 2x1 accumulate 2", ["train.accumulate_steps=2"]),
]


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


def seed_loop(steps: int) -> dict[str, float]:
    """The blog's training loop, timed over ``steps`` batches of 100 (random pixels: speed only)."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    images, labels = torch.rand(50_000, 784), torch.randint(0, 10, (50_000,))
    layers: list[nn.Module] = []
    for i, o in itertools.pairwise(WIDTHS[:-1]):
        layers += [nn.Linear(i, o), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Dropout(0.5), nn.Linear(WIDTHS[-2], 10), nn.LogSoftmax(dim=1))
    loader = DataLoader(TensorDataset(images, labels), batch_size=100, shuffle=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    criterion = nn.CrossEntropyLoss()
    started = 0.0
    for done, (x, y) in enumerate(loader):
        if done == 5:  # the first batches pay for one-off set-up
            started = time.perf_counter()
        if done == steps + 5:
            break
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - started
    return {"samples_per_second": 100 * steps / seconds, "seconds_per_epoch": 50_000 / (100 * steps / seconds)}


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


def run_worker(kind: str, argument: int, concurrent: int = 1) -> list[dict[str, Any]]:
    """Start ``concurrent`` copies of a worker at once; their JSON results."""
    command = [sys.executable, "-m", "mnist_ddp.bench", f"--worker={kind}:{argument}"]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(concurrent)]
    return worker_results(procs, kind)


def worker_results(procs: list[subprocess.Popen], kind: str) -> list[dict[str, Any]]:
    """Each worker's JSON result (its last line), once all have exited; a failed one is a JobError."""
    results = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise JobError(f"benchmark worker {kind} failed (exit {p.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


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


def run_diagnostics_ab() -> dict[str, Any]:
    """The A/B job under torchrun (2 ranks x 1 thread); rank 0's JSON result."""
    command = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mnist_ddp.bench"]
    result = subprocess.run(
        [sys.executable, *command, f"--worker=diagnostics:{AB_BLOCKS}"], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise JobError(f"the diagnostics A/B job failed (exit {result.returncode})")
    return json.loads(result.stdout.strip().splitlines()[-1])


def diagnostics_ab(blocks: int) -> dict[str, Any] | None:
    """One rank of the A/B job: two copies of the default model, one under DDP as it comes, one
    with everything the diagnostics add to a step (the gradient hooks timing and marking the
    wait for gradients, a liveness mark per step, the watchdog thread publishing to the store,
    timed agreement phases); blocks of AB_STEPS steps take turns. Rank 0 returns the medians."""
    import copy
    import statistics

    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    from mnist_ddp.config.schema import DistConfig
    from mnist_ddp.data.splits import normalize_pixels
    from mnist_ddp.model.mlp import build_model
    from mnist_ddp.observe.timing import RankClock
    from mnist_ddp.parallel import ddp, distributed, launcher, liveness

    torch.set_num_threads(1)
    launch = launcher.read_launch()
    dist.init_process_group("gloo")
    cpu = torch.device("cpu")
    liveness.start(distributed.job_store(distributed.connect_store(launch, 30)), launch.rank, 2, 30.0, 300.0)
    liveness.run()
    torch.manual_seed(0)
    plain_model = build_model(load_config(None, []), 784)
    on_model, clock = copy.deepcopy(plain_model), RankClock(cpu, enabled=True)
    clock.watch_gradients(list(on_model.layers[0].parameters()))
    variants = {
        "off": (DistributedDataParallel(plain_model, gradient_as_bucket_view=True), plain_model, None),
        "on": (ddp.wrap_ddp(on_model, cpu, DistConfig()), on_model, clock),
    }
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True) for k, (_, m, _) in variants.items()}
    generator = torch.Generator().manual_seed(launch.rank)
    images = torch.randint(0, 256, (256, 784), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (256,), generator=generator)

    def block(name: str, steps: int) -> float:
        ddp, _, clock = variants[name]
        started = time.perf_counter()
        for i in range(steps):
            if clock is not None:
                liveness.mark("step", 1, i)
            optimizers[name].zero_grad(set_to_none=True)
            F.cross_entropy(ddp(normalize_pixels(images)), labels).backward()
            if clock is not None:
                clock.gradients_reduced()
            optimizers[name].step()
            if i % 10 == 9:  # the stop/NaN check every 10 steps, timed as an agreement when on
                flags = torch.zeros(2, dtype=torch.float64)
                if clock is None:
                    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                else:
                    with clock.phase("agreement", 1, i):
                        distributed.all_reduce_max(flags)
        return (time.perf_counter() - started) / steps

    block("off", 10), block("on", 10)  # warm-up
    seconds: dict[str, list[float]] = {"off": [], "on": []}
    for b in range(blocks):
        for name in ("off", "on") if b % 2 == 0 else ("on", "off"):
            seconds[name].append(block(name, AB_STEPS))
    liveness.stop(True)
    dist.destroy_process_group()
    if launch.rank != 0:
        return None
    off, on = statistics.median(seconds["off"]), statistics.median(seconds["on"])
    return {
        "off_ms_per_step": 1000 * off,
        "on_ms_per_step": 1000 * on,
        "on_over_off_samples": off / on,
        "blocks": blocks,
    }


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


def masks_ab(blocks: int) -> dict[str, Any]:
    """The default model's training step (batch 512, AdamW, torch's default threads) with dropout
    masks keyed to the samples and with masks from the generator; blocks of MASK_STEPS steps take
    turns. The medians, and the keyed variant's share of the other's samples/s."""
    import statistics

    import torch
    import torch.nn.functional as F

    from mnist_ddp.data.splits import normalize_pixels
    from mnist_ddp.model.mlp import build_model
    from mnist_ddp.model.sample_noise import DROPOUT_STREAM, sample_keys

    torch.manual_seed(0)
    model = build_model(load_config(None, []), 784).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    images = normalize_pixels(torch.randint(0, 256, (512, 784), dtype=torch.uint8))
    labels, samples = torch.randint(0, 10, (512,)), torch.randperm(60_000)[:512]
    step = torch.zeros((), dtype=torch.int64)

    def block(keyed: bool) -> float:
        started = time.perf_counter()
        for _ in range(MASK_STEPS):
            keys = sample_keys(0, step, samples, DROPOUT_STREAM) if keyed else None
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(images, keys), labels).backward()
            optimizer.step()
            step.add_(1)
        return (time.perf_counter() - started) / MASK_STEPS

    block(True), block(False)  # warm-up
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for b in range(blocks):
        for keyed in (True, False) if b % 2 == 0 else (False, True):
            seconds[keyed].append(block(keyed))
    keyed, drawn = statistics.median(seconds[True]), statistics.median(seconds[False])
    return {
        "keyed_ms_per_step": 1000 * keyed,
        "generator_ms_per_step": 1000 * drawn,
        "keyed_over_generator_samples": drawn / keyed,
        "blocks": blocks,
    }


def masks_cost(masks: dict[str, Any] | None) -> str:
    """The line under the table: the masks A/B's per-step times."""
    if not masks:
        return ""
    return (
        f"dropout masks keyed to the samples against drawn from the generator, A/B in one process, medians of"
        f" {masks['blocks']} alternating blocks of {MASK_STEPS} steps: {masks['keyed_ms_per_step']:.2f} ms/step"
        f" keyed, {masks['generator_ms_per_step']:.2f} drawn: {masks['keyed_over_generator_samples']:.3f} of samples/s"
    )


def diagnostics_cost(ab: dict[str, Any]) -> str:
    """The line under the table: the A/B job's per-step times with the diagnostics on and off."""
    if not ab:
        return ""
    return (
        f"diagnostics (liveness watchdog, gradient-wait timing, phase marks), A/B in one 2-rank job, medians of"
        f" {ab['blocks']} alternating blocks of {AB_STEPS} steps: {ab['on_ms_per_step']:.2f} ms/step on,"
        f" {ab['off_ms_per_step']:.2f} off: {ab['on_over_off_samples']:.3f} of samples/s"
    )


if __name__ == "__main__":
    sys.exit(main())
