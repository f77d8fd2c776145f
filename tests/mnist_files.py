"""Write small MNIST-style IDX files for tests: ``from mnist_files import write_fake_mnist``."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
IDX_FILENAMES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """The uncompressed IDX encoding of ``array``: big-endian magic, one 4-byte size per dim, then the bytes."""
    array = np.asarray(array)
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path: str | Path, array: np.ndarray, magic: int) -> Path:
    """Write ``array`` as an IDX file at ``path``, gzip-compressed when the name ends in .gz; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(array, magic)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def fake_images(n: int, rng: np.random.Generator, start: int = 0) -> np.ndarray:
    """``n`` random 28x28 uint8 images; pixels 0 and 1 of image ``k`` hold ``start + k`` (low, high byte).

    The embedded index makes every image unique (for up to 65,536 images), so tests can tell
    which pool item landed where.
    """
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    index = np.arange(start, start + n)
    images[:, 0, 0] = index % 256
    images[:, 0, 1] = index // 256
    return images


def image_index(images: np.ndarray) -> np.ndarray:
    """The indices that :func:`fake_images` embedded, from (N, 28, 28) or flattened (N, 784) images."""
    flat = np.asarray(images).reshape(len(images), -1).astype(np.int64)
    return flat[:, 0] + 256 * flat[:, 1]


def write_fake_mnist(
    root: str | Path, n_train: int = 64, n_test: int = 16, gz: bool = False, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Write the four standard MNIST IDX files (with .gz appended if ``gz``) into ``root``.

    Images are random 28x28 uint8 numbered 0.. across train then test (see :func:`fake_images`);
    labels are random in 0-9. Returns (train_images, train_labels, test_images, test_labels),
    images shaped (N, 28, 28) and labels (N,), all uint8.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    train_images = fake_images(n_train, rng)
    test_images = fake_images(n_test, rng, start=n_train)
    train_labels = rng.integers(0, 10, size=n_train, dtype=np.uint8)
    test_labels = rng.integers(0, 10, size=n_test, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(root / (TRAIN_IMAGES + suffix), train_images, IMAGES_MAGIC)
    write_idx(root / (TRAIN_LABELS + suffix), train_labels, LABELS_MAGIC)
    write_idx(root / (TEST_IMAGES + suffix), test_images, IMAGES_MAGIC)
    write_idx(root / (TEST_LABELS + suffix), test_labels, LABELS_MAGIC)
    return train_images, train_labels, test_images, test_labels
