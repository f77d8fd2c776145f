"""Snapshots for exact resume, and the final model file: the one module that spells their keys.

A run's progress lives in :class:`Progress`; a :class:`Snapshot` is that progress with the
weights, optimizer and schedule states and every rank's random streams, and is the only thing
written to and read back from ``run.dir/checkpoints``. ``evaluate`` and ``predict`` read the
weights of a model.pt or a snapshot through :func:`read_weights`.

Everything written here loads with ``torch.load(weights_only=True)``: tensors, dicts, lists,
strings and numbers only (RNG states as tensors, the config as a plain dict). Rank 0 writes
(temp file + fsync + rename), so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mnist_ddp.base.atomic import atomic_torch_save, atomic_write_text
from mnist_ddp.base.console import warn
from mnist_ddp.base.errors import InputError
from mnist_ddp.config.loading import bool_text, flat_config
from mnist_ddp.state.weights import load_weights_only

FORMAT = "mnist_ddp.snapshot/1"


SNAPSHOT_RE = re.compile(r"step_(\d{7,})\.pt")


# Settings a resumed run may change: where outputs and data are (the data's content is checked
# by its fingerprint), how it runs (device, threads, compilation, timeouts, how often it checks,
# evaluates and snapshots), and what it reports (logging, wandb, profiles). Every other setting
# changes what training computes and must equal the snapshot's, or the resume is refused.
SAFE_ON_RESUME = (
    "run.dir",
    "resume",
    "data.root",
    "data.format",
    "data.download",
    "data.mirrors",
    "data.download_timeout_seconds",
    "train.device",
    "train.threads",
    "train.compile",
    "train.cuda_graphs",
    "train.eval_batch_size",
    "train.eval_every_epochs",
    "dist.backend",
    "dist.timeout_seconds",
    "dist.liveness_seconds",
    "dist.straggler_factor",
    "dist.bucket_cap_mb",
)


SAFE_SECTIONS = ("checkpoint.", "log.", "wandb.", "profile.")


def must_match(config: dict[str, Any]) -> dict[str, str]:
    """The settings of ``config`` that a resumed run must share with its snapshot, as dotted keys."""
    return {k: v for k, v in flat_config(config).items() if k not in SAFE_ON_RESUME and not k.startswith(SAFE_SECTIONS)}


def config_identity(config: dict[str, Any]) -> str:
    """A short hash of what a run computes (:func:`must_match`): the same command, the same identity."""
    text = json.dumps(must_match(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


@dataclass
class Progress:
    """How far a run has come: the position in the epoch loop and what it has measured so far."""

    epoch: int = 1  # the epoch under way (1-based)
    step_in_epoch: int = 0  # steps of that epoch already taken
    global_step: int = 0  # optimizer steps taken in the whole run
    records: list[dict[str, Any]] = field(default_factory=list)  # one metrics record per finished epoch
    # Training loss summed over all ranks and over this epoch's steps before ``resumed_at``: a
    # resumed run did not take those steps itself. Rank 0 carries it; other ranks hold 0.
    loss_carry: float = 0.0
    resumed_at: int = 0  # the step of the current epoch this process started from
    # Every finished epoch's training, recorded or not (train.eval_every_epochs): epochs, seconds, images.
    trained: dict[str, float] = field(default_factory=lambda: {"epochs": 0, "seconds": 0.0, "images": 0})

    def start_next_epoch(self) -> None:
        """Move to the first step of the next epoch."""
        self.epoch, self.step_in_epoch, self.resumed_at, self.loss_carry = self.epoch + 1, 0, 0, 0.0


@dataclass
class Snapshot:
    """Everything needed to continue a run exactly (see :func:`save_snapshot` for the file)."""

    progress: Progress
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    schedule: dict[str, Any] | None
    rng: list[torch.Tensor]  # every rank's torch generator states, in rank order
    host_rng: dict[str, Any]  # rank 0's numpy and Python generator states
    config: dict[str, Any]
    in_features: int
    wandb_run_id: str | None
    data: dict[str, str] | None = None  # the data's fingerprint (shapes and checksums); None in older snapshots
    path: Path | None = None  # where it was read from

    @property
    def world_size(self) -> int:
        """How many ranks wrote it (one generator state each)."""
        return len(self.rng)

    def to_file(self) -> dict[str, Any]:
        """The dict that is saved: the file format, key by key."""
        p = self.progress
        return {
            "format": FORMAT,
            "model": self.model,
            "optimizer": self.optimizer,
            "schedule": self.schedule,
            "epoch": p.epoch,
            "step_in_epoch": p.step_in_epoch,
            "global_step": p.global_step,
            "epoch_loss_sum": p.loss_carry,
            "records": p.records,
            "rng": self.rng,
            "host_rng": self.host_rng,
            "world_size": self.world_size,
            "in_features": self.in_features,
            "config": self.config,
            "wandb_run_id": self.wandb_run_id,
            "data": self.data,
            "trained": p.trained,
        }

    @classmethod
    def from_file(cls, state: dict[str, Any], path: Path) -> Snapshot:
        """Undo :meth:`to_file`; a dict without our format tag or keys is an InputError."""
        if state.get("format") != FORMAT:
            raise InputError(f"{path}: not an mnist_ddp snapshot (no '{FORMAT}' format tag)")
        try:
            progress = Progress(
                epoch=state["epoch"],
                step_in_epoch=state["step_in_epoch"],
                global_step=state["global_step"],
                records=state["records"],
                loss_carry=state["epoch_loss_sum"],
                resumed_at=state["step_in_epoch"],
            )
            # Older snapshots did not count epochs that were not recorded: their records are the best count.
            progress.trained = state.get("trained") or {
                "epochs": len(progress.records),
                "seconds": sum(r["train_seconds"] for r in progress.records),
                "images": sum(r["samples_per_second"] * r["train_seconds"] for r in progress.records),
            }
            return cls(
                progress=progress,
                model=state["model"],
                optimizer=state["optimizer"],
                schedule=state["schedule"],
                rng=state["rng"],
                host_rng=state["host_rng"],
                config=state["config"],
                in_features=state["in_features"],
                wandb_run_id=state.get("wandb_run_id"),
                data=state.get("data"),
                path=path,
            )
        except KeyError as e:
            raise InputError(f"{path}: not an mnist_ddp snapshot (no {e} entry)") from None


def snapshot_dir(run_dir: Path) -> Path:
    """Where a run keeps its snapshots."""
    return run_dir / "checkpoints"


def step_of(path: Path) -> int:
    """The global step in a snapshot's file name."""
    return int(SNAPSHOT_RE.fullmatch(path.name).group(1))  # type: ignore[union-attr]


def save_snapshot(run_dir: Path, snapshot: Snapshot, keep: int) -> Path:
    """Write ``snapshot`` as step_XXXXXXX.pt, point ``latest`` at it, and keep the ``keep`` newest.

    Newest means up to this step: a snapshot of a later step is left from a timeline this run
    abandoned (it resumed from before it, past an unreadable one) and goes; the file just
    written never does.
    """
    folder = snapshot_dir(run_dir)
    step = snapshot.progress.global_step
    path = folder / f"step_{step:07d}.pt"
    atomic_torch_save(path, snapshot.to_file())
    atomic_write_text(folder / "latest", path.name + "\n")
    earlier = [p for p in snapshot_paths(folder) if step_of(p) < step]
    for old in [p for p in snapshot_paths(folder) if step_of(p) > step] + earlier[keep - 1 :]:
        old.unlink(missing_ok=True)
    # A write cut short (a rank stopped by the watchdog or killed mid-write) leaves its temp file;
    # the run folder's lock says no other job writes here, so every one left is stale.
    for stale in folder.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    return path


def snapshot_paths(folder: Path) -> list[Path]:
    """Snapshot files in ``folder``, newest (highest step) first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if SNAPSHOT_RE.fullmatch(p.name)]
    return sorted(found, key=step_of, reverse=True)


def read_snapshot(path: Path) -> Snapshot:
    """Load one snapshot, refusing anything that needs unpickling code or is not ours."""
    state = load_weights_only(path, str(path))
    if not isinstance(state, dict):
        raise InputError(f"{path}: not an mnist_ddp snapshot (no '{FORMAT}' format tag)")
    return Snapshot.from_file(state, path)


def check_compatible(
    snapshot: Snapshot, config: dict[str, Any], in_features: int, data: dict[str, str] | None = None
) -> None:
    """Refuse a snapshot of another model, another computation or other data than this run's.

    Every setting outside SAFE_ON_RESUME must be the snapshot's (a key the snapshot's config
    does not have yet, from an older version, is not compared), and so must the data's
    fingerprint when the snapshot recorded one.
    """
    saved, now = must_match(snapshot.config), must_match(config)
    changed = [k for k in now if k in saved and bool_text(saved[k]) != bool_text(now[k])]
    if changed:
        key, more = changed[0], changed[1:]
        also = f" (and {', '.join(more)})" if more else ""
        raise InputError(
            f"{snapshot.path} was saved with {key}={bool_text(saved[key])}, this run has {key}={now[key]}{also};"
            f" set {key}={bool_text(saved[key])} to continue it, or start over in another run.dir"
        )
    if snapshot.in_features != in_features:
        raise InputError(f"{snapshot.path} is a model of {snapshot.in_features} inputs, this data has {in_features}")
    if snapshot.data and data:
        for item, value in data.items():
            if snapshot.data.get(item, value) != value:
                raise InputError(
                    f"{snapshot.path} was trained on other data: its {item} was {snapshot.data[item]}, this run's is"
                    f" {value}; point data.root at the files it trained on, or start over in another run.dir"
                )


def find_snapshot(resume: str, run_dir: Path | None, log: Any = warn) -> Snapshot | None:
    """The snapshot to continue from: resume=PATH, or with resume=auto the newest readable one in run_dir.

    With auto, an unreadable newest snapshot is reported and the next older one is tried.
    """
    if resume == "none":
        return None
    if resume != "auto":
        path = Path(resume)
        if not path.is_file():
            raise InputError(f"resume={resume}: no such file; give a snapshot path, resume=auto or resume=none")
        return read_snapshot(path)
    if run_dir is None:
        return None
    folder = snapshot_dir(run_dir)
    candidates = snapshot_paths(folder)
    named = read_latest(folder / "latest")
    if named is not None:  # what `latest` names first, then the rest by step
        candidates = [folder / named] + [p for p in candidates if p != folder / named]
    if not candidates:
        return None
    problems = []
    for path in candidates:
        try:
            return read_snapshot(path)
        except InputError as e:
            problems.append(str(e))
            log(f"skipping snapshot {e}")
    raise InputError(
        f"no readable snapshot in {folder} ({len(problems)} tried); resume=none starts over once you delete them,"
        " or choose another run.dir"
    )


def read_latest(pointer: Path) -> str | None:
    """The snapshot name that ``latest`` holds; None when it is missing, empty or not a snapshot's
    name (damaged, other bytes): it is only a hint, and the snapshots themselves are read anyway."""
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name if SNAPSHOT_RE.fullmatch(name) else None


def check_one_timeline(resume: str, resume_from: Snapshot | None, run_dir: Path) -> None:
    """A run.dir holds one run: a run that writes into it must continue from its newest snapshot.

    resume=auto always does. Starting afresh (resume=none), or from a snapshot of another folder
    or an older one of this folder, would mix two runs: pruning would delete the new run's
    snapshots in favour of the old run's later steps, and a later resume=auto would continue
    the wrong run.
    """
    existing = snapshot_paths(snapshot_dir(run_dir))
    if resume == "auto" or not existing:
        return
    newest = existing[0]
    if resume_from is None:
        raise InputError(
            f"run.dir={run_dir} holds snapshots of an earlier run (newest {newest.name}); resume=auto continues it,"
            " or choose another run.dir (or delete its checkpoints folder) to start over"
        )
    if Path(resume).resolve() != newest.resolve():
        raise InputError(
            f"run.dir={run_dir} holds snapshots of a run that {resume} did not end (newest {newest.name});"
            f" resume=auto continues that run, or resume from {resume} into another run.dir"
        )
