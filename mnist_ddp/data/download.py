"""MNIST's files: their names, where they may sit under a folder, and their download from mirrors.

The four IDX files are downloaded as .gz from a list of mirrors, each md5-checked and written
atomically. This module knows the file facts; ``data`` reads the files and imports it.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from mnist_ddp.base.atomic import atomic_write
from mnist_ddp.base.console import say
from mnist_ddp.base.errors import InputError
from mnist_ddp.config.schema import DATA_ENV_VAR

IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# md5 of the .gz files as the mirrors serve them.
GZ_MD5 = {
    "train_images": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train_labels": "d53e105ee54ea40749a09fcbcd1e9432",
    "test_images": "9fb629c4189551a2d022fa330f9573f3",
    "test_labels": "ec29112dd5afa0611ce80d1b7f02629c",
}
# The download sources, tried in order: the PyTorch project's copy first because the
# original site has been unreliable for years.
CHUNK = 1 << 20


class ChecksumError(Exception):
    """The downloaded bytes are not the expected file."""


def find_idx_files(root: Path) -> dict[str, Path | None]:
    """Where each of the four IDX files is under ``root``: flat, or torchvision's MNIST/raw/."""
    found: dict[str, Path | None] = {}
    for key, name in IDX_NAMES.items():
        candidates = [d / n for d in (root, root / "MNIST" / "raw") for n in (name, name + ".gz")]
        found[key] = next((p for p in candidates if p.is_file()), None)
    return found


def missing_data_message(root: Path, missing: list[str]) -> str:
    """Where to put MNIST when it is absent and cannot be downloaded."""
    return (
        f"MNIST files missing from {root}: {', '.join(missing)}; put the four IDX files (raw or .gz) there,"
        f" or point data.root=/path (or ${DATA_ENV_VAR}) at a folder that has them"
    )


def ensure_idx_files(root: Path, download: bool, mirrors: list[str], timeout: float) -> None:
    """Make sure the four IDX files are under ``root``, downloading the missing ones when allowed."""
    missing = [k for k, p in find_idx_files(root).items() if p is None]
    if not missing:
        return
    if not download:
        raise InputError(missing_data_message(root, [IDX_NAMES[k] for k in missing]) + " (data.download=false)")
    download_mnist(root, mirrors, timeout, missing)


def fetch(url: str, dest: Path, md5: str, timeout: float) -> None:
    """Stream ``url`` into ``dest`` atomically; nothing is left behind unless the md5 matches.

    The connection is opened before anything is created, so an offline machine gets no empty folder.
    """
    with urllib.request.urlopen(url, timeout=timeout) as response:

        def write(f: IO[bytes]) -> None:
            digest = hashlib.md5()
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                f.write(chunk)
            if digest.hexdigest() != md5:
                raise ChecksumError(f"md5 {digest.hexdigest()} != {md5}")

        atomic_write(dest, write)


def download_mnist(root: Path, mirrors: list[str], timeout: float, keys: list[str] | None = None) -> None:
    """Download the named MNIST files (all four by default) into ``root`` as .gz files.

    Each file is tried on every mirror in order. If no mirror serves a good copy, the
    InputError lists each mirror's failure and says where to put the files by hand.
    """
    keys = keys or list(IDX_NAMES)
    for key in keys:
        name = IDX_NAMES[key] + ".gz"
        failures = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + name
            try:
                fetch(url, root / name, GZ_MD5[key], timeout)
                say(f"downloaded {url} -> {root / name}")
                break
            except (urllib.error.URLError, OSError, ChecksumError, ValueError) as e:
                # HTTPError's str() carries the status ("HTTP Error 404: Not Found"); URLError's is in .reason.
                reason = e if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", None) or e
                failures.append(f"{url}: {reason}")
        else:
            tried = "; ".join(failures) or "data.mirrors is empty"
            missing = [IDX_NAMES[k] for k in keys[keys.index(key) :]]  # the earlier ones arrived
            raise InputError(f"could not download {name} ({tried}). " + missing_data_message(root, missing))
