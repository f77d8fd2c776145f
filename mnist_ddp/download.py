"""Download MNIST's four .gz files from a list of mirrors, md5-checked, written atomically."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from mnist_ddp.atomic import atomic_write
from mnist_ddp.data import IDX_NAMES, missing_data_message
from mnist_ddp.errors import InputError

# md5 of the .gz files as the mirrors serve them.
GZ_MD5 = {
    "train_images": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train_labels": "d53e105ee54ea40749a09fcbcd1e9432",
    "test_images": "9fb629c4189551a2d022fa330f9573f3",
    "test_labels": "ec29112dd5afa0611ce80d1b7f02629c",
}
CHUNK = 1 << 20


class ChecksumError(Exception):
    """The downloaded bytes are not the expected file."""


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
                print(f"downloaded {url} -> {root / name}", flush=True)
                break
            except (urllib.error.URLError, OSError, ChecksumError, ValueError) as e:
                # HTTPError's str() carries the status ("HTTP Error 404: Not Found"); URLError's is in .reason.
                reason = e if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", None) or e
                failures.append(f"{url}: {reason}")
        else:
            tried = "; ".join(failures) or "data.mirrors is empty"
            missing = [IDX_NAMES[k] for k in keys[keys.index(key) :]]  # the earlier ones arrived
            raise InputError(f"could not download {name} ({tried}). " + missing_data_message(root, missing))
