"""``python -m mnist_ddp.config``: print the resolved config, or its one-line error (exit 2)."""

from __future__ import annotations

import sys

from mnist_ddp.base.errors import InputError
from mnist_ddp.config.checks import check_world_size
from mnist_ddp.config.loading import key_reference, parse_args, to_yaml


def parse_world_sizes(value: str) -> range | list[int]:
    """'2', '2,4', or FIRST:LAST:STEP (every world size of an elastic job: no list to outgrow a command line)."""
    parts = value.split(":")
    if len(parts) == 3 and all(p.isdigit() and int(p) >= 1 for p in parts):
        return range(int(parts[0]), int(parts[1]) + 1, int(parts[2]))
    if not all(v.isdigit() and int(v) >= 1 for v in value.split(",")):
        raise InputError(
            f"--world-size={value!r}: give the number of ranks, whole numbers of at least 1 (e.g. 2, 2,4 or 2:8:2)"
        )
    return [int(v) for v in value.split(",")]


def main(argv: list[str] | None = None) -> int:
    """``python -m mnist_ddp.config [--world-size N[,N...]] [--config FILE] [key=value ...]``: print
    the resolved config as YAML, or its one-line error (exit 2); ``--reference``: every key as a
    Markdown table. The launch scripts run it before
    torchrun starts workers, with the number of ranks they will start (every number an elastic
    job may take)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--reference"]:  # the key table of docs/configuration.md
        sys.stdout.write(key_reference())
        return 0
    world_sizes: range | list[int] = [1]
    try:
        if args and args[0].startswith("--world-size"):
            value = args.pop(0).partition("=")[2] or (args.pop(0) if args else "")
            world_sizes = parse_world_sizes(value)
        cfg = parse_args(args, prog="python -m mnist_ddp.config")
        for world_size in world_sizes:
            check_world_size(cfg.train, world_size)
    except InputError as e:
        sys.stderr.write(f"error: {e}\n")
        return e.exit_code
    sys.stdout.write(to_yaml(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
