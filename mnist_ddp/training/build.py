"""Building one rank's training parts from the config: the data on the device, the model and its
DDP wrapper, optimizer, schedule, stop guard, clock and step, in the order every rank builds them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TextIO

import torch
from torch import nn

from mnist_ddp.base import fault_injection
from mnist_ddp.config.checks import check_world_size
from mnist_ddp.config.schema import Config
from mnist_ddp.data.order import rank_batch, shard_indices
from mnist_ddp.data.splits import Splits, load_on_every_rank
from mnist_ddp.model.evaluation import EvalCounts, evaluate_across_ranks
from mnist_ddp.model.mlp import build_model
from mnist_ddp.model.optimizer import build_optimizer, build_schedule
from mnist_ddp.model.precision import allow_tf32, choose_bf16
from mnist_ddp.observe.timing import RankClock, rank_seconds
from mnist_ddp.parallel import agreement, liveness
from mnist_ddp.parallel.ddp import wrap_ddp
from mnist_ddp.parallel.distributed import all_gather_tensors
from mnist_ddp.parallel.launcher import Launch, threads_per_rank
from mnist_ddp.state.rng import seed_everything
from mnist_ddp.training import guard
from mnist_ddp.training.step import StepParts, TrainStep, check_step_options


@dataclass
class Parts:
    """What one rank trains with, built once by :func:`build_parts`."""

    backend: str
    hosts: list[str]
    threads: int
    bf16: bool
    precision_reason: str
    per_rank_batch: int  # this rank's images in a full step: ceil or floor of train.batch_size / ranks
    data: Splits
    data_fingerprint: dict[str, str]
    model: nn.Module  # the module itself; DDP's wrapper lives in ``step``
    clock: RankClock
    shard_len: int  # this rank's images an epoch (every rank takes the same number of steps)
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    schedule: Any
    guard: guard.StopGuard
    step: TrainStep
    sample_log: TextIO | None

    @property
    def precision(self) -> str:
        """What the forward pass computes in: 'bf16 autocast' or 'fp32'."""
        return "bf16 autocast" if self.bf16 else "fp32"

    def evaluate(self, batch_size: int, launch: Launch) -> EvalCounts:
        """Test counts over the whole test split, every image once across the ranks (a collective)."""
        # On the unwrapped module: a DDP forward outside training would prepare a gradient sync.
        data = self.data
        return evaluate_across_ranks(
            self.model, data.test_images, data.test_labels, batch_size, launch.rank, launch.world_size
        )

    def images_trained(self, resumed_at: int, batch_size: int) -> int:
        """Training images an epoch's steps took over all ranks, from step ``resumed_at`` on."""
        return max(0, len(self.data.train_labels) - resumed_at * batch_size)

    def rank_times(self, enabled: bool, device: torch.device) -> dict[str, list[float]] | None:
        """Every rank's seconds per phase since the last record, on every rank (a collective; None when off)."""
        if not enabled:
            return None
        mine = torch.tensor(self.clock.take(), dtype=torch.float64, device=device)
        return rank_seconds([t.tolist() for t in all_gather_tensors(mine)])


def build_parts(cfg: Config, launch: Launch, device: torch.device, backend: str) -> Parts:
    """Check the settings this world size needs, seed, load the data and build the rest (every rank alike)."""
    tc, rank, world_size = cfg.train, launch.rank, launch.world_size
    check_world_size(tc, world_size)
    per_rank_batch = rank_batch(tc.batch_size, world_size, rank)
    check_step_options(tc, device, world_size)
    bf16, precision_reason = choose_bf16(tc.bf16, device)
    precision_reason += allow_tf32(tc.tf32, device)
    threads = threads_per_rank(tc.threads, torch.get_num_threads())
    torch.set_num_threads(threads)
    seed_everything(cfg.seed)
    guard.install_signal_handlers()

    liveness.mark("data loading")
    data = load_on_every_rank(cfg.data, cfg.seed, launch.local_rank, world_size, device)
    fingerprint = data.fingerprint()
    agreement.check_ranks_agree(fingerprint)
    model = build_model(cfg, data.in_features).to(device)
    # Same initial weights on every rank (seeded above). The dropout masks and shifts are keyed to
    # the samples (mnist_ddp.model.sample_noise); the generators, per rank, serve nothing in training.
    torch.manual_seed(cfg.seed + rank)
    clock = RankClock(device, cfg.log.rank_times)
    ddp_model = wrap_ddp(model, device, cfg.dist)
    if ddp_model is not model:  # backward computes the first layer's gradients last
        clock.watch_gradients(list(model.layers[0].parameters()))
    shard_len = len(shard_indices(torch.arange(len(data.train_labels)), rank, world_size, tc.batch_size))
    steps_per_epoch = -(-len(data.train_labels) // tc.batch_size)
    optimizer = build_optimizer(model.parameters(), tc, device, capturable=tc.cuda_graphs)
    schedule = build_schedule(optimizer, tc, tc.epochs * steps_per_epoch)
    stop_guard = guard.StopGuard(model, device)
    fault = fault_injection.planned_fault(rank)
    sample_log = fault_injection.open_sample_log(rank)
    step_parts = StepParts(
        data, model, ddp_model, optimizer, schedule, stop_guard, per_rank_batch, bf16, clock.gradients_reduced,
        world_size, tc.batch_size,
    )  # fmt: skip
    step = TrainStep(tc, step_parts, fault, cfg.seed)
    return Parts(
        backend, list(launch.hosts), threads, bf16, precision_reason, per_rank_batch, data, fingerprint, model,
        clock, shard_len, steps_per_epoch, optimizer, schedule, stop_guard, step, sample_log,
    )  # fmt: skip
