"""The config's keys: typed dataclasses with a default and a help text each, and the allowed choices."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

MAX_WIDTH = 65_536  # a hidden layer wider than this needs gigabytes per weight matrix
NAME_MAX = 255  # bytes in one file name (Linux, most file systems)
PATH_KEYS = ("run.dir", "data.root", "resume")
MAX_SECONDS = 7 * 24 * 3600
IN_SECONDS = f"greater than 0 and at most {MAX_SECONDS} (a week)"
DATA_ENV_VAR = "MNIST_DDP_DATA"  # where the data is when data.root is empty
MNIST_MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]
REPO_ROOT = Path(__file__).resolve().parents[2]
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
    batch_size: int = doc("global batch size, split as evenly as it can be across any number of ranks up to it", 512)
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
        "micro-batches per optimizer step, each rank's share split as evenly as it can be; DDP syncs only the last", 1
    )
    bf16: str = doc(
        "auto (bf16 autocast where the device multiplies bf16 natively: CUDA capability >= 8.0, CPUs with"
        " AVX512-BF16 or AMX; else fp32) | true | false",
        "auto",
    )
    tf32: bool = doc(
        "let fp32 matmuls on CUDA use TF32 tensor cores (faster, 10-bit mantissas; no effect on a CPU)", False
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
