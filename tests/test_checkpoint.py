"""model.pt: weights plus config, readable with torch.load(weights_only=True)."""

from __future__ import annotations

import torch

from mnist_ddp.checkpoint import save_model
from mnist_ddp.config import load_config, to_dict
from mnist_ddp.model import MLP


def test_model_file_loads_weights_only_and_restores_the_model(tmp_path):
    torch.manual_seed(0)
    cfg = load_config(overrides=["model.hidden=[32,16]"])
    model = MLP(784, [32, 16], 0.5)
    save_model(tmp_path / "model.pt", model, to_dict(cfg), in_features=784)
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert saved["in_features"] == 784 and saved["config"]["model"]["hidden"] == [32, 16]
    restored = MLP(saved["in_features"], saved["config"]["model"]["hidden"], 0.5)
    restored.load_state_dict(saved["state_dict"])
    x = torch.randint(0, 256, (4, 784), dtype=torch.uint8)
    model.eval(), restored.eval()
    assert torch.equal(model(x), restored(x))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
