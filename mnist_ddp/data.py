"""The data: MNIST (IDX or the blog's .mat) and scikit-learn's digits, read, validated, split
and sharded, and loaded on every rank.

Images stay uint8, one row per image (60,000 x 784 is 47 MB, against 188 MB as float32), and
each batch is normalized as it is taken: gathering uint8 rows and normalizing them costs about
what gathering float32 rows would.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mnist_ddp import distributed
from mnist_ddp.config import DataConfig
from mnist_ddp.download import ensure_idx_files, find_idx_files
from mnist_ddp.errors import InputError

# MNIST's pixel mean and standard deviation on the 0-1 scale.
PIXEL_MEAN = 0.1307
PIXEL_STD = 0.3081

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
MAT_NAME = "mnist-original.mat"
NUM_CLASSES = 10
STANDARD_TRAIN_SIZE = 60_000
DIGITS_TEST_SIZE = 360  # a fixed 20% of scikit-learn's 1,797 digits


@dataclass
class Splits:
    """Train and test images (uint8, one flattened image per row) with int64 labels."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str

    @property
    def in_features(self) -> int:
        """Pixels per image: 784 for MNIST, 64 for digits."""
        return self.train_images.shape[1]

    def fingerprint(self) -> dict[str, str]:
        """Each array's shape and a checksum of its contents: equal only for the same data in the same order."""
        arrays = {
            "train images": self.train_images,
            "train labels": self.train_labels,
            "test images": self.test_images,
            "test labels": self.test_labels,
        }
        return {
            f"data ({name})": "x".join(map(str, t.shape))
            + " sha256:"
            + hashlib.sha256(t.cpu().numpy()).hexdigest()[:16]
            for name, t in arrays.items()
        }

    def to(self, device: torch.device) -> Splits:
        """The same splits with every tensor moved to ``device`` once, up front."""
        return Splits(
            self.train_images.to(device),
            self.train_labels.to(device),
            self.test_images.to(device),
            self.test_labels.to(device),
            self.source,
        )


def normalize_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels 0-255 (any dtype) to the model's float32 inputs: zero mean, unit variance over MNIST."""
    # In place on a fresh copy: one allocation instead of three.
    return pixels.to(torch.float32, copy=True).mul_(1 / 255).sub_(PIXEL_MEAN).mul_(1 / PIXEL_STD)


def read_bytes(path: Path) -> bytes:
    """The file's contents, gunzipped when its name ends in .gz."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"{path}: cannot read it ({e}); delete it and download it again") from None


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an unsigned-byte IDX file, checking its magic number and length against its header."""
    raw = read_bytes(path)
    ndim = magic & 0xFF
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise InputError(f"{path}: truncated header ({len(raw)} bytes, need {header_len}); the file is corrupt")
    found = struct.unpack(">I", raw[:4])[0]
    if found != magic:
        kind = "images" if magic == IMAGES_MAGIC else "labels"
        raise InputError(f"{path}: magic number {found} is not an IDX {kind} file ({magic}); wrong or corrupt file")
    dims = struct.unpack(f">{ndim}I", raw[4:header_len])
    expected = header_len + math.prod(dims)  # Python ints: four 32-bit sizes can overflow int64
    if len(raw) != expected:
        raise InputError(
            f"{path}: header says {'x'.join(map(str, dims))} ({expected} bytes) but the file has {len(raw)} bytes;"
            " the file is truncated or corrupt"
        )
    if dims[0] == 0:
        raise InputError(f"{path}: the header says it holds no items; the file is empty or corrupt")
    # bytearray: a writable buffer, which torch.from_numpy needs to share memory safely.
    return np.frombuffer(bytearray(raw), dtype=np.uint8, offset=header_len).reshape(dims)


def read_images(path: Path) -> np.ndarray:
    """MNIST images from an IDX file as an (N, 784) uint8 array."""
    images = read_idx(path, IMAGES_MAGIC)
    if images.shape[1:] != (28, 28):
        raise InputError(f"{path}: images are {images.shape[1]}x{images.shape[2]}, MNIST's are 28x28")
    return images.reshape(len(images), -1)


def read_labels(path: Path) -> np.ndarray:
    """MNIST labels from an IDX file, checked to lie in 0-9."""
    labels = read_idx(path, LABELS_MAGIC)
    check_labels(labels, path)
    return labels


def check_labels(labels: np.ndarray, path: Path) -> None:
    """Reject labels outside 0-9, naming the first bad one."""
    bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if len(bad):
        raise InputError(f"{path}: label {labels[bad[0]]} at index {bad[0]} is outside 0-9; the file is corrupt")


def read_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels from two IDX files that must hold the same number of items."""
    images, labels = read_images(images_path), read_labels(labels_path)
    if len(images) != len(labels):
        raise InputError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels;"
            " one of the files is from another set"
        )
    return images, labels


def read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """All 70,000 images and labels from the blog's ``mnist-original.mat``."""
    from scipy.io import loadmat  # only this format needs scipy.io; keep start-up fast otherwise

    try:
        mat = loadmat(path)
    except Exception as e:  # scipy raises several unrelated types for a bad file
        raise InputError(f"{path}: not a readable MATLAB file ({e})") from None
    if "data" not in mat or "label" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise InputError(f"{path}: expected variables 'data' and 'label', found {found}")
    data, label = np.asarray(mat["data"]), np.asarray(mat["label"]).reshape(-1)
    if data.ndim != 2 or data.shape[0] != 784 or data.shape[1] != len(label):
        raise InputError(f"{path}: 'data' is {data.shape}, expected 784 x {len(label)} (one column per image)")
    labels = label.astype(np.int64)
    check_labels(labels, path)
    return np.ascontiguousarray(data.T.astype(np.uint8)), labels


def mat_path(cfg: DataConfig) -> Path | None:
    """The .mat file to read, or None when the config points at IDX files."""
    root = Path(cfg.root)
    if cfg.format == "idx":
        return None
    if root.suffix == ".mat" or cfg.format == "mat":
        return root if root.suffix == ".mat" else root / MAT_NAME
    if (root / MAT_NAME).is_file() and not any(find_idx_files(root).values()):
        return root / MAT_NAME
    return None


def prepare_files(cfg: DataConfig) -> None:
    """Make sure the MNIST IDX files are on disk, downloading the missing ones when allowed.

    Under DDP one process per node calls this before the others read, so a node downloads once.
    """
    if cfg.dataset == "mnist" and mat_path(cfg) is None:
        ensure_idx_files(Path(cfg.root), cfg.download, cfg.mirrors, cfg.download_timeout_seconds)


def load_mnist_arrays(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The standard 60,000/10,000 MNIST split from IDX files (downloaded if allowed) or the .mat file."""
    mat = mat_path(cfg)
    if mat is not None:
        if not mat.is_file():
            raise InputError(f"{mat} does not exist; set data.root to the folder or path of {MAT_NAME}")
        images, labels = read_mat(mat)
        n = STANDARD_TRAIN_SIZE
        return images[:n], labels[:n], images[n:], labels[n:]
    prepare_files(cfg)
    paths = find_idx_files(Path(cfg.root))
    train = read_idx_pair(paths["train_images"], paths["train_labels"])  # type: ignore[arg-type]
    test = read_idx_pair(paths["test_images"], paths["test_labels"])  # type: ignore[arg-type]
    return train[0], train[1], test[0], test[1]


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits, rescaled from 0-16 to MNIST's 0-255 uint8 range."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.data * (255 / 16)).astype(np.uint8)
    return images, digits.target.astype(np.int64)


def seeded_split(n: int, train_size: int, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint train and test index arrays drawn from ``range(n)`` as the blog did (scikit-learn)."""
    from sklearn.model_selection import train_test_split

    if train_size + test_size > n:
        raise InputError(
            f"data.seed_train_size={train_size} + data.seed_test_size={test_size} exceeds the {n} images available"
        )
    train, test = train_test_split(np.arange(n), train_size=train_size, test_size=test_size, random_state=seed)
    return train, test


def load_splits(cfg: DataConfig, seed: int) -> Splits:
    """The train and test splits that ``cfg`` asks for, as CPU tensors."""
    if cfg.dataset == "digits":
        images, labels = load_digits_arrays()
        # The standard digits split is fixed so that runs with different seeds share a test set.
        split_seed = seed if cfg.split == "seed" else 0
        train_idx, test_idx = seeded_split(len(images), len(images) - DIGITS_TEST_SIZE, DIGITS_TEST_SIZE, split_seed)
        arrays = images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]
        source = "scikit-learn digits"
    else:
        arrays = load_mnist_arrays(cfg)
        source = f"MNIST from {cfg.root}"
        if cfg.split == "seed":
            images, labels = np.concatenate([arrays[0], arrays[2]]), np.concatenate([arrays[1], arrays[3]])
            train_idx, test_idx = seeded_split(len(images), cfg.seed_train_size, cfg.seed_test_size, seed)
            arrays = images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]
    train_x, train_y, test_x, test_y = arrays
    return Splits(
        torch.from_numpy(np.ascontiguousarray(train_x)),
        torch.from_numpy(train_y.astype(np.int64)),
        torch.from_numpy(np.ascontiguousarray(test_x)),
        torch.from_numpy(test_y.astype(np.int64)),
        f"{source}, split={cfg.split}",
    )


def check_fits_ranks(data: Splits, world_size: int) -> None:
    """Every rank needs at least one training image of its own."""
    if len(data.train_labels) < world_size:
        raise InputError(
            f"{len(data.train_labels)} training images cannot be shared by {world_size} ranks;"
            " start fewer processes or use a larger dataset"
        )


def load_on_every_rank(cfg: DataConfig, seed: int, local_rank: int, world_size: int, device: torch.device) -> Splits:
    """Download once per node (local rank 0), then read on every rank; a failure anywhere stops all."""
    with distributed.fail_together(device):  # also the barrier the other local ranks wait at
        if local_rank == 0:
            prepare_files(cfg)
    with distributed.fail_together(device):
        data = load_splits(cfg, seed)
        check_fits_ranks(data, world_size)
    return data.to(device)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of ``range(n)`` for one epoch: the same on every rank, new each epoch."""
    generator = torch.Generator().manual_seed(seed + epoch)  # DistributedSampler's seeding
    return torch.randperm(n, generator=generator)


def to_device_without_waiting(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on ``device``; to a GPU through pinned memory, without waiting for it.

    A copy from pageable memory waits until the GPU has run everything queued before it: at
    every epoch's start that drained the queue of steps. From pinned memory the copy is queued
    like a kernel, so the host builds the next epoch's order while the GPU still trains.
    """
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def shard_indices(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's strided share of an epoch's order, padded as DistributedSampler pads.

    The order is extended by its own first items until it divides evenly, so every rank gets
    the same number of indices and therefore takes the same number of optimizer steps.
    """
    total = -(-len(order) // world_size) * world_size
    if total != len(order):
        order = order.repeat(-(-total // len(order)))[:total]
    return order[rank::world_size]


def shift_images(images: torch.Tensor, max_shift: int, offsets: torch.Tensor) -> torch.Tensor:
    """Each square, flattened, normalized image moved by its own offset (``offsets``: one row and one
    column offset per image, 0..2*max_shift: each axis moves by up to ``max_shift`` pixels either way);
    pixels moved in from outside are background (0 before normalizing).

    One gather on the device: cheap next to the matmuls, so augmentation costs ~5% of a CPU step.
    """
    n, pixels = images.shape
    side, wide = math.isqrt(pixels), math.isqrt(pixels) + 2 * max_shift
    background = -PIXEL_MEAN / PIXEL_STD
    padded = F.pad(images.view(n, side, side), (max_shift,) * 4, value=background).view(n, wide * wide)
    grid = torch.arange(side, device=images.device)
    window = (grid.view(side, 1) * wide + grid.view(1, side)).view(1, pixels)  # the unshifted image
    return padded.gather(1, window + offsets[:, :1] * wide + offsets[:, 1:])
