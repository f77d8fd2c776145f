"""The blog's MLP: 784-256-256-256-128-128-10, ReLU, dropout before the last layer."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

# MNIST's pixel mean and standard deviation on the 0-1 scale.
PIXEL_MEAN = 0.1307
PIXEL_STD = 0.3081


class MLP(nn.Module):
    """A ReLU MLP that takes uint8 pixels (N, in_features) and returns class logits.

    The blog's model applied log_softmax and then nn.CrossEntropyLoss, which applies
    log_softmax again (a double softmax that flattens the gradients). This model returns
    raw logits and training uses ``F.cross_entropy`` on them once.
    """

    def __init__(self, in_features: int, hidden: list[int], dropout: float, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers += [nn.Dropout(dropout), nn.Linear(width, num_classes)]
        self.layers = nn.Sequential(*layers)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # Scaling here, per batch, lets the dataset stay uint8 (4x smaller than float32).
        x = (pixels.float() * (1 / 255) - PIXEL_MEAN) * (1 / PIXEL_STD)
        return self.layers(x)


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def parameter_hash(model: nn.Module) -> str:
    """SHA-256 of every parameter's bytes, in order: equal hashes mean bit-identical weights."""
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
