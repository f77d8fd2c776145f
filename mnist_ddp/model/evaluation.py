"""Test-set scoring by counts (loss sum and the confusion matrix), so counts from ranks can be summed."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mnist_ddp.data.readers import NUM_CLASSES
from mnist_ddp.data.splits import normalize_pixels
from mnist_ddp.parallel import liveness
from mnist_ddp.parallel.distributed import all_reduce_sum


@dataclass
class EvalCounts:
    """Sums over scored images: the summed loss and confusion[true][predicted] counts."""

    loss_sum: float
    confusion: list[list[int]]

    @property
    def examples(self) -> int:
        return sum(map(sum, self.confusion))

    @property
    def correct(self) -> int:
        return sum(self.per_class_correct)

    @property
    def per_class_correct(self) -> list[int]:
        return [row[i] for i, row in enumerate(self.confusion)]

    @property
    def per_class_total(self) -> list[int]:
        return [sum(row) for row in self.confusion]

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
    """Counts as one float64 tensor on the images' device, laid out for a single all_reduce.

    ``images`` are pixels 0-255 (uint8 as loaded), normalized here one batch at a time.

    Layout: [loss_sum, confusion matrix (10 x 10, row = true class, column = prediction)].
    """
    counts = torch.zeros(1 + NUM_CLASSES * NUM_CLASSES, dtype=torch.float64, device=images.device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x, y = images[start : start + batch_size], labels[start : start + batch_size]
            logits = model(normalize_pixels(x)).float()
            counts[0] += F.cross_entropy(logits, y, reduction="sum").double()
            cell = y * NUM_CLASSES + logits.argmax(dim=1)
            counts[1:] += torch.bincount(cell, minlength=NUM_CLASSES * NUM_CLASSES).double()
            liveness.progress()  # a long evaluation moves on batch by batch: slow, not stuck
    model.train(was_training)
    return counts


def counts_from_tensor(counts: torch.Tensor) -> EvalCounts:
    """Unpack :func:`count_tensor`'s layout (one host transfer)."""
    c = counts.cpu().tolist()
    cells = [round(v) for v in c[1:]]
    return EvalCounts(c[0], [cells[i * NUM_CLASSES : (i + 1) * NUM_CLASSES] for i in range(NUM_CLASSES)])


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


def confusion_text(counts: EvalCounts) -> str:
    """The confusion matrix as a text table (rows: true digit, columns: predicted digit)."""
    width = max(5, len(str(max(map(max, counts.confusion)))) + 1)
    header = "true\\pred" + "".join(f"{c:>{width}}" for c in range(NUM_CLASSES))
    rows = [f"{t:>9}" + "".join(f"{v:>{width}}" for v in row) for t, row in enumerate(counts.confusion)]
    return "\n".join([header, *rows])
