"""The whole training step as one CUDA graph (``train.cuda_graphs=true``, one CUDA rank).

One replay is one step: the batch's gather, forward, backward, the optimizer step (its rate a
device tensor the schedule fills), the loss into the epoch's buffer and the NaN guard's
tracking; the host only advances the schedule. Capture follows PyTorch's whole-network example,
and the warm-up puts back everything it changed. docs/gpu.md ("How the step is captured") says
how; the device-side bookkeeping is plain tensor code that the tests run on the CPU.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

WARMUP_ITERATIONS = 3
# torch (before 2.13 for every capturable optimizer) warns once when a capturable optimizer
# steps outside a capture: here that is the warm-up and each epoch's short last batch, by design.
UNCAPTURED_STEP_WARNING = r"This instance was constructed with capturable=True"


@contextmanager
def uncaptured_steps_expected() -> Iterator[None]:
    """Silence exactly torch's 'step() is running without CUDA graph capture' warning inside."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=re.escape(UNCAPTURED_STEP_WARNING), category=UserWarning)
        yield


class GraphedStep:
    """``body(columns) -> loss`` for full batches of ``batch_size`` from a shard of ``shard_len``:
    the batch's columns of the epoch's plan (``plan_rows`` rows, the first the samples), chosen by a
    device counter; captured by :meth:`capture` (CUDA only)."""

    def __init__(
        self,
        body: Callable[[torch.Tensor], torch.Tensor],
        batch_size: int,
        shard_len: int,
        step_losses: torch.Tensor,
        plan_rows: int = 1,
    ) -> None:
        device = step_losses.device
        self.body, self.batch_size, self.step_losses = body, batch_size, step_losses
        # At least one batch long: the warm-up takes a whole batch whatever the shard's length.
        self.plan = torch.zeros(plan_rows, max(shard_len, batch_size), dtype=torch.int64, device=device)
        self.position = torch.zeros((), dtype=torch.int64, device=device)  # the step within the epoch
        self.offsets = torch.arange(batch_size, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None

    def batch_indices(self) -> torch.Tensor:
        """The columns of the plan that the step at ``position`` takes (on the device)."""
        return self.position * self.batch_size + self.offsets

    def captured_step(self) -> None:
        """What one replay does."""
        loss = self.body(self.plan.index_select(1, self.batch_indices()))
        self.step_losses.index_copy_(0, self.position.view(1), loss.view(1))
        self.position.add_(1)

    def warm_up(self, optimizer: torch.optim.Optimizer) -> None:
        """The iterations before capture, each as the captured one will run: on the first batch
        (the position would otherwise run past a shard shorter than WARMUP_ITERATIONS batches),
        the gradients None."""
        for _ in range(WARMUP_ITERATIONS):
            self.position.zero_()
            optimizer.zero_grad(set_to_none=True)
            self.captured_step()

    def capture(self, model: nn.Module, optimizer: torch.optim.Optimizer, counters: list[torch.Tensor]) -> None:
        """Warm up, put back what the warm-up changed, capture. ``counters``: other device tensors
        that ``body`` updates in place (the guard's)."""
        device = self.step_losses.device
        kept = [*model.parameters(), *state_tensors(optimizer), self.step_losses, self.position, *counters]
        saved = [t.detach().clone() for t in kept]
        had_state = bool(optimizer.state)
        generator = torch.cuda.get_rng_state(device)
        self.graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), uncaptured_steps_expected():
            self.warm_up(optimizer)
            with torch.no_grad():
                for tensor, value in zip(kept, saved, strict=True):
                    tensor.copy_(value)
                if not had_state:  # state the warm-up created starts from zero, as a fresh optimizer's does
                    for tensor in state_tensors(optimizer):
                        tensor.zero_()
            # Backward then allocates each gradient inside the graph and writes it there at every replay.
            optimizer.zero_grad(set_to_none=True)
            side.synchronize()
            torch.cuda.set_rng_state(generator, device)
            with torch.cuda.graph(self.graph, stream=side):
                self.captured_step()
        torch.cuda.current_stream(device).wait_stream(side)

    def start_epoch(self, plan: torch.Tensor, first_position: int) -> None:
        """This epoch's plan and the position it starts from (after a resume, mid-epoch)."""
        self.plan[:, : plan.shape[1]].copy_(plan)
        self.position.fill_(first_position)

    def replay(self) -> None:
        """One whole step."""
        assert self.graph is not None, "capture() first"
        self.graph.replay()


def state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor of the optimizer's per-parameter state (moments, step counts, momentum buffers)."""
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
