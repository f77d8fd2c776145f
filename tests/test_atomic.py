"""Atomic writes: all or nothing."""

from __future__ import annotations

import json

import pytest

from mnist_ddp.base.atomic import atomic_write, atomic_write_json


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "summary.json"
    atomic_write_json(path, {"a": 1})

    def half_write(f):
        f.write(b'{"a": 2, "b"')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, half_write)
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_creates_missing_parent_folders(tmp_path):
    path = tmp_path / "a" / "b" / "c.json"
    atomic_write_json(path, [1, 2])
    assert json.loads(path.read_text()) == [1, 2]


def test_files_get_the_usual_permissions_not_mkstemps_0600(tmp_path):
    import os

    path = tmp_path / "summary.json"
    atomic_write_json(path, {})
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
