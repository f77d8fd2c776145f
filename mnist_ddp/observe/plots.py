"""PNG figures of a run: learning curves, the confusion matrix, and test digits with predictions."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on clusters and CI
import matplotlib.pyplot as plt
import torch

from mnist_ddp.base.atomic import atomic_write
from mnist_ddp.data.splits import normalize_pixels
from mnist_ddp.model.evaluation import EvalCounts


def save_png(fig: Any, path: Path) -> Path:
    """Render ``fig`` and write it atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
    return path


def learning_curves(records: list[dict[str, Any]], path: Path) -> Path:
    """Train and test loss, and test accuracy, per epoch."""
    epochs = [r["epoch"] for r in records]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(epochs, [r["train_loss"] for r in records], "o-", label="train")
    left.plot(epochs, [r["test_loss"] for r in records], "s-", label="test")
    left.set(xlabel="epoch", ylabel="cross-entropy", title="loss", yscale="log")
    left.legend()
    right.plot(epochs, [100 * r["test_accuracy"] for r in records], "o-", color="tab:green")
    best = max(records, key=lambda r: r["test_accuracy"])
    right.set(xlabel="epoch", ylabel="%", title=f"test accuracy (best {100 * best['test_accuracy']:.2f}%)")
    right.grid(alpha=0.3)
    return save_png(fig, path)


def confusion_matrix(counts: EvalCounts, path: Path) -> Path:
    """The test confusion matrix, counts in each cell, mistakes in a separate colour scale."""
    fig, ax = plt.subplots(figsize=(6, 5.4))
    matrix = torch.tensor(counts.confusion, dtype=torch.float64)
    off_diagonal = matrix.clone().fill_diagonal_(0)
    ax.imshow(off_diagonal.numpy(), cmap="Reds")
    for t in range(matrix.shape[0]):
        for p in range(matrix.shape[1]):
            value = int(matrix[t, p])
            if value:
                dark = off_diagonal[t, p] > off_diagonal.max() / 2
                ax.text(
                    p,
                    t,
                    str(value),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if dark else "black",
                    weight="bold" if t == p else None,
                )
    ax.set(
        xlabel="predicted",
        ylabel="true",
        xticks=range(10),
        yticks=range(10),
        title=f"{counts.examples} test images, {100 * counts.accuracy:.2f}% correct",
    )
    return save_png(fig, path)


def prediction_grid(images: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor, path: Path) -> Path:
    """Test digits with predicted and true labels; mistakes are marked in red."""
    count = len(images)
    columns = 8
    rows = -(-count // columns)
    side = int(images.shape[1] ** 0.5)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.2, rows * 1.35))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= count:
            continue
        ax.imshow(images[i].reshape(side, side).cpu().numpy(), cmap="gray")
        right = int(predicted[i]) == int(labels[i])
        ax.set_title(
            f"{int(predicted[i])}" if right else f"{int(predicted[i])} (true {int(labels[i])})",
            color="black" if right else "red",
            fontsize=8,
        )
    return save_png(fig, path)


def rank_times(seconds: dict[str, list[float]], path: Path) -> Path:
    """Each rank's seconds per phase over the run, as stacked bars: the slow rank computes longest and waits least."""
    ranks = len(next(iter(seconds.values())))
    fig, ax = plt.subplots(figsize=(7, 0.5 * ranks + 1.6))
    left = [0.0] * ranks
    for phase, values in seconds.items():
        ax.barh(range(ranks), values, left=left, label=phase.replace("_", " "))
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.set(
        yticks=range(ranks), yticklabels=[f"rank {r}" for r in range(ranks)], xlabel="seconds", title="time per rank"
    )
    ax.invert_yaxis()
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25 if ranks < 4 else -0.1), ncol=5, fontsize=8)
    return save_png(fig, path)


def write_run_plots(
    records: list[dict[str, Any]] | None,
    counts: EvalCounts,
    model: torch.nn.Module,
    images,
    labels,
    folder: Path,
    rank_seconds: dict[str, list[float]] | None = None,
) -> list[Path]:
    """Every figure for a run (learning curves with epoch records, the per-rank chart with their times)."""
    model.eval()
    with torch.no_grad():
        predicted = torch.cat(
            [model(normalize_pixels(images[i : i + 4096])).argmax(dim=1) for i in range(0, len(images), 4096)]
        )
    # The first test digits, with up to 8 of the model's mistakes among them so they can be seen.
    wrong = torch.nonzero(predicted != labels).flatten()[:8]
    right = torch.nonzero(predicted == labels).flatten()[: 32 - len(wrong)]
    shown = torch.cat([right, wrong]).sort().values
    paths = [
        confusion_matrix(counts, folder / "confusion_matrix.png"),
        prediction_grid(images[shown], labels[shown], predicted[shown], folder / "test_predictions.png"),
    ]
    if records:
        paths.insert(0, learning_curves(records, folder / "learning_curves.png"))
    if rank_seconds:
        paths.append(rank_times(rank_seconds, folder / "rank_times.png"))
    return paths
