"""The train and test splits a config asks for, loaded on every rank, and the pixels' normalisation."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from mnist_ddp.base.errors import InputError
from mnist_ddp.config.schema import DataConfig
from mnist_ddp.data.readers import PIXEL_MEAN, PIXEL_STD, load_digits_arrays, load_mnist_arrays, prepare_files
from mnist_ddp.parallel import distributed

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
