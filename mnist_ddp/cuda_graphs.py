"""The whole training step as one CUDA graph (``train.cuda_graphs=true``, one CUDA rank).

A step of this small MLP is some forty kernels of a few microseconds each, so on a GPU the
time goes to launching them from Python. One graph holds all of them: the batch's indices
gathered from the epoch's order on the device, zeroed gradients, forward, backward, the
optimizer step (built capturable, its learning rate a device tensor that the schedule fills
from the host), the loss written into the epoch's loss buffer, and the NaN guard's tracking.
One replay is one step; the host only advances the schedule.

Capture follows PyTorch's pattern: warm-up iterations on a side stream, then capture on that
stream. The warm-up trains on a real batch, so everything it changes is put back first: weights,
optimizer state, the loss buffer, the guard, and the CUDA generator. A resumed run therefore
draws the same dropout masks as an uninterrupted one, replay for replay.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

WARMUP_ITERATIONS = 3


class GraphedStep:
    """``body(indices) -> loss`` captured for full batches of ``batch_size`` from a shard of ``shard_len``."""

    def __init__(
        self,
        body: Callable[[torch.Tensor], torch.Tensor],
        batch_size: int,
        shard_len: int,
        step_losses: torch.Tensor,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        counters: list[torch.Tensor],
    ) -> None:
        """``counters``: other device tensors that ``body`` updates in place (the guard's)."""
        device = step_losses.device
        self.body, self.batch_size, self.step_losses = body, batch_size, step_losses
        self.order = torch.zeros(shard_len, dtype=torch.int64, device=device)  # this epoch's shard
        self.position = torch.zeros((), dtype=torch.int64, device=device)  # the step within the epoch
        self.offsets = torch.arange(batch_size, device=device)
        self.graph = torch.cuda.CUDAGraph()
        self.capture(model, optimizer, counters)

    def captured_step(self) -> None:
        """What one replay does."""
        indices = self.order.index_select(0, self.position * self.batch_size + self.offsets)
        loss = self.body(indices)
        self.step_losses.index_copy_(0, self.position.view(1), loss.view(1))
        self.position.add_(1)

    def capture(self, model: nn.Module, optimizer: torch.optim.Optimizer, counters: list[torch.Tensor]) -> None:
        """Warm up, put back what the warm-up changed, capture."""
        device = self.step_losses.device
        kept = [*model.parameters(), *state_tensors(optimizer), self.step_losses, self.position, *counters]
        saved = [t.detach().clone() for t in kept]
        had_state = bool(optimizer.state)
        generator = torch.cuda.get_rng_state(device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_ITERATIONS):
                self.captured_step()
            with torch.no_grad():
                for tensor, value in zip(kept, saved, strict=True):
                    tensor.copy_(value)
                if not had_state:  # state the warm-up created starts from zero, as a fresh optimizer's does
                    for tensor in state_tensors(optimizer):
                        tensor.zero_()
            side.synchronize()
            torch.cuda.set_rng_state(generator, device)
            with torch.cuda.graph(self.graph, stream=side):
                self.captured_step()
        torch.cuda.current_stream(device).wait_stream(side)

    def start_epoch(self, shard: torch.Tensor, first_step: int) -> None:
        """This epoch's order and the step it starts from (after a resume, mid-epoch)."""
        self.order[: len(shard)].copy_(shard)
        self.position.fill_(first_step)

    def replay(self) -> None:
        """One whole step."""
        self.graph.replay()


def state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor of the optimizer's per-parameter state (moments, step counts, momentum buffers)."""
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
