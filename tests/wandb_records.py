"""Read an offline wandb run's history from its .wandb file (test helper).

The file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of records, each with a
7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) and a protobuf Record.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7


def records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb transaction log"
    pos, chunks, out = HEADER, [], []
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if length == 0 and kind == 0:  # zero padding at a block's end
            pos += left
            continue
        chunks.append(data[pos + HEADER : pos + HEADER + length])
        pos += HEADER + length
        if kind in (1, 4):
            out.append(b"".join(chunks))
            chunks = []
    return out


def history(run_folder: Path) -> list[dict]:
    """Every logged row of the run, values decoded from JSON."""
    from wandb.proto import wandb_internal_pb2

    (log,) = run_folder.glob("run-*.wandb")
    rows = []
    for raw in records(log):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows
