"""Ranks that prove they agree: before any data or weights are touched, every rank shows the
others what it will run (settings, code, torch), and after loading, what data it holds.

DDP broadcasts rank 0's weights once and then assumes that every rank computes the same thing.
A rank started with another ``train.lr``, another checkout or other data files would train
garbage without a word, or wait for a collective its peers never reach. :func:`check_ranks_agree`
gathers one small dict of strings from every rank (one ``all_gather_object``) and, on any
difference, every rank raises the same one-line InputError naming the item, the values and the
ranks and hosts that hold each, before anything is written.
"""

from __future__ import annotations

import hashlib
import socket
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import mnist_ddp
from mnist_ddp.base.errors import InputError
from mnist_ddp.config.loading import flat_config, to_dict
from mnist_ddp.config.schema import Config

# Settings that may differ between ranks: where each node finds its files (the data's content
# is compared instead), the threads a node's CPUs allow, and what only rank 0 uses (its output
# folder, resume choice, logging, wandb, profile printing).
MAY_DIFFER = (
    "data.root",
    "data.download",
    "data.mirrors",
    "data.download_timeout_seconds",
    "train.threads",
    "resume",
    "run.dir",
    "checkpoint.keep",
    "checkpoint.requeue",
    "log.progress",
    "log.plots",
    "profile.top",
)
MAY_DIFFER_SECTIONS = ("wandb.",)


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """The package version and a hash of its source files (names and contents)."""
    package = Path(mnist_ddp.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return f"mnist_ddp {mnist_ddp.__version__} (sources {digest.hexdigest()[:12]})"


def job_items(cfg: Config) -> dict[str, str]:
    """What every rank must share before it starts: the settings that change what it computes, the code, torch."""
    settings = {
        k: v
        for k, v in flat_config(to_dict(cfg)).items()
        if k not in MAY_DIFFER and not k.startswith(MAY_DIFFER_SECTIONS)
    }
    return {**settings, "code": code_fingerprint(), "torch": torch.__version__}


def rank_list(ranks: list[int]) -> str:
    """'rank 3' or 'ranks 0-3, 6' (consecutive ranks as ranges)."""
    spans: list[list[int]] = []
    for r in ranks:
        if spans and r == spans[-1][1] + 1:
            spans[-1][1] = r
        else:
            spans.append([r, r])
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)
    return f"rank{'s' if len(ranks) > 1 else ''} {text}"


def describe_disagreement(key: str, values: list[str], hosts: list[str]) -> str:
    """'0.003 on ranks 0-1 (node1), 0.3 on rank 2 (node2)': each value with the ranks and hosts holding it."""
    holders: dict[str, list[int]] = {}
    for rank, value in enumerate(values):
        holders.setdefault(value, []).append(rank)
    parts = []
    for value, ranks in holders.items():
        where = ", ".join(dict.fromkeys(hosts[r] for r in ranks))
        parts.append(f"{value} on {rank_list(ranks)} ({where})")
    return f"{key}: " + ", ".join(parts)


def first_disagreement(gathered: list[dict[str, str]]) -> str | None:
    """The first item (in the first rank's order) whose value differs between ranks, if any."""
    keys = list(dict.fromkeys(k for items in gathered for k in items))
    for key in keys:
        if len({items.get(key, "(missing)") for items in gathered}) > 1:
            return key
    return None


def how_to_fix(key: str) -> str:
    """What to do about a difference in ``key``."""
    if key == "code":
        return "run the same mnist_ddp checkout on every node"
    if key == "torch":
        return "install the same torch on every node"
    if key.startswith("data ("):
        return "give every node the same data files (each rank's data.root: copy them, or point at a shared folder)"
    return "start every node with the same settings (command line and --config file)"


def check_ranks_agree(items: dict[str, str]) -> list[str]:
    """Every rank calls this with its items; all return every rank's host name, in rank order.

    On any difference every rank raises the same InputError (printed once, by rank 0) naming the
    first differing item with each value and the ranks and hosts holding it, and the fix.
    """
    host = socket.gethostname()
    if not dist.is_initialized():
        return [host]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (host, items))
    hosts = [h for h, _ in gathered]
    per_rank = [i for _, i in gathered]
    key = first_disagreement(per_rank)
    if key is not None:
        values = [i.get(key, "(missing)") for i in per_rank]
        others = [k for k in dict.fromkeys(k for i in per_rank for k in i) if k != key and not same(per_rank, k)]
        more = (
            f" (and {len(others)} more: {', '.join(others[:3])}{', ...' if len(others) > 3 else ''})" if others else ""
        )
        raise InputError(f"ranks disagree on {describe_disagreement(key, values, hosts)}{more}; {how_to_fix(key)}")
    return hosts


def same(per_rank: list[dict[str, str]], key: str) -> bool:
    """Whether every rank holds the same value for ``key``."""
    return len({i.get(key, "(missing)") for i in per_rank}) == 1
