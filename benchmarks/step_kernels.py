"""Kernels per training step of the default config, beside the floor of the model alone.

    python benchmarks/step_kernels.py [--config FILE] [key=value ...]   # on the CPU: ATen operations
    python benchmarks/step_kernels.py train.device=cuda                 # on a GPU: also kernels per replay
    python benchmarks/step_kernels.py --targets                         # the graph body's targets (exit 1 if missed)

Counts the operations that launch a kernel (views are free) in:
- ``floor``: forward, plain cross-entropy, backward and the optimizer step on a prepared batch;
- ``graph body``: what one CUDA-graph replay holds (gradients None at capture);
- ``eager step``: the step as it runs without graphs (gradients zeroed, then added to).
The step is built as on CUDA wherever it runs (images normalized once, the optimizer's rate a
tensor). On a GPU it also captures the step, profiles the replays of an epoch to count the CUDA
kernels each one launches, and times replays back to back: the microseconds per step that bound an epoch.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from mnist_ddp.config.loading import parse_args
from mnist_ddp.data.splits import Splits
from mnist_ddp.model.mlp import build_model
from mnist_ddp.model.optimizer import build_optimizer, build_schedule
from mnist_ddp.model.precision import choose_bf16
from mnist_ddp.observe.profiling import kernel_ops
from mnist_ddp.training.guard import StopGuard
from mnist_ddp.training.step import StepParts, TrainStep, normalized_inputs

IMAGES = 4096
# Operations in one graph body, counted on the CPU (issue 27: 72 and 79 before the sample keys
# and shifts were planned once per epoch).
BODY_TARGETS = {"--config configs/seed.yaml": 58, "train.bf16=false": 62}


def main(argv: list[str]) -> int:
    if argv == ["--targets"]:
        return check_targets()
    cfg = parse_args(argv, prog="benchmarks/step_kernels.py")
    report(cfg)
    return 0


def check_targets() -> int:
    """Count the graph body of each target's config; print the table; 1 if any is over."""
    missed = 0
    print(f"{'config':<32} {'graph body':>10} {'target':>7}  met")
    for args, target in BODY_TARGETS.items():
        body = sum(count_ops(parse_args(args.split(), prog="benchmarks/step_kernels.py"))[0]["graph body"].values())
        missed += body > target
        print(f"{args:<32} {body:>10} {target:>7}  {'yes' if body <= target else 'NO'}")
    return 1 if missed else 0


def count_ops(cfg):
    """The ATen operations of the floor, the graph body and the eager step; the step; its loss buffer."""
    tc = cfg.train
    device = torch.device("cuda" if tc.device == "cuda" else "cpu")
    cuda = device.type == "cuda"
    bf16, why = choose_bf16(tc.bf16, device)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (IMAGES, 784), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (IMAGES,), generator=g)
    data = Splits(images, labels, images[:100], labels[:100], "random").to(device)
    torch.manual_seed(0)
    model = build_model(cfg, 784).to(device)
    # The CUDA kind of optimizer on any device (rate a float32 tensor, fused): what a replay runs.
    optimizer = build_optimizer(model.parameters(), tc, device, capturable=cuda, device_rate=True)
    schedule = build_schedule(optimizer, tc, 1000)
    guard = StopGuard(model, device)
    step = TrainStep(tc, StepParts(data, model, model, optimizer, schedule, guard, tc.batch_size, bf16=bf16))
    step.train_inputs = normalized_inputs(data.train_images, bf16)  # as TrainStep does on CUDA
    losses = torch.zeros(IMAGES // tc.batch_size + 1, device=device)
    step.start_epoch(torch.arange(IMAGES, device=device), 0, 0)

    step(0, 0, losses)  # optimizer state exists from here on
    eager = kernel_ops(lambda: step(1, 1, losses))
    for p in model.parameters():
        p.grad = None
    body = kernel_ops(lambda: step.step_body(step.plan[:, : tc.batch_size]))
    batch = step.batch(0)
    x, y = step.train_inputs[batch], data.train_labels[batch]

    def model_alone() -> None:
        with step.autocast:
            logits = model(x).float()
        torch.nn.functional.cross_entropy(logits, y).backward()
        optimizer.step()

    for p in model.parameters():
        p.grad = None
    floor = kernel_ops(model_alone)
    precision = f"{'bf16' if bf16 else 'fp32'} ({why})"
    return {"floor": floor, "graph body": body, "eager step": eager}, step, losses, precision


def report(cfg) -> None:
    """Print the counts of ``cfg``'s step (and on a GPU, its replays' kernels and time)."""
    tc = cfg.train
    ops, step, losses, precision = count_ops(cfg)
    device, floor, body = losses.device, ops["floor"], ops["graph body"]
    print(f"{device.type}, torch {torch.__version__}, batch {tc.batch_size}, {precision}")
    print(f"{'ATen operations that launch a kernel':<40} {'per step':>8}")
    for name, counted in ops.items():
        print(f"{name + (' (model, plain loss, optimizer)' if name == 'floor' else ''):<40} {sum(counted.values()):>8}")
    print(f"graph body beyond the floor: {dict(body - floor)}; in the floor only: {dict(floor - body)}")
    if device.type == "cuda":
        replay_report(step, losses)


def replay_report(step: TrainStep, losses: torch.Tensor) -> None:
    """Capture the step, count the kernels of one replay, time replays back to back."""
    from torch.profiler import ProfilerActivity, profile

    step.capture(losses, IMAGES)
    assert step.graph is not None
    order = torch.arange(IMAGES, device=losses.device)
    steps = IMAGES // step.batch_size
    step.start_epoch(order, 0, 0)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step.graph.replay()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    print(f"CUDA kernels per replay (profiled over {steps} replays): {len(kernels) / steps:.1f}")
    times = []
    for _ in range(20):
        step.start_epoch(order, 0, 0)
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            step.graph.replay()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - started) / steps)
    us = statistics.median(times) * 1e6
    print(
        f"one replay: {us:.1f} us median ({step.batch_size / us * 1e6:,.0f} samples/s);"
        f" {us / (len(kernels) / steps):.2f} us per kernel"
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
