"""Checks of a whole config, before any work starts: impossible values, names, world sizes, memory."""

from __future__ import annotations

import itertools
import math
import os
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mnist_ddp.base.errors import InputError
from mnist_ddp.config.schema import (
    CHOICES,
    IN_SECONDS,
    MAX_SECONDS,
    MAX_WIDTH,
    NAME_MAX,
    PATH_KEYS,
    Config,
    DataConfig,
    TrainConfig,
    all_keys,
)


def check_finite(node: Any, prefix: str = "") -> None:
    """Reject infinities and NaN in any float key: every library downstream would choke on them later."""
    for f in fields(node):
        value = getattr(node, f.name)
        if is_dataclass(value):
            check_finite(value, f"{prefix}{f.name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"config key '{prefix}{f.name}' is {value}; it must be a finite number")


def check_text(key: str, value: str) -> None:
    """Text that can be written to config.yaml and JSON: UTF-8 (a name with other bytes arrives
    from the shell as unencodable surrogates); for file paths, names the file system takes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raw = value.encode(sys.getfilesystemencoding(), "surrogateescape")
        shown = raw.decode("utf-8", "backslashreplace")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"config key '{key}' is '{shown}', which is not UTF-8 text; use a UTF-8 name") from None
        # Valid UTF-8 that the locale (LANG=C, without Python's UTF-8 mode) could not decode.
        raise InputError(
            f"config key '{key}' is '{shown}', which this process's locale ({sys.getfilesystemencoding()}) cannot"
            " encode; run with a UTF-8 locale (LANG=C.UTF-8) or PYTHONUTF8=1, or use an ASCII name"
        ) from None
    if key in PATH_KEYS:
        check_path_names(f"config key '{key}'", value)


def check_path_names(what: str, path: str) -> None:
    """Every name in ``path`` within the file system's limit (NAME_MAX, 255 bytes on Linux)."""
    for name in Path(path).parts:
        if len(os.fsencode(name)) > NAME_MAX:
            raise InputError(
                f"{what}: the name {name[:40]}... is {len(os.fsencode(name))} bytes, longer than the {NAME_MAX} a file"
                " name may have; choose a shorter one"
            )


def check_world_size(tc: TrainConfig, world_size: int) -> None:
    """What the config needs of the number of ranks (the launch scripts check it before torchrun
    starts workers, which would each fail alike, after every restart). Any number of ranks up to
    the global batch trains the same run: a batch that W does not divide splits unevenly, each
    rank's loss weighted by its images (mnist_ddp.training.step)."""
    if world_size > tc.batch_size:
        raise InputError(
            f"train.batch_size={tc.batch_size} is smaller than the {world_size} ranks: each rank needs at least"
            f" one image a step; use train.batch_size={world_size} or more, or at most {tc.batch_size} ranks"
        )
    fewest = tc.batch_size // world_size
    if tc.accumulate_steps > fewest:
        raise InputError(
            f"train.accumulate_steps={tc.accumulate_steps} is more than the {fewest} images some of the"
            f" {world_size} ranks take a step (train.batch_size={tc.batch_size}); use at most {fewest}"
        )
    if tc.cuda_graphs and world_size > 1:
        raise InputError(
            f"train.cuda_graphs=true needs one CUDA rank (here: {world_size} ranks); set train.cuda_graphs=false"
        )


def validate(cfg: Config) -> None:
    """Reject impossible values before any work starts, including ones numpy, torch or the
    standard library would only reject minutes later (seeds, infinities, absurd sizes)."""
    tree = OmegaConf.structured(cfg)
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(tree, key)
        if value not in allowed:
            raise InputError(f"config key '{key}' is {value!r}; choose one of: {', '.join(allowed)}")
    for key, (default, _) in all_keys().items():
        if isinstance(default, str):
            check_text(key, OmegaConf.select(tree, key))
    check_finite(cfg)
    m, d = cfg.model, cfg.data
    checks = train_rules(cfg) + model_rules(cfg) + data_rules(cfg) + run_rules(cfg)
    for ok, key, value, need in checks:
        if not ok:
            raise InputError(f"config key '{key}' is {value!r}; it must be {need}")
    sizes = (d.seed_train_size, d.seed_test_size)
    if d.dataset == "digits" and sizes != (DataConfig.seed_train_size, DataConfig.seed_test_size):
        raise InputError(
            f"data.seed_train_size={d.seed_train_size} and data.seed_test_size={d.seed_test_size} size MNIST's"
            f" seed split; digits always splits {1797 - 360} train / 360 test images: leave both out for digits"
        )
    check_model_fits_memory(list(m.hidden))


def check_model_fits_memory(hidden: list[int], in_features: int = 784) -> None:
    """Refuse widths whose weights, gradients and optimizer state (16 bytes a parameter with
    AdamW) would not fit this machine's memory, before anything is allocated."""
    widths = [in_features, *hidden, 10]
    parameters = sum((a + 1) * b for a, b in itertools.pairwise(widths))
    needed, memory = 16 * parameters, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > memory:
        raise InputError(
            f"config key 'model.hidden' is {hidden}: {parameters:,} parameters need about {needed / 2**30:,.0f} GiB"
            f" for weights, gradients and optimizer state, more than this machine's {memory / 2**30:,.0f} GiB;"
            " choose smaller widths"
        )


def train_rules(cfg: Config) -> list[tuple[bool, str, Any, str]]:
    """The train.* keys' rules: (holds, key, value, what it must be)."""
    t = cfg.train
    return [
        (t.epochs >= 1, "train.epochs", t.epochs, "at least 1"),
        (t.batch_size >= 1, "train.batch_size", t.batch_size, "at least 1"),
        (t.eval_batch_size >= 1, "train.eval_batch_size", t.eval_batch_size, "at least 1"),
        (t.eval_every_epochs >= 1, "train.eval_every_epochs", t.eval_every_epochs, "at least 1"),
        (t.lr > 0, "train.lr", t.lr, "greater than 0"),
        (t.momentum >= 0, "train.momentum", t.momentum, "at least 0"),
        (t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "at least 0"),
        (t.threads >= 0, "train.threads", t.threads, "at least 0 (0 keeps torch's default)"),
        (0 <= t.beta2 < 1, "train.beta2", t.beta2, "in [0, 1)"),
        (0 <= t.label_smoothing < 1, "train.label_smoothing", t.label_smoothing, "in [0, 1)"),
        (0 <= t.warmup_fraction < 1, "train.warmup_fraction", t.warmup_fraction, "in [0, 1)"),
        (t.augment_shift >= 0, "train.augment_shift", t.augment_shift, "at least 0"),
        (t.accumulate_steps >= 1, "train.accumulate_steps", t.accumulate_steps, "at least 1"),
        (not (t.cuda_graphs and t.compile), "train.cuda_graphs", t.cuda_graphs, "false when train.compile=true"),
        (not t.nesterov or t.momentum > 0, "train.nesterov", t.nesterov, "false unless train.momentum > 0"),
        (t.threads <= 1024, "train.threads", t.threads, "at most 1024"),
    ]


def model_rules(cfg: Config) -> list[tuple[bool, str, Any, str]]:
    """The model.* keys' rules."""
    m = cfg.model
    return [
        # The dropout draws are 16-bit: a keep probability below 1/65536 rounds to none kept.
        (m.dropout >= 0 and round(m.dropout * 65536) < 65536, "model.dropout", m.dropout, "in [0, 0.99999]"),
        (len(m.hidden) >= 1, "model.hidden", list(m.hidden), "a non-empty list of widths, e.g. [256,128]"),
        (all(w >= 1 for w in m.hidden), "model.hidden", list(m.hidden), "widths of at least 1"),
        (all(w <= MAX_WIDTH for w in m.hidden), "model.hidden", list(m.hidden), f"widths of at most {MAX_WIDTH}"),
    ]


def data_rules(cfg: Config) -> list[tuple[bool, str, Any, str]]:
    """The data.* keys' rules."""
    d = cfg.data
    return [
        (d.seed_train_size >= 1, "data.seed_train_size", d.seed_train_size, "at least 1"),
        (d.seed_test_size >= 1, "data.seed_test_size", d.seed_test_size, "at least 1"),
        (
            0 < d.download_timeout_seconds <= MAX_SECONDS,
            "data.download_timeout_seconds",
            d.download_timeout_seconds,
            IN_SECONDS,
        ),
    ]


def run_rules(cfg: Config) -> list[tuple[bool, str, Any, str]]:
    """The rules for everything else: the seed, snapshots, logging, ranks, profiles."""
    return [
        # numpy and scikit-learn take seeds below 2**32; the ranks use seed + rank.
        (0 <= cfg.seed < 2**32 - 2**16, "seed", cfg.seed, f"between 0 and {2**32 - 2**16 - 1}"),
        (cfg.checkpoint.every_epochs >= 0, "checkpoint.every_epochs", cfg.checkpoint.every_epochs, "at least 0"),
        (cfg.dist.bucket_cap_mb > 0, "dist.bucket_cap_mb", cfg.dist.bucket_cap_mb, "greater than 0"),
        (cfg.dist.powersgd_rank >= 1, "dist.powersgd_rank", cfg.dist.powersgd_rank, "at least 1"),
        (cfg.checkpoint.every_steps >= 0, "checkpoint.every_steps", cfg.checkpoint.every_steps, "at least 0"),
        (
            0 <= cfg.checkpoint.every_seconds <= MAX_SECONDS,
            "checkpoint.every_seconds",
            cfg.checkpoint.every_seconds,
            f"0 (off) or at most {MAX_SECONDS} (a week)",
        ),
        (cfg.checkpoint.keep >= 1, "checkpoint.keep", cfg.checkpoint.keep, "at least 1"),
        (
            cfg.checkpoint.check_every_steps >= 1,
            "checkpoint.check_every_steps",
            cfg.checkpoint.check_every_steps,
            "at least 1",
        ),
        (cfg.log.every_steps >= 1, "log.every_steps", cfg.log.every_steps, "at least 1"),
        (cfg.resume != "", "resume", cfg.resume, "auto, none or the path of a snapshot"),
        (0 < cfg.dist.timeout_seconds <= MAX_SECONDS, "dist.timeout_seconds", cfg.dist.timeout_seconds, IN_SECONDS),
        (
            0 <= cfg.dist.liveness_seconds <= MAX_SECONDS,
            "dist.liveness_seconds",
            cfg.dist.liveness_seconds,
            f"0 (off) or at most {MAX_SECONDS} (a week)",
        ),
        (
            cfg.dist.straggler_factor == 0 or cfg.dist.straggler_factor > 1,
            "dist.straggler_factor",
            cfg.dist.straggler_factor,
            "0 (never) or greater than 1",
        ),
        (cfg.profile.steps >= 0, "profile.steps", cfg.profile.steps, "at least 0 (0: off)"),
        (cfg.profile.skip_steps >= 0, "profile.skip_steps", cfg.profile.skip_steps, "at least 0"),
        (cfg.profile.top >= 1, "profile.top", cfg.profile.top, "at least 1"),
    ]
