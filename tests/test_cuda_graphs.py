"""The CUDA-graph step, as far as a CPU can show it: the captured body is plain tensor code, so
it runs here eagerly, step for step as a replay would (gradients None at the start, as they
are at capture). Capture and replay themselves are checked by benchmarks/gpu_check.sh."""

from __future__ import annotations

import inspect
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from mnist_ddp.config.schema import Config, ModelConfig, TrainConfig
from mnist_ddp.data.order import shard_indices
from mnist_ddp.data.splits import Splits
from mnist_ddp.model.mlp import build_model
from mnist_ddp.model.optimizer import build_optimizer, build_schedule, step_schedule
from mnist_ddp.observe.profiling import kernel_ops
from mnist_ddp.training.cuda_graphs import WARMUP_ITERATIONS, GraphedStep, uncaptured_steps_expected
from mnist_ddp.training.guard import StopGuard
from mnist_ddp.training.step import StepParts, TrainStep, normalized_inputs

CPU = torch.device("cpu")


def tiny_splits(n: int = 300) -> Splits:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 64), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return Splits(images, labels, images[:50], labels[:50], "random")


def make_step(
    tc: TrainConfig,
    data: Splits,
    steps: int,
    capturable: bool,
    device_rate: bool = True,
    dropout: float = 0.0,
    bf16: bool = False,
):
    """A TrainStep on the CPU with the optimizer of the CUDA path (rate a float32 tensor, fused)."""
    torch.manual_seed(0)
    model = build_model(Config(train=tc, model=ModelConfig(hidden=[32, 32], dropout=dropout)), data.in_features)
    optimizer = build_optimizer(model.parameters(), tc, CPU, capturable=capturable, device_rate=device_rate)
    schedule = build_schedule(optimizer, tc, steps)
    parts = StepParts(data, model, model, optimizer, schedule, StopGuard(model, CPU), tc.batch_size, bf16=bf16)
    return TrainStep(tc, parts), model


def weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("optimizer, dropout", [("adamw", 0.0), ("sgd", 0.0), ("adamw", 0.5)])
def test_the_graphs_body_computes_what_the_eager_step_computes_bit_for_bit(optimizer, dropout):
    # The CPU half of "graphs on and off end with the same weights": same rate representation,
    # same kernels, gradients written (graph) or zeroed and added (eager): the same bits.
    tc = TrainConfig(
        batch_size=64, optimizer=optimizer, schedule="linear", lr=0.006, momentum=0.9 * (optimizer == "sgd")
    )
    data = tiny_splits()
    shard = shard_indices(torch.randperm(300, generator=torch.Generator().manual_seed(1)), 0, 1, tc.batch_size)
    full_steps = len(shard) // tc.batch_size

    eager, eager_model = make_step(tc, data, full_steps, capturable=False, dropout=dropout)
    torch.manual_seed(5)
    eager_losses = torch.zeros(full_steps)
    eager.start_epoch(shard, 0, 0)
    for i in range(full_steps):
        eager(i, i, eager_losses)

    graphed, graphed_model = make_step(tc, data, full_steps, capturable=True, dropout=dropout)
    graph_losses = torch.zeros(full_steps)
    body = GraphedStep(graphed.step_body, tc.batch_size, len(shard), graph_losses, graphed.plan_rows)
    graphed.start_epoch(shard, 0, 0)
    body.start_epoch(graphed.plan, 0)
    torch.manual_seed(5)
    for _ in range(full_steps):
        graphed.optimizer.zero_grad(set_to_none=True)  # as at capture: backward writes the gradients
        body.captured_step()
        step_schedule(graphed.schedule)

    assert torch.equal(weights(eager_model), weights(graphed_model))
    assert torch.equal(eager_losses, graph_losses) and int(body.position) == full_steps

    # The reason for one representation: a Python rate is read as a double, a tensor one as float32.
    host_rate, host_model = make_step(tc, data, full_steps, capturable=False, device_rate=False, dropout=dropout)
    torch.manual_seed(5)
    host_rate.start_epoch(shard, 0, 0)
    for i in range(full_steps):
        host_rate(i, i, torch.zeros(full_steps))
    if optimizer == "adamw":
        assert not torch.equal(weights(eager_model), weights(host_model))


@pytest.mark.parametrize("bf16", [False, True])
def test_images_normalized_once_as_on_a_gpu_train_the_same_weights(bf16):
    # A GPU step gathers images normalized once (in bf16 when the forward is); a CPU step
    # normalizes each batch and autocast casts it. Shifted, dropped out: the same bits.
    tc = TrainConfig(batch_size=64, schedule="linear", augment_shift=2, label_smoothing=0.1)
    data = tiny_splits()
    results = []
    for once in (False, True):
        step, model = make_step(tc, data, 4, capturable=False, dropout=0.5, bf16=bf16)
        if once:
            step.train_inputs = normalized_inputs(data.train_images, bf16)
        step.start_epoch(torch.arange(300), 0, 0)
        for i in range(4):
            step(i, i, torch.zeros(4))
        results.append(weights(model))
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("shard_len, batch", [(300, 128), (120, 64), (64, 64)])
def test_the_warm_up_stays_inside_a_shard_shorter_than_its_iterations(shard_len, batch):
    # 300 images in batches of 128: three warm-up steps at positions 0, 1, 2 would read up to 384.
    assert shard_len < WARMUP_ITERATIONS * batch
    tc = TrainConfig(batch_size=batch, schedule="none")
    data = tiny_splits(shard_len)
    step, _ = make_step(tc, data, 10, capturable=True)
    seen: list[torch.Tensor] = []

    def body(columns: torch.Tensor) -> torch.Tensor:
        seen.append(columns[0])
        return step.step_body(columns)

    graph = GraphedStep(body, batch, shard_len, torch.zeros(-(-shard_len // batch)), step.plan_rows)
    step.start_epoch(torch.arange(shard_len), 0, 0)
    graph.start_epoch(step.plan, 0)
    graph.warm_up(step.optimizer)  # index_select raises IndexError past the order's end
    assert len(seen) == WARMUP_ITERATIONS and all(torch.equal(s, torch.arange(batch)) for s in seen)
    assert int(graph.position) == 1  # one step taken, from the first batch
    graph.position.fill_(1)
    if shard_len >= 2 * batch:
        graph.captured_step()
        assert torch.equal(seen[-1], torch.arange(batch, 2 * batch))


def test_a_shard_shorter_than_one_batch_is_never_captured():
    tc = TrainConfig(batch_size=64, schedule="none", cuda_graphs=True)
    step, _ = make_step(tc, tiny_splits(40), 1, capturable=True)
    step.capture(torch.zeros(1), shard_len=40)  # returns before any CUDA call: no full batch to replay
    assert step.graph is None


def test_a_captured_step_has_no_gradient_zeroing_and_few_kernels_beyond_the_model():
    tc = TrainConfig(batch_size=64, schedule="none", label_smoothing=0.1)
    step, model = make_step(tc, tiny_splits(), 4, capturable=True)
    body = GraphedStep(step.step_body, tc.batch_size, 300, torch.zeros(4), step.plan_rows)
    step.start_epoch(torch.arange(300), 0, 0)
    body.start_epoch(step.plan, 0)
    body.warm_up(step.optimizer)

    step.optimizer.zero_grad(set_to_none=True)
    captured = kernel_ops(body.captured_step)

    def zeroed_and_added() -> None:  # the body before: zero_grad(set_to_none=False), backward adds
        step.optimizer.zero_grad(set_to_none=False)
        body.captured_step()

    body.position.zero_()
    before = kernel_ops(zeroed_and_added)
    x, y = torch.randn(tc.batch_size, 64), torch.randint(0, 10, (tc.batch_size,))

    def model_alone() -> None:  # the floor: forward, plain cross-entropy, backward, optimizer
        torch.nn.functional.cross_entropy(model(x), y).backward()
        step.optimizer.step()

    step.optimizer.zero_grad(set_to_none=True)
    floor = kernel_ops(model_alone)
    parameters = len(list(model.parameters()))
    assert "_foreach_zero_" not in captured and captured["add_"] <= before["add_"] - parameters
    assert sum(before.values()) - sum(captured.values()) == parameters + 1  # one zeroing, one add per gradient
    # Beyond the floor: the batch's indices (3) and gathers (2), the loss buffer and position (2),
    # the NaN guard (5), label smoothing (6), and on the CPU normalizing (4; once per run on a GPU).
    extra = sum(captured.values()) - sum(floor.values())
    assert extra <= 3 + 2 + 2 + 5 + 6 + 4, (captured - floor, floor - captured)


def test_only_torchs_uncaptured_step_warning_is_silenced():
    # The pattern must match torch's own text (read from its source), and nothing else is hidden.
    source = inspect.getsource(torch.optim.Optimizer)
    assert "This instance was constructed with capturable=True" in source
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with uncaptured_steps_expected():
            warnings.warn(
                "This instance was constructed with capturable=True or some of all the param_groups came with"
                " capturable=True, but step() is running without CUDA graph capture.",
                UserWarning,
                stacklevel=1,
            )
            warnings.warn("something else", UserWarning, stacklevel=1)
        warnings.warn("This instance was constructed with capturable=True (outside)", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == [
        "something else",
        "This instance was constructed with capturable=True (outside)",
    ]


def test_the_graph_bodys_operation_counts_meet_their_targets():
    # The command itself, as docs/gpu.md shows it: it counts each target's graph body on the CPU.
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "step_kernels.py"
    command = [sys.executable, str(script), "--targets"]
    r = subprocess.run(command, cwd=script.parent.parent, capture_output=True, text=True, timeout=120)
    rows = [line.split() for line in r.stdout.splitlines()[1:]]
    counted = {" ".join(row[:-3]): (int(row[-3]), int(row[-2])) for row in rows}
    assert r.returncode == 0, r.stdout + r.stderr
    assert counted.keys() == {"--config configs/seed.yaml", "train.bf16=false"}
    assert all(0 < body <= target for body, target in counted.values()), counted
    assert counted["--config configs/seed.yaml"][1] <= 58 and counted["train.bf16=false"][1] <= 62
