"""The figures: valid PNG files of a sensible size."""

from __future__ import annotations

import torch
from PIL import Image

from mnist_ddp.model.evaluation import EvalCounts
from mnist_ddp.model.mlp import MLP
from mnist_ddp.observe import plots


def test_run_plots_are_valid_pngs(tmp_path):
    torch.manual_seed(0)
    records = [
        {"epoch": e, "train_loss": 1 / e, "test_loss": 1.2 / e, "test_accuracy": 0.9 + e / 100} for e in (1, 2, 3)
    ]
    counts = EvalCounts(3.0, [[9 if t == p else (1 if p == (t + 1) % 10 else 0) for p in range(10)] for t in range(10)])
    images = torch.randint(0, 256, (40, 784), dtype=torch.uint8)
    labels = torch.randint(0, 10, (40,))
    paths = plots.write_run_plots(records, counts, MLP(784, [16], 0.0), images, labels, tmp_path / "plots")
    names = sorted(p.name for p in paths)
    assert names == ["confusion_matrix.png", "learning_curves.png", "test_predictions.png"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == names  # no temp files left
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.width >= 300 and image.height >= 200
