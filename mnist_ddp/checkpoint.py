"""Snapshots for exact resume, and the final model file.

Everything written here loads with ``torch.load(weights_only=True)``: tensors, dicts, lists,
strings and numbers only (RNG states as tensors, the config as a plain dict). Rank 0 writes
(temp file + fsync + rename), so a reader never sees half a file.
"""

from __future__ import annotations

import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mnist_ddp.atomic import atomic_torch_save, atomic_write_text
from mnist_ddp.errors import InputError

FORMAT = "mnist_ddp.snapshot/1"
SNAPSHOT_RE = re.compile(r"step_(\d{7,})\.pt")
# Keys that must match for a snapshot to continue this run exactly (or at all).
MUST_MATCH = (
    "seed",
    "data.dataset",
    "data.split",
    "data.seed_train_size",
    "data.seed_test_size",
    "model.hidden",
    "train.epochs",
    "train.batch_size",
    "train.optimizer",
    "train.schedule",
)


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights as CPU tensors, ready to save."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def save_model(path: Path, model: nn.Module, config: dict[str, Any], in_features: int) -> None:
    """Write the final weights with the plain-dict config and the input width, atomically."""
    atomic_torch_save(path, {"state_dict": cpu_state_dict(model), "config": config, "in_features": in_features})


def host_rng_state() -> dict[str, Any]:
    """numpy's and Python's generator states as tensors and numbers (no pickled objects)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
        "numpy_pos": int(pos),
        "numpy_gauss": [int(has_gauss), float(cached)],
        "python_version": int(version),
        "python_state": torch.tensor(internal, dtype=torch.int64),
        "python_gauss": gauss_next,
    }


def set_host_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`host_rng_state`."""
    has_gauss, cached = state["numpy_gauss"]
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], int(has_gauss), cached))
    internal = tuple(int(v) for v in state["python_state"].tolist())
    random.setstate((state["python_version"], internal, state["python_gauss"]))


def device_rng_state(device: torch.device) -> torch.Tensor:
    """This rank's torch generator state (CPU, plus the CUDA device's when it has one) as bytes."""
    parts = [torch.get_rng_state()]
    if device.type == "cuda":
        parts.append(torch.cuda.get_rng_state(device))
    return torch.cat(parts)


def set_device_rng_state(state: torch.Tensor, device: torch.device) -> None:
    """Undo :func:`device_rng_state`."""
    cpu_len = len(torch.get_rng_state())
    torch.set_rng_state(state[:cpu_len].clone())
    if device.type == "cuda":
        torch.cuda.set_rng_state(state[cpu_len:].clone(), device)


def snapshot_dir(run_dir: Path) -> Path:
    """Where a run keeps its snapshots."""
    return run_dir / "checkpoints"


def save_snapshot(run_dir: Path, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` as step_XXXXXXX.pt, point ``latest`` at it, and delete all but the newest ``keep``."""
    folder = snapshot_dir(run_dir)
    path = folder / f"step_{state['global_step']:07d}.pt"
    atomic_torch_save(path, {"format": FORMAT, **state})
    atomic_write_text(folder / "latest", path.name + "\n")
    for old in snapshot_paths(folder)[keep:]:
        old.unlink(missing_ok=True)
    return path


def snapshot_paths(folder: Path) -> list[Path]:
    """Snapshot files in ``folder``, newest (highest step) first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if SNAPSHOT_RE.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(SNAPSHOT_RE.fullmatch(p.name).group(1)), reverse=True)  # type: ignore[union-attr]


def read_snapshot(path: Path) -> dict[str, Any]:
    """Load one snapshot, refusing anything that needs unpickling code or is not ours."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: refused, it is not a weights-only checkpoint ({first})") from None
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        raise InputError(f"{path}: unreadable, truncated or corrupt ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"{path}: not an mnist_ddp snapshot (no '{FORMAT}' format tag)")
    return state


def lookup(config: dict[str, Any], dotted: str) -> Any:
    """config['a']['b'] for 'a.b'."""
    node: Any = config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def check_compatible(state: dict[str, Any], config: dict[str, Any], in_features: int, path: Path) -> None:
    """Refuse a snapshot of another model or of a run this config cannot continue."""
    saved = state["config"]
    for key in MUST_MATCH:
        if lookup(saved, key) != lookup(config, key):
            raise InputError(
                f"{path} was saved with {key}={lookup(saved, key)}, this run has {key}={lookup(config, key)};"
                " use the same config, resume=none, or another run.dir"
            )
    if state["in_features"] != in_features:
        raise InputError(f"{path} is a model of {state['in_features']} inputs, this data has {in_features}")


def find_snapshot(resume: str, run_dir: Path | None, log: Any = print) -> tuple[Path, dict[str, Any]] | None:
    """The snapshot to continue from: resume=PATH, or with resume=auto the newest readable one in run_dir.

    With auto, an unreadable newest snapshot is reported and the next older one is tried.
    """
    if resume == "none":
        return None
    if resume != "auto":
        path = Path(resume)
        if not path.is_file():
            raise InputError(f"resume={resume}: no such file; give a snapshot path, resume=auto or resume=none")
        return path, read_snapshot(path)
    if run_dir is None:
        return None
    folder = snapshot_dir(run_dir)
    candidates = snapshot_paths(folder)
    pointer = folder / "latest"
    if pointer.is_file():  # what `latest` names first, then the rest by step
        named = folder / pointer.read_text().strip()
        candidates = [named] + [p for p in candidates if p != named]
    if not candidates:
        return None
    problems = []
    for path in candidates:
        try:
            return path, read_snapshot(path)
        except InputError as e:
            problems.append(str(e))
            log(f"warning: skipping snapshot {e}")
    raise InputError(
        f"no readable snapshot in {folder} ({len(problems)} tried); resume=none starts over, or choose another run.dir"
    )
