"""CUDA graph capture of the training step's forward and backward pass (``train.cuda_graphs=true``).

A step of this small MLP is some forty kernels of a few microseconds each, so on a GPU the
time goes to launching them from Python. Replaying one captured graph launches them all at once.
The optimizer step stays outside the graph, so learning-rate schedules work unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def capture_loss_and_grads(
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    model: torch.nn.Module,
    device: torch.device,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Capture ``batch_loss(indices).backward()`` for batches of exactly ``batch_size`` indices.

    Returns ``step(indices) -> loss``: it copies the indices into the graph's input and replays
    it. Each replay overwrites the parameters' ``.grad`` tensors (always the same tensors), so
    they must not be set to None afterwards; zero them in place for an uncaptured step.
    """
    indices = torch.zeros(batch_size, dtype=torch.int64, device=device)
    # Warm up on a side stream first, as capture requires (cuBLAS handles, autograd buffers).
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            model.zero_grad(set_to_none=True)
            batch_loss(indices).backward()
    torch.cuda.current_stream().wait_stream(side)
    model.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = batch_loss(indices)
        loss.backward()

    def step(batch: torch.Tensor) -> torch.Tensor:
        indices.copy_(batch)
        graph.replay()
        return loss

    return step
