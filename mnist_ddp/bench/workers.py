"""The benchmark's worker processes: the blog's loop, the matmul limit, and the A/B jobs that
measure the diagnostics' and the keyed masks' cost inside one job.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from typing import Any

from mnist_ddp.base.errors import JobError
from mnist_ddp.config.loading import load_config
from mnist_ddp.config.schema import ModelConfig

WIDTHS = [784, *ModelConfig().hidden, 10]  # the default model's layers
AB_BLOCKS, AB_STEPS = 24, 40  # blocks of steps per variant in the A/B job, taking turns


MASK_BLOCKS, MASK_BLOCKS_QUICK, MASK_STEPS = 30, 2, 20  # the same for the masks A/B


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


def run_diagnostics_ab() -> dict[str, Any]:
    """The A/B job under torchrun (2 ranks x 1 thread); rank 0's JSON result."""
    command = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mnist_ddp.bench"]
    result = subprocess.run(
        [sys.executable, *command, f"--worker=diagnostics:{AB_BLOCKS}"], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise JobError(f"the diagnostics A/B job failed (exit {result.returncode})")
    return json.loads(result.stdout.strip().splitlines()[-1])


def ab_variants(rank: int) -> tuple[dict[str, Any], dict[str, Any], Any, Any]:
    """The A/B job's two copies of the default model (same weights): DDP as it comes ("off"), and
    with the diagnostics' hooks, clock and wrapper ("on"); their optimizers; this rank's batch."""
    import copy

    import torch
    from torch.nn.parallel import DistributedDataParallel

    from mnist_ddp.config.schema import DistConfig
    from mnist_ddp.model.mlp import build_model
    from mnist_ddp.observe.timing import RankClock
    from mnist_ddp.parallel import ddp

    cpu = torch.device("cpu")
    torch.manual_seed(0)
    plain_model = build_model(load_config(None, []), 784)
    on_model, clock = copy.deepcopy(plain_model), RankClock(cpu, enabled=True)
    clock.watch_gradients(list(on_model.layers[0].parameters()))
    variants = {
        "off": (DistributedDataParallel(plain_model, gradient_as_bucket_view=True), plain_model, None),
        "on": (ddp.wrap_ddp(on_model, cpu, DistConfig()), on_model, clock),
    }
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True) for k, (_, m, _) in variants.items()}
    generator = torch.Generator().manual_seed(rank)
    images = torch.randint(0, 256, (256, 784), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (256,), generator=generator)
    return variants, optimizers, images, labels


def diagnostics_ab(blocks: int) -> dict[str, Any] | None:
    """One rank of the A/B job: two copies of the default model, one under DDP as it comes, one
    with everything the diagnostics add to a step (the gradient hooks timing and marking the
    wait for gradients, a liveness mark per step, the watchdog thread publishing to the store,
    timed agreement phases); blocks of AB_STEPS steps take turns. Rank 0 returns the medians."""
    import statistics

    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from mnist_ddp.data.splits import normalize_pixels
    from mnist_ddp.parallel import distributed, launcher, liveness

    torch.set_num_threads(1)
    launch = launcher.read_launch()
    dist.init_process_group("gloo")
    liveness.start(distributed.job_store(distributed.connect_store(launch, 30)), launch.rank, 2, 30.0, 300.0)
    liveness.run()
    variants, optimizers, images, labels = ab_variants(launch.rank)

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
