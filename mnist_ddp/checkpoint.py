"""Saving and loading model weights with their config, in a weights-only-loadable format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from mnist_ddp.atomic import atomic_torch_save


def save_model(path: Path, model: nn.Module, config: dict[str, Any], in_features: int) -> None:
    """Write the state_dict, the plain-dict config and the input width atomically.

    Only tensors, dicts, lists and scalars go in, so ``torch.load(weights_only=True)`` reads it.
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save(path, {"state_dict": state, "config": config, "in_features": in_features})
