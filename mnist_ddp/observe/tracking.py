"""Weights & Biases, from global rank 0 only: one run per job, continued across resumes.

Every function takes the run that :func:`start` returned, which is None on other ranks and
with ``wandb.mode=disabled``; then they do nothing (and wandb is never imported).
"""

from __future__ import annotations

import netrc
import os
import socket
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mnist_ddp.base.errors import InputError, first_line
from mnist_ddp.config.loading import to_dict
from mnist_ddp.config.schema import Config

REACH_SECONDS = 5.0  # to connect to wandb's server before an online run starts


def resolved_mode(mode: str) -> str:
    """'auto' follows $WANDB_MODE when set, else online with an API key and offline without it."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE") in ("online", "offline", "disabled"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def has_login() -> bool:
    """Whether wandb can find an API key: $WANDB_API_KEY or the ~/.netrc entry `wandb login` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def check_mode(cfg: Config) -> None:
    """Fail before any work when wandb.mode=online has no API key to log in with, or no server to reach."""
    if resolved_mode(cfg.wandb.mode) != "online":
        return
    if not has_login():
        raise InputError(
            "wandb.mode=online needs an API key: set WANDB_API_KEY (or run `wandb login`), or use wandb.mode=offline"
        )
    check_reachable()


def check_reachable(timeout: float = REACH_SECONDS) -> None:
    """Connect to wandb's server (WANDB_BASE_URL, else api.wandb.ai) within seconds: without a
    network, wandb.init itself stays silent for a minute and a half before it fails. Skipped when
    a proxy is configured, which a direct connection says nothing about."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return
    url = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=timeout).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise InputError(
            f"wandb.mode=online cannot reach {url} ({reason}); check the network, or use wandb.mode=offline"
            " and upload the run later with `wandb sync`"
        ) from None


def start(cfg: Config, run_dir: Path, resume_id: str | None) -> Any:
    """Start (or, given the id saved in a snapshot, continue) the wandb run; None when disabled."""
    mode = resolved_mode(cfg.wandb.mode)
    if mode == "disabled":
        return None
    import wandb  # a second of import time, paid only when tracking

    try:
        return init_run(wandb, cfg, mode, run_dir, resume_id)
    except Exception as e:  # wandb raises its own types for a refused key, the network, a bad entity
        fix = (
            "check that run.dir is writable and has space, or use wandb.mode=disabled"
            if mode == "offline"
            else "check wandb.entity and wandb.project, or use wandb.mode=offline"
        )
        raise InputError(f"wandb.init failed in {mode} mode ({type(e).__name__}: {first_line(e)}); {fix}") from None


def init_run(wandb: Any, cfg: Config, mode: str, run_dir: Path, resume_id: str | None) -> Any:
    """wandb.init with the run's settings."""
    w = cfg.wandb
    return wandb.init(
        mode=mode,
        project=w.project,
        entity=w.entity or None,
        name=w.name or None,
        group=w.group or None,
        tags=list(w.tags),
        config=to_dict(cfg),
        dir=str(run_dir),
        id=resume_id,
        resume="allow" if resume_id else None,
        # Leave stdout alone: the epoch lines are ours, and other ranks print too.
        settings=wandb.Settings(console="off", silent=True),
    )


@contextmanager
def tracked(cfg: Config, run_dir: Path | None, resume_id: str | None) -> Iterator[Any]:
    """The wandb run (None without a run folder, i.e. off rank 0) for the block; marked failed if it raises.

    On success the block closes the run itself with :func:`finish`, which records the summary.
    """
    run = start(cfg, run_dir, resume_id) if run_dir is not None else None
    try:
        yield run
    except BaseException:
        finish(run, {}, failed=True)
        raise


def log(run: Any, values: dict[str, Any], step: int) -> None:
    """Log ``values`` at global step ``step`` (the one monotonic axis for step and epoch metrics)."""
    if run is not None:
        run.log(values, step=step)


def epoch_values(record: dict[str, Any], per_class_accuracy: list[float]) -> dict[str, Any]:
    """An epoch's record under wandb's section/name keys."""
    values = {
        "epoch": record["epoch"],
        "train/epoch_loss": record["train_loss"],
        "test/loss": record["test_loss"],
        "test/accuracy": record["test_accuracy"],
        "perf/samples_per_second": record["samples_per_second"],
    }
    values.update({f"test/class_{c}_accuracy": a for c, a in enumerate(per_class_accuracy)})
    for phase, seconds in record.get("rank_seconds", {}).items():
        values.update({f"time/rank_{r}/{phase}_seconds": s for r, s in enumerate(seconds)})
    if record.get("straggler"):
        values["time/straggler_rank"] = record["straggler"]["rank"]
        values["time/straggler_factor"] = record["straggler"]["factor"]
    return values


def log_images(run: Any, paths: list[Path], step: int) -> None:
    """Log PNG files as images."""
    if run is None:
        return
    import wandb

    run.log({f"plots/{p.stem}": wandb.Image(str(p)) for p in paths}, step=step)


def finish(run: Any, summary: dict[str, Any], failed: bool = False) -> None:
    """Write the final and best accuracy into the run's summary and close it (marked failed on errors)."""
    if run is None:
        return
    run.summary.update({k: v for k, v in summary.items() if isinstance(v, int | float)})
    run.finish(exit_code=1 if failed else 0)


def run_id(run: Any) -> str | None:
    """The id to save in snapshots, so a resumed or requeued job continues this run."""
    return None if run is None else run.id
