"""Test-set scoring by counts (correct, loss sum, per class), so counts from ranks can be summed."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mnist_ddp.data import NUM_CLASSES
from mnist_ddp.distributed import all_reduce_sum


@dataclass
class EvalCounts:
    """Sums over scored images; summing two EvalCounts gives the counts over both sets."""

    correct: int
    loss_sum: float
    examples: int
    per_class_correct: list[int]
    per_class_total: list[int]

    @property
    def accuracy(self) -> float:
        return self.correct / self.examples if self.examples else 0.0

    @property
    def loss(self) -> float:
        return self.loss_sum / self.examples if self.examples else 0.0

    @property
    def per_class_accuracy(self) -> list[float]:
        return [c / t if t else 0.0 for c, t in zip(self.per_class_correct, self.per_class_total, strict=True)]


def count_tensor(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Counts as one float64 tensor on the model's device, laid out for a single all_reduce.

    Layout: [correct, loss_sum, examples, per-class correct (10), per-class total (10)].
    """
    counts = torch.zeros(3 + 2 * NUM_CLASSES, dtype=torch.float64, device=images.device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x, y = images[start : start + batch_size], labels[start : start + batch_size]
            logits = model(x).float()
            hit = logits.argmax(dim=1) == y
            counts[0] += hit.sum()
            counts[1] += F.cross_entropy(logits, y, reduction="sum").double()
            counts[2] += len(y)
            counts[3 : 3 + NUM_CLASSES] += torch.bincount(y[hit], minlength=NUM_CLASSES).double()
            counts[3 + NUM_CLASSES :] += torch.bincount(y, minlength=NUM_CLASSES).double()
    model.train(was_training)
    return counts


def counts_from_tensor(counts: torch.Tensor) -> EvalCounts:
    """Unpack :func:`count_tensor`'s layout (one host transfer)."""
    c = counts.cpu().tolist()
    return EvalCounts(
        correct=round(c[0]),
        loss_sum=c[1],
        examples=round(c[2]),
        per_class_correct=[round(v) for v in c[3 : 3 + NUM_CLASSES]],
        per_class_total=[round(v) for v in c[3 + NUM_CLASSES :]],
    )


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> EvalCounts:
    """Score ``model`` on every given image exactly once."""
    return counts_from_tensor(count_tensor(model, images, labels, batch_size))


def evaluate_across_ranks(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int, rank: int, world_size: int
) -> EvalCounts:
    """Every rank scores a disjoint, unpadded share (``rank::world_size``) and the counts are summed.

    Each image is scored exactly once for any world size, including ones that do not divide
    the test set (a rank may hold one image more). Every rank must call this: it is a collective.
    """
    counts = count_tensor(model, images[rank::world_size], labels[rank::world_size], batch_size)
    return counts_from_tensor(all_reduce_sum(counts))
