"""Model weights on disk: model.pt, and the one reader of a checkpoint's weights, which
refuses pickled code, zip bombs and weights that do not fit the model their config describes.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnist_ddp.base.atomic import atomic_torch_save
from mnist_ddp.base.errors import InputError, first_line


@dataclass
class SavedWeights:
    """What ``evaluate`` and ``predict`` need of a model.pt or a snapshot."""

    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]
    in_features: int


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights as CPU tensors, ready to save."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def save_model(path: Path, model: nn.Module, config: dict[str, Any], in_features: int) -> None:
    """Write the final weights with the plain-dict config and the input width, atomically."""
    atomic_torch_save(path, {"state_dict": cpu_state_dict(model), "config": config, "in_features": in_features})


def check_unpacked_size(path: Path, label: str) -> None:
    """Refuse an archive that would unpack to much more than its own size: torch.save stores its
    tensors uncompressed, so a compressed entry is no checkpoint of ours, and loading it could ask
    for gigabytes from a few megabytes (a zip bomb)."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # torch.load names it unreadable
    unpacked = sum(e.file_size for e in entries)
    compressed = [e.filename for e in entries if e.compress_type != zipfile.ZIP_STORED]
    if compressed or unpacked > path.stat().st_size + 2**20:
        raise InputError(
            f"{label}: refused, it would unpack to {unpacked / 2**20:,.0f} MB from a {path.stat().st_size / 2**20:,.1f}"
            f" MB file ({len(compressed)} compressed entries; torch.save writes none)"
        )


def load_weights_only(path: Path, label: str) -> Any:
    """``torch.load(path, weights_only=True)``; a file that cannot load is an InputError naming ``label``.

    A whole torch archive that needs unpickling code is refused without running any of it.
    """
    check_unpacked_size(path, label)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if zipfile.is_zipfile(path):
            raise InputError(f"{label}: refused, it is not a weights-only checkpoint ({first_line(e)})") from None
        raise InputError(f"{label}: not a weights-only torch file ({type(e).__name__})") from None
    except Exception as e:  # a damaged archive fails in many ways, none of them ours to crash on
        raise InputError(f"{label}: unreadable, truncated or corrupt ({type(e).__name__})") from None


def read_weights(path: Path) -> SavedWeights:
    """The weights, config and input width of a model.pt or a snapshot."""
    if not path.is_file():
        raise InputError(f"checkpoint={path}: no such file; give a run's model.pt or a snapshot")
    saved = load_weights_only(path, f"checkpoint={path}")
    state = saved.get("state_dict", saved.get("model")) if isinstance(saved, dict) else None
    if state is None or "config" not in saved or "in_features" not in saved:
        raise InputError(f"checkpoint={path}: not an mnist_ddp model.pt or snapshot")
    return SavedWeights(state, saved["config"], saved["in_features"])


# What a saved model's config may decide when it is evaluated: the model, and which data split it
# is scored on. Where the data comes from (data.root, mirrors, downloads), the device and the
# backend are the user's to choose (command line, environment, defaults), never a file's.
DESCRIBES_THE_MODEL = (
    "seed",
    "data.dataset",
    "data.split",
    "data.seed_train_size",
    "data.seed_test_size",
    "model.hidden",
    "model.dropout",
)


def model_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a saved config that DESCRIBES_THE_MODEL, as a nested dict."""
    kept: dict[str, Any] = {}
    for dotted in DESCRIBES_THE_MODEL:
        section, _, key = dotted.rpartition(".")
        source = config.get(section, {}) if section else config
        if isinstance(source, dict) and key in source:
            (kept.setdefault(section, {}) if section else kept)[key] = source[key]
    return kept


def check_weights_fit(build: Callable[[], nn.Module], state_dict: dict[str, torch.Tensor], label: str) -> None:
    """Check the weights against the model ``build`` makes, built on the meta device (shapes, no
    memory): a checkpoint whose config describes a far larger model than its weights is refused
    before anything is allocated."""
    with torch.device("meta"):
        model = build()
    refuse_misfit(model.state_dict(), state_dict, label)


def refuse_misfit(expected: dict[str, torch.Tensor], state_dict: dict[str, torch.Tensor], label: str) -> None:
    """One line naming the tensors that do not fit, and their shapes; nothing when all fit."""
    problems = [
        f"{name} is {'x'.join(map(str, tensor.shape))} in the checkpoint, {'x'.join(map(str, expected[name].shape))}"
        " in the model"
        for name, tensor in state_dict.items()
        if name in expected and tensor.shape != expected[name].shape
    ]
    problems += [f"{name} is missing" for name in expected if name not in state_dict]
    problems += [f"{name} is unknown to the model" for name in state_dict if name not in expected]
    if problems:
        more = f" (and {len(problems) - 2} more)" if len(problems) > 2 else ""
        raise InputError(
            f"{label}: its weights do not fit the model its config describes: {'; '.join(problems[:2])}{more}"
        )


def load_weights_into(model: nn.Module, state_dict: dict[str, torch.Tensor], label: str) -> None:
    """``model.load_state_dict``; weights that do not fit are one line naming the tensors and their shapes."""
    refuse_misfit(model.state_dict(), state_dict, label)
    model.load_state_dict(state_dict)
