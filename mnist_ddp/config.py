"""Configuration: typed dataclasses, YAML files under configs/, ``key=value`` overrides.

Precedence, lowest first: the dataclass defaults, the YAML file (``--config``, else
``configs/default.yaml``), then command-line overrides. Everything is checked before any
work starts, and every problem is an :class:`InputError` naming the key and the fix.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import math
import os
import sys
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from yaml import YAMLError

from mnist_ddp.download import DATA_ENV_VAR, MNIST_MIRRORS
from mnist_ddp.errors import InputError, first_line

MAX_WIDTH = 65_536  # a hidden layer wider than this needs gigabytes per weight matrix
NAME_MAX = 255  # bytes in one file name (Linux, most file systems)
PATH_KEYS = ("run.dir", "data.root", "resume")
MAX_SECONDS = 7 * 24 * 3600
IN_SECONDS = f"greater than 0 and at most {MAX_SECONDS} (a week)"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_FILE = REPO_ROOT / "configs" / "default.yaml"


def doc(text: str, default: Any = MISSING, factory: Any = MISSING) -> Any:
    """A dataclass field whose help text ``--help`` prints."""
    if factory is not MISSING:
        return field(default_factory=factory, metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


@dataclass
class DataConfig:
    root: str = doc(f"folder holding MNIST (or a .mat file); empty: ${DATA_ENV_VAR}, else ./data", "")
    dataset: str = doc("mnist | digits (scikit-learn's bundled 8x8 digits, no download)", "mnist")
    split: str = doc("standard (60,000/10,000) | seed (the blog: 70,000 pooled, seeded split)", "standard")
    format: str = doc("auto | idx | mat (mnist-original.mat, the blog's file)", "auto")
    download: bool = doc("download the IDX files into root when they are missing", True)
    mirrors: list[str] = doc("base URLs tried in order for the .gz files", factory=lambda: list(MNIST_MIRRORS))
    download_timeout_seconds: float = doc("network timeout per request", 10.0)
    seed_train_size: int = doc("training images in the seed split", 50_000)
    seed_test_size: int = doc("test images in the seed split", 500)


@dataclass
class ModelConfig:
    hidden: list[int] = doc("hidden layer widths", factory=lambda: [256, 256, 256, 128, 128])
    dropout: float = doc("dropout probability before the last layer, in [0, 1)", 0.5)


@dataclass
class TrainConfig:
    epochs: int = doc("passes over the training set", 4)
    batch_size: int = doc("global batch size (split evenly across ranks)", 512)
    optimizer: str = doc("sgd | adamw", "adamw")
    lr: float = doc("learning rate (the peak rate for onecycle and linear)", 6e-3)
    momentum: float = doc("sgd momentum", 0.0)
    nesterov: bool = doc("sgd Nesterov momentum (needs momentum > 0)", False)
    weight_decay: float = doc("weight decay (decoupled for adamw)", 0.01)
    beta2: float = doc("adamw's second-moment decay (beta1 is 0.9)", 0.95)
    label_smoothing: float = doc("cross-entropy label smoothing, in [0, 1)", 0.1)
    schedule: str = doc("none | cosine | onecycle | linear (warm up, then decay to 0), stepped every batch", "linear")
    warmup_fraction: float = doc("share of all steps spent warming up (linear schedule), in [0, 1)", 0.1)
    augment_shift: int = doc("shift each training image by up to N pixels in x and y, anew every step (0: off)", 0)
    accumulate_steps: int = doc(
        "micro-batches per optimizer step, each rank's share split evenly; DDP syncs only the last (no_sync)", 1
    )
    bf16: str = doc(
        "auto (bf16 autocast where the device multiplies bf16 natively: CUDA capability >= 8.0, CPUs with"
        " AVX512-BF16 or AMX; else fp32) | true | false",
        "auto",
    )
    compile: bool = doc("torch.compile the model", False)
    cuda_graphs: bool = doc("replay the forward and backward pass as one CUDA graph (one CUDA rank)", False)
    eval_batch_size: int = doc("batch size for evaluation", 10_000)
    eval_every_epochs: int = doc("evaluate, record and print every N epochs (and always after the last)", 1)
    device: str = doc("auto | cpu | cuda", "auto")
    threads: int = doc("torch intra-op threads per process; 0 keeps torch's default", 0)


@dataclass
class DistConfig:
    backend: str = doc("auto (nccl for CUDA ranks, gloo for CPU ranks) | nccl | gloo", "auto")
    timeout_seconds: float = doc("process-group set-up and collective timeout", 300.0)
    bucket_cap_mb: float = doc("DDP gradient bucket size in MB (one all_reduce per bucket)", 25.0)
    comm_hook: str = doc("DDP gradient compression: none | bf16 | fp16 | powersgd", "none")
    powersgd_rank: int = doc("PowerSGD's matrix approximation rank (comm_hook=powersgd)", 2)
    liveness_seconds: float = doc(
        "after the first epoch, a rank that makes no progress this long is named and every rank stops"
        " (0: off; before then, and at the end, dist.timeout_seconds applies)",
        30.0,
    )
    straggler_factor: float = doc(
        "the epoch line names a rank whose compute time is this many times the other ranks' median (0: never)", 1.5
    )


@dataclass
class CheckpointConfig:
    every_steps: int = doc("snapshot every N global steps (0: off), besides the epoch-end snapshots", 500)
    every_epochs: int = doc("snapshot at the end of every N epochs (and always after the last); 0: the last only", 1)
    every_seconds: float = doc(
        "also snapshot once this many seconds have passed since the last one, at the next agreement (0: off)", 0.0
    )
    keep: int = doc("snapshots kept in run.dir/checkpoints (oldest deleted first)", 3)
    check_every_steps: int = doc("steps between the ranks' agreement on stop signals and NaN/inf", 10)
    requeue: bool = doc("on a preemption signal under SLURM, rank 0 runs 'scontrol requeue $SLURM_JOB_ID'", True)


@dataclass
class WandbConfig:
    mode: str = doc(
        "auto ($WANDB_MODE if set, else online with $WANDB_API_KEY, else offline) | online | offline | disabled", "auto"
    )
    project: str = doc("Weights & Biases project", "mnist_ddp")
    entity: str = doc("Weights & Biases entity (team or user); empty: your default", "")
    name: str = doc("run name; empty: wandb picks one", "")
    group: str = doc("run group, e.g. to gather a sweep", "")
    tags: list[str] = doc("run tags", factory=list)


@dataclass
class LogConfig:
    every_steps: int = doc("steps between per-step train loss and lr logs (wandb, progress bar)", 50)
    progress: bool = doc("a progress bar on rank 0 when stdout is a terminal", True)
    plots: bool = doc("write learning-curve, confusion-matrix, sample and per-rank time PNGs to run.dir/plots", True)
    rank_times: bool = doc(
        "measure each rank's time per epoch: compute, waiting for gradients, agreement, evaluation, snapshots", True
    )


@dataclass
class ProfileConfig:
    steps: int = doc(
        "training steps recorded by torch.profiler on every rank, one trace each in run.dir/profile (0: off)", 0
    )
    skip_steps: int = doc("steps after the start (or resume) before recording begins", 5)
    top: int = doc("operations, by time, that the end of a profiled run prints", 15)


@dataclass
class RunConfig:
    dir: str = doc(
        "output folder; empty: runs/<dataset>-<hash of the settings>, so the same command resumes the same run", ""
    )


@dataclass
class Config:
    seed: int = doc("seed for initialisation, shuffling, dropout and the seed split", 0)
    resume: str = doc("auto (newest readable snapshot in run.dir, if any) | none | PATH of a snapshot", "auto")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    log: LogConfig = field(default_factory=LogConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    run: RunConfig = field(default_factory=RunConfig)


CHOICES = {
    "data.dataset": ("mnist", "digits"),
    "data.split": ("standard", "seed"),
    "data.format": ("auto", "idx", "mat"),
    "train.optimizer": ("sgd", "adamw"),
    "train.schedule": ("none", "cosine", "onecycle", "linear"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.bf16": ("auto", "true", "false"),
    "dist.backend": ("auto", "nccl", "gloo"),
    "dist.comm_hook": ("none", "bf16", "fp16", "powersgd"),
    "wandb.mode": ("auto", "online", "offline", "disabled"),
}


def all_keys(cls: type = Config, prefix: str = "") -> dict[str, tuple[Any, str]]:
    """Every dotted leaf key of the config with its default and help text."""
    keys: dict[str, tuple[Any, str]] = {}
    instance = cls()
    for f in fields(cls):
        value = getattr(instance, f.name)
        if is_dataclass(value):
            keys.update(all_keys(type(value), f"{prefix}{f.name}."))
        else:
            keys[f"{prefix}{f.name}"] = (value, f.metadata.get("doc", ""))
    return keys


def leaf_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted leaf keys of a plain nested dict (a parsed YAML file or override list)."""
    if not isinstance(node, dict | DictConfig):
        return [prefix[:-1]]
    keys: list[str] = []
    for k, v in node.items():
        keys.extend(leaf_keys(v, f"{prefix}{k}."))
    return keys


def check_known_keys(node: Any, source: str) -> None:
    """Reject keys the config does not have, suggesting the closest valid one."""
    known = all_keys()
    sections = {k.rsplit(".", 1)[0] for k in known if "." in k}
    for key in leaf_keys(node):
        if key in known:
            continue
        if key in sections:
            raise InputError(f"config key '{key}' ({source}) is a section; set one of its keys, e.g. {key}.<name>=...")
        close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else "; run with --help to list the keys"
        raise InputError(f"unknown config key '{key}' ({source}){hint}")


def parse_overrides(overrides: list[str]) -> DictConfig:
    """Turn ``key=value`` strings into a config tree, rejecting anything else.

    A key whose value is text (run.dir, data.root, resume, wandb.name, ...) takes everything
    after the ``=`` as it is: read as YAML, ``runs/exp #1`` would lose its comment-like tail,
    ``0755`` would become 493 and ``true`` True. Other keys are read as YAML (numbers, lists).
    """
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise InputError(f"expected a key=value override, got '{item}' (e.g. train.epochs=5)")
    text_keys = {key for key, (default, _) in all_keys().items() if isinstance(default, str)}
    verbatim = [item for item in overrides if item.partition("=")[0] in text_keys]
    try:
        tree = OmegaConf.from_dotlist([item for item in overrides if item not in verbatim])
        for item in verbatim:
            key, _, value = item.partition("=")
            OmegaConf.update(tree, key, value, merge=True)
    except (OmegaConfBaseException, YAMLError) as e:
        raise InputError(f"could not parse the overrides {overrides}: {first_line(e)}") from None
    return tree


def load_yaml(path: Path) -> DictConfig:
    """Read a YAML config file; a missing or malformed file is an InputError."""
    if path.is_dir():
        raise InputError(f"config file {path} is a folder; give a YAML file in it (e.g. configs/default.yaml)")
    if not path.exists():
        raise InputError(f"config file {path} does not exist (configs/ holds default.yaml, seed.yaml, smoke.yaml)")
    try:
        # Read as text first: a pipe (/dev/stdin, <(...)) can be read once, and OmegaConf wants a file it can reopen.
        node = OmegaConf.create(path.read_text()) if not path.is_file() else OmegaConf.load(path)
    except (OmegaConfBaseException, YAMLError, UnicodeDecodeError) as e:
        raise InputError(f"config file {path} is not valid YAML: {first_line(e)}") from None
    except OSError as e:  # OmegaConf's answer to a file holding a bare scalar
        raise InputError(f"config file {path} must hold a mapping of keys ({first_line(e)})") from None
    if not isinstance(node, DictConfig):
        raise InputError(f"config file {path} must hold a mapping of keys, not a list")
    return node


def merge(base: DictConfig, node: DictConfig, source: str) -> DictConfig:
    """Merge ``node`` into the typed ``base``, turning type errors into one-line InputErrors.

    ``node`` is read as written (``???`` markers and ``${...}`` interpolations unresolved);
    :func:`load_config` reports those that do not resolve once everything is merged.
    """
    plain = OmegaConf.to_container(node, resolve=False)
    check_known_keys(plain, source)
    for key in leaf_keys(plain):
        value: Any = plain
        for part in key.split("."):
            value = value[part]
        try:
            OmegaConf.update(base, key, value, merge=False)
        except (OmegaConfBaseException, ValueError) as e:
            expected = type(all_keys()[key][0]).__name__
            message = f"config key '{key}' ({source}): {value!r} is not a valid {expected} ({first_line(e)})"
            raise InputError(message) from None
    return base


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


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """Each rank's share of the global batch, which must split evenly."""
    if batch_size % world_size:
        raise InputError(
            f"train.batch_size={batch_size} does not split evenly across {world_size} ranks;"
            f" use a multiple of {world_size}"
        )
    return batch_size // world_size


def check_world_size(tc: TrainConfig, world_size: int) -> int:
    """What the config needs of the number of ranks (the launch scripts check it before torchrun
    starts workers, which would each fail alike, after every restart); each rank's batch."""
    batch = per_rank_batch(tc.batch_size, world_size)
    if batch % tc.accumulate_steps:
        raise InputError(
            f"train.accumulate_steps={tc.accumulate_steps} does not split the {batch} images per rank"
            " per step evenly; use a divisor of train.batch_size / ranks"
        )
    if tc.cuda_graphs and world_size > 1:
        raise InputError(
            f"train.cuda_graphs=true needs one CUDA rank (here: {world_size} ranks); set train.cuda_graphs=false"
        )
    return batch


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
    t, m, d = cfg.train, cfg.model, cfg.data
    checks = [
        # numpy and scikit-learn take seeds below 2**32; the ranks use seed + rank.
        (0 <= cfg.seed < 2**32 - 2**16, "seed", cfg.seed, f"between 0 and {2**32 - 2**16 - 1}"),
        (t.epochs >= 1, "train.epochs", t.epochs, "at least 1"),
        (t.batch_size >= 1, "train.batch_size", t.batch_size, "at least 1"),
        (t.eval_batch_size >= 1, "train.eval_batch_size", t.eval_batch_size, "at least 1"),
        (t.eval_every_epochs >= 1, "train.eval_every_epochs", t.eval_every_epochs, "at least 1"),
        (cfg.checkpoint.every_epochs >= 0, "checkpoint.every_epochs", cfg.checkpoint.every_epochs, "at least 0"),
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
        (cfg.dist.bucket_cap_mb > 0, "dist.bucket_cap_mb", cfg.dist.bucket_cap_mb, "greater than 0"),
        (cfg.dist.powersgd_rank >= 1, "dist.powersgd_rank", cfg.dist.powersgd_rank, "at least 1"),
        (not t.nesterov or t.momentum > 0, "train.nesterov", t.nesterov, "false unless train.momentum > 0"),
        # The dropout draws are 16-bit: a keep probability below 1/65536 rounds to none kept.
        (m.dropout >= 0 and round(m.dropout * 65536) < 65536, "model.dropout", m.dropout, "in [0, 0.99999]"),
        (len(m.hidden) >= 1, "model.hidden", list(m.hidden), "a non-empty list of widths, e.g. [256,128]"),
        (all(w >= 1 for w in m.hidden), "model.hidden", list(m.hidden), "widths of at least 1"),
        (all(w <= MAX_WIDTH for w in m.hidden), "model.hidden", list(m.hidden), f"widths of at most {MAX_WIDTH}"),
        (t.threads <= 1024, "train.threads", t.threads, "at most 1024"),
        (d.seed_train_size >= 1, "data.seed_train_size", d.seed_train_size, "at least 1"),
        (d.seed_test_size >= 1, "data.seed_test_size", d.seed_test_size, "at least 1"),
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
        (
            0 < d.download_timeout_seconds <= MAX_SECONDS,
            "data.download_timeout_seconds",
            d.download_timeout_seconds,
            IN_SECONDS,
        ),
    ]
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


def load_config(
    config_file: str | Path | None = None, overrides: list[str] | None = None, base: dict[str, Any] | None = None
) -> Config:
    """Build the config from defaults, then ``base`` (a saved config) or a YAML file, then overrides."""
    cfg = OmegaConf.structured(Config)
    path = Path(config_file) if config_file else DEFAULT_CONFIG_FILE
    if base is not None:
        cfg = merge(cfg, OmegaConf.create(base), "saved config")
    elif config_file or path.is_file():
        cfg = merge(cfg, load_yaml(path), str(path))
    cfg = merge(cfg, parse_overrides(overrides or []), "command line")
    try:
        config: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as e:  # a ??? marker or an interpolation that does not resolve
        key = getattr(e, "full_key", None) or "?"
        raise InputError(f"config key '{key}': {first_line(e)}; give it a plain value, e.g. {key}=...") from None
    if not config.data.root:
        config.data.root = os.environ.get(DATA_ENV_VAR) or "data"
    # YAML's false (and older saved configs' False) arrive as text in this text key.
    config.train.bf16 = config.train.bf16.lower() if config.train.bf16 in ("True", "False") else config.train.bf16
    validate(config)
    return config


def flat_config(node: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config dict as dotted keys and printable values ('train.lr': '0.006')."""
    items: dict[str, str] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            items.update(flat_config(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = str(value)
    return items


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain nested dicts and lists (safe for YAML, JSON and weights-only torch.load)."""
    container = OmegaConf.to_container(OmegaConf.structured(cfg))
    assert isinstance(container, dict)
    return container  # type: ignore[return-value]


def to_yaml(cfg: Config) -> str:
    """The config as YAML text."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def help_text() -> str:
    """Every config key with its default and meaning, for ``--help``."""
    keys = all_keys()
    width = max(len(k) for k in keys)
    lines = ["config keys (override with key=value):"]
    for key, (default, text) in keys.items():
        shown = "[" + ", ".join(map(str, default)) + "]" if isinstance(default, list) else repr(default)
        lines.append(f"  {key:<{width}}  {text} [default: {shown}]")
    return "\n".join(lines)


def parse_world_sizes(value: str) -> range | list[int]:
    """'2', '2,4', or FIRST:LAST:STEP (every world size of an elastic job: no list to outgrow a command line)."""
    parts = value.split(":")
    if len(parts) == 3 and all(p.isdigit() and int(p) >= 1 for p in parts):
        return range(int(parts[0]), int(parts[1]) + 1, int(parts[2]))
    if not all(v.isdigit() and int(v) >= 1 for v in value.split(",")):
        raise InputError(
            f"--world-size={value!r}: give the number of ranks, whole numbers of at least 1 (e.g. 2, 2,4 or 2:8:2)"
        )
    return [int(v) for v in value.split(",")]


def main(argv: list[str] | None = None) -> int:
    """``python -m mnist_ddp.config [--world-size N[,N...]] [--config FILE] [key=value ...]``: print
    the resolved config as YAML, or its one-line error (exit 2). The launch scripts run it before
    torchrun starts workers, with the number of ranks they will start (every number an elastic
    job may take)."""
    args = list(sys.argv[1:] if argv is None else argv)
    world_sizes: range | list[int] = [1]
    try:
        if args and args[0].startswith("--world-size"):
            value = args.pop(0).partition("=")[2] or (args.pop(0) if args else "")
            world_sizes = parse_world_sizes(value)
        cfg = parse_args(args, prog="python -m mnist_ddp.config")
        for world_size in world_sizes:
            check_world_size(cfg.train, world_size)
    except InputError as e:
        sys.stderr.write(f"error: {e}\n")
        return e.exit_code
    sys.stdout.write(to_yaml(cfg))
    return 0


def parse_args(argv: list[str] | None, prog: str) -> Config:
    """Parse ``[--config FILE] [key=value ...]`` into a validated Config."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train the MNIST dropout MLP on one process, or on many under torchrun.",
        epilog=help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help=f"YAML config file (default: {DEFAULT_CONFIG_FILE.relative_to(REPO_ROOT)})")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=5")
    args = parser.parse_intermixed_args(argv)  # overrides may come before and after --config
    return load_config(args.config, args.overrides)


if __name__ == "__main__":
    sys.exit(main())
