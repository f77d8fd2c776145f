"""Building the config: defaults, then a YAML file, then ``key=value`` overrides; and writing it back."""

from __future__ import annotations

import argparse
import difflib
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from yaml import YAMLError

from mnist_ddp.base.errors import InputError, first_line
from mnist_ddp.config.checks import validate
from mnist_ddp.config.schema import DATA_ENV_VAR, DEFAULT_CONFIG_FILE, REPO_ROOT, Config, all_keys


def leaf_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted leaf keys of a plain nested dict (a parsed YAML file or override list)."""
    if not isinstance(node, dict | DictConfig):
        return [prefix[:-1]]
    keys: list[str] = []
    for k, v in node.items():
        keys.extend(leaf_keys(v, f"{prefix}{k}."))
    return keys


def check_known_keys(node: Any, source: str) -> None:
    """Reject keys the config does not have, suggesting the closest valid one."""
    known = all_keys()
    sections = {k.rsplit(".", 1)[0] for k in known if "." in k}
    for key in leaf_keys(node):
        if key in known:
            continue
        if key in sections:
            raise InputError(f"config key '{key}' ({source}) is a section; set one of its keys, e.g. {key}.<name>=...")
        close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else "; run with --help to list the keys"
        raise InputError(f"unknown config key '{key}' ({source}){hint}")


def parse_overrides(overrides: list[str]) -> DictConfig:
    """Turn ``key=value`` strings into a config tree, rejecting anything else.

    A key whose value is text (run.dir, data.root, resume, wandb.name, ...) takes everything
    after the ``=`` as it is: read as YAML, ``runs/exp #1`` would lose its comment-like tail,
    ``0755`` would become 493 and ``true`` True. Other keys are read as YAML (numbers, lists).
    """
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise InputError(f"expected a key=value override, got '{item}' (e.g. train.epochs=5)")
    text_keys = {key for key, (default, _) in all_keys().items() if isinstance(default, str)}
    verbatim = [item for item in overrides if item.partition("=")[0] in text_keys]
    try:
        tree = OmegaConf.from_dotlist([item for item in overrides if item not in verbatim])
        for item in verbatim:
            key, _, value = item.partition("=")
            OmegaConf.update(tree, key, value, merge=True)
    except (OmegaConfBaseException, YAMLError) as e:
        raise InputError(f"could not parse the overrides {overrides}: {first_line(e)}") from None
    return tree


def load_yaml(path: Path) -> DictConfig:
    """Read a YAML config file; a missing or malformed file is an InputError."""
    if path.is_dir():
        raise InputError(f"config file {path} is a folder; give a YAML file in it (e.g. configs/default.yaml)")
    if not path.exists():
        raise InputError(f"config file {path} does not exist (configs/ holds default.yaml, seed.yaml, smoke.yaml)")
    try:
        # Read as text first: a pipe (/dev/stdin, <(...)) can be read once, and OmegaConf wants a file it can reopen.
        node = OmegaConf.create(path.read_text()) if not path.is_file() else OmegaConf.load(path)
    except (OmegaConfBaseException, YAMLError, UnicodeDecodeError) as e:
        raise InputError(f"config file {path} is not valid YAML: {first_line(e)}") from None
    except OSError as e:  # OmegaConf's answer to a file holding a bare scalar
        raise InputError(f"config file {path} must hold a mapping of keys ({first_line(e)})") from None
    if not isinstance(node, DictConfig):
        raise InputError(f"config file {path} must hold a mapping of keys, not a list")
    return node


def merge(base: DictConfig, node: DictConfig, source: str) -> DictConfig:
    """Merge ``node`` into the typed ``base``, turning type errors into one-line InputErrors.

    ``node`` is read as written (``???`` markers and ``${...}`` interpolations unresolved);
    :func:`load_config` reports those that do not resolve once everything is merged.
    """
    plain = OmegaConf.to_container(node, resolve=False)
    check_known_keys(plain, source)
    for key in leaf_keys(plain):
        value: Any = plain
        for part in key.split("."):
            value = value[part]
        try:
            OmegaConf.update(base, key, value, merge=False)
        except (OmegaConfBaseException, ValueError) as e:
            expected = type(all_keys()[key][0]).__name__
            message = f"config key '{key}' ({source}): {value!r} is not a valid {expected} ({first_line(e)})"
            raise InputError(message) from None
    return base


def bool_text(value: str) -> str:
    """A YAML boolean that reached a text key (True/False, as older saved configs hold it) as the
    text true/false that the key takes today; any other text as it is."""
    return value.lower() if value in ("True", "False") else value


def load_config(
    config_file: str | Path | None = None, overrides: list[str] | None = None, base: dict[str, Any] | None = None
) -> Config:
    """Build the config from defaults, then ``base`` (a saved config) or a YAML file, then overrides."""
    cfg = OmegaConf.structured(Config)
    path = Path(config_file) if config_file else DEFAULT_CONFIG_FILE
    if base is not None:
        cfg = merge(cfg, OmegaConf.create(base), "saved config")
    elif config_file or path.is_file():
        cfg = merge(cfg, load_yaml(path), str(path))
    cfg = merge(cfg, parse_overrides(overrides or []), "command line")
    try:
        config: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as e:  # a ??? marker or an interpolation that does not resolve
        key = getattr(e, "full_key", None) or "?"
        raise InputError(f"config key '{key}': {first_line(e)}; give it a plain value, e.g. {key}=...") from None
    if not config.data.root:
        config.data.root = os.environ.get(DATA_ENV_VAR) or "data"
    # YAML's false (and older saved configs' False) arrive as text in this text key.
    config.train.bf16 = bool_text(config.train.bf16)
    validate(config)
    return config


def flat_config(node: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config dict as dotted keys and printable values ('train.lr': '0.006')."""
    items: dict[str, str] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            items.update(flat_config(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = str(value)
    return items


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain nested dicts and lists (safe for YAML, JSON and weights-only torch.load)."""
    container = OmegaConf.to_container(OmegaConf.structured(cfg))
    assert isinstance(container, dict)
    return container  # type: ignore[return-value]


def to_yaml(cfg: Config) -> str:
    """The config as YAML text."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def help_text() -> str:
    """Every config key with its default and meaning, for ``--help``."""
    keys = all_keys()
    width = max(len(k) for k in keys)
    lines = ["config keys (override with key=value):"]
    for key, (default, text) in keys.items():
        shown = "[" + ", ".join(map(str, default)) + "]" if isinstance(default, list) else repr(default)
        lines.append(f"  {key:<{width}}  {text} [default: {shown}]")
    return "\n".join(lines)


def key_reference() -> str:
    """Every config key as a Markdown table, from the same field docs as ``--help`` (docs/configuration.md)."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, (default, text) in all_keys().items():
        shown = "[" + ", ".join(map(str, default)) + "]" if isinstance(default, list) else repr(default)
        rows.append(f"| `{key}` | `{shown}` | {text.replace('|', '/')} |")
    return "\n".join(rows) + "\n"


def parse_args(argv: list[str] | None, prog: str) -> Config:
    """Parse ``[--config FILE] [key=value ...]`` into a validated Config."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train the MNIST dropout MLP on one process, or on many under torchrun.",
        epilog=help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help=f"YAML config file (default: {DEFAULT_CONFIG_FILE.relative_to(REPO_ROOT)})")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=5")
    args = parser.parse_intermixed_args(argv)  # overrides may come before and after --config
    return load_config(args.config, args.overrides)
