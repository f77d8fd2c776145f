"""Atomic file writes: a reader never sees a half-written file, even after a crash.

A write that the system refuses (disk full, read-only file system, no permission) is an
:class:`OutputError` naming the file, and leaves neither the temp file nor a changed target.
JSON is written strictly: a non-finite number becomes ``null``, never the invalid ``NaN``.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from mnist_ddp.base.errors import OutputError

CURRENT_UMASK = os.umask(0)
os.umask(CURRENT_UMASK)
# What a full or refused file system raises from inside a write. Anything else raised by the
# caller's ``write`` (a network read during a download, say) passes through unchanged.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


# What to do about a refused write, by its cause.
ADVICE = {
    errno.ENOSPC: "free some space or choose another output folder",
    errno.EDQUOT: "free some space (your quota) or choose another output folder",
    errno.EFBIG: "free some space or choose another output folder",
    errno.EROFS: "the file system is read-only here; choose another output folder",
    errno.EACCES: "you may not write there; make it writable or choose another output folder",
    errno.EPERM: "you may not write there; make it writable or choose another output folder",
    errno.ENAMETOOLONG: "a name in the path is too long; choose a shorter output folder",
    errno.EMFILE: "this process may open too few files; raise the limit (ulimit -n 1024) and run again",
    errno.ENFILE: "the system has too many open files; close some programs and run again",
}


def output_error(path: Path, e: OSError) -> OutputError:
    """The one-line error for a write to ``path`` that the system refused, with advice for its cause."""
    advice = ADVICE.get(e.errno or 0, "choose another output folder")
    return OutputError(f"cannot write {path}: {e.strerror or e}; {advice}")


def check_writable(folder: Path) -> None:
    """Create a file in ``folder`` (which exists) and delete it again: an OutputError now, naming
    the folder and the cause, instead of at the first write an epoch later."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise output_error(folder, e) from None


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` on a temp file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise output_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; give it the mode a plain open() would have.
        os.chmod(tmp, 0o666 & ~CURRENT_UMASK)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.errno in STORAGE_ERRNOS or e.filename in (tmp, str(path)):
            raise output_error(path, e) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def finite(value: Any) -> Any:
    """``value`` with every non-finite float inside it replaced by None (JSON's null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def json_text(obj: Any, indent: int | None = None) -> str:
    """Strict JSON for ``obj`` (non-finite numbers as null)."""
    return json.dumps(finite(obj), indent=indent, allow_nan=False)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, strict JSON to ``path`` atomically."""
    atomic_write_text(path, json_text(obj, indent=2) + "\n")


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    """``torch.save`` to ``path`` atomically."""
    import torch  # here, not at the top: config checks import this module and need no torch

    # Serialized in memory first (a few MB here): torch's writer turns a full disk into an
    # opaque RuntimeError, a plain write reports it as what it is.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))
