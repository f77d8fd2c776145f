"""Reading MNIST (IDX files or the blog's .mat) and scikit-learn's digits, every file checked."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from mnist_ddp.base.errors import InputError
from mnist_ddp.config.schema import DataConfig
from mnist_ddp.data.download import ensure_idx_files, find_idx_files

# MNIST's pixel mean and standard deviation on the 0-1 scale.
PIXEL_MEAN = 0.1307
PIXEL_STD = 0.3081
NUM_CLASSES = 10
IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
MAT_NAME = "mnist-original.mat"
STANDARD_TRAIN_SIZE = 60_000


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
