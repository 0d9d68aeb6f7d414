"""Options shared by the subcommands, as argparse parent parsers: one flag per noun, everywhere.

    --config FILE / --set KEY=VALUE   configuration (config_parent)
    --data DIR        a canonical dataset folder, as `llm4msr data build` writes it (data_parent)
    --dataset NAME    a dataset (source adapter) name: synthetic, movielens, ... (dataset_parent)
    --knowledge DIR   a knowledge snapshot root, or one snapshot folder in it (knowledge_parent)
    --run DIR         a training run directory, as `llm4msr train` writes it (run_parent)
    --out PATH        where the command writes (out_parent)
    --store URL       the online store (store_parent)
    --json            machine-readable output (json_parent)

Use: `sub.add_parser("train", parents=[config_parent(), data_parent(), knowledge_parent()])`.
Each function returns a fresh parent, so a command can pass its own `required`/`help`.
Choices (backbones, datasets, backends) come from the config schema, whose Literal types a test
keeps equal to the registries (ranker.backbones.BACKBONES, feature_store.adapters.ADAPTERS,
knowledge_service.backends.BACKENDS); importing those registries would load torch for `--help`.
"""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Sequence
from typing import Any

CONFIG_HELP = (
    "YAML file with the settings to change; it is merged over the built-in defaults "
    "(llm4msr/config.py, copied with comments in configs/default.yaml; without --config only "
    "the defaults and --set apply)"
)


def choices(section: str, key: str) -> tuple[str, ...]:
    """The allowed values of a Literal config field, e.g. choices("train", "backbone")."""
    from llm4msr.config import Settings

    model: Any = Settings.model_fields[section].annotation
    annotation = model.model_fields[key].annotation
    if typing.get_origin(annotation) is not typing.Literal:
        raise TypeError(f"config field {section}.{key} is not a Literal: {annotation}")
    return tuple(typing.get_args(annotation))


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


class _Deprecated(argparse.Action):
    """A hidden old spelling: works, and says once which flag replaces it."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(f"llm4msr: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def deprecated_alias(parser: argparse.ArgumentParser, old: str, new: str, dest: str) -> None:
    """Accept `old` as a hidden alias of the option `new` (stored in `dest`)."""
    parser.add_argument(old, dest=dest, action=_Deprecated, new=new, metavar="X")


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """--config FILE and --set KEY=VALUE (repeatable), for a parser built without parents."""
    parser.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set train.epochs=3 (repeatable; applied after --config)",
    )


def config_parent() -> argparse.ArgumentParser:
    """--config FILE and --set KEY=VALUE."""
    p = _parent()
    add_config_args(p)
    return p


def _dir_parent(
    flag: str, what: str, default: str, *, required: bool, help: str | None
) -> argparse.ArgumentParser:
    """A parent with one `flag DIR` option; its help names the config default unless required."""
    p = _parent()
    p.add_argument(
        flag,
        required=required,
        metavar="DIR",
        help=help or what + ("" if required else f" (default: {default})"),
    )
    return p


def data_parent(*, required: bool = False, help: str | None = None) -> argparse.ArgumentParser:
    """--data DIR: a canonical dataset folder."""
    what = "canonical dataset folder from `llm4msr data build`"
    return _dir_parent("--data", what, "data.out", required=required, help=help)


def dataset_parent(*, help: str | None = None) -> argparse.ArgumentParser:
    """--dataset NAME: a dataset (source adapter) name."""
    p = _parent()
    p.add_argument(
        "--dataset", choices=choices("data", "dataset"), help=help or "dataset name (default: data.dataset)"
    )
    return p


def knowledge_parent(*, required: bool = False, help: str | None = None) -> argparse.ArgumentParser:
    """--knowledge DIR: a snapshot root (its CURRENT version is used) or one snapshot folder.
    The old spellings --snapshot and --root still work, with a note."""
    what = "knowledge snapshot root (its CURRENT version is used) or one snapshot folder"
    p = _dir_parent("--knowledge", what, "knowledge.snapshot_root", required=required, help=help)
    for old in ("--snapshot", "--root"):
        deprecated_alias(p, old, "--knowledge", "knowledge")
    return p


def run_parent(*, required: bool = True, help: str | None = None) -> argparse.ArgumentParser:
    """--run DIR: a training run directory."""
    p = _parent()
    p.add_argument(
        "--run", required=required, metavar="DIR", help=help or "training run directory from `llm4msr train`"
    )
    return p


def out_parent(
    *, metavar: str = "DIR", required: bool = False, help: str | None = None
) -> argparse.ArgumentParser:
    """--out PATH: where the command writes."""
    p = _parent()
    p.add_argument("--out", required=required, metavar=metavar, help=help or "where to write")
    return p


STORE_HELP = (
    "online store: a local folder (embedded store, default store.url) or redis://[:password@]host:port/db "
    "(rediss:// for TLS; password also from the env var named by store.password_env)"
)


def store_parent() -> argparse.ArgumentParser:
    """--store URL: the online store."""
    p = _parent()
    p.add_argument("--store", metavar="URL", help=STORE_HELP)
    return p


def json_parent(what: str = "the result") -> argparse.ArgumentParser:
    """--json: print machine-readable output instead of the text summary."""
    p = _parent()
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON")
    return p


def backbone_parent() -> argparse.ArgumentParser:
    """--backbone NAME, choices from the config schema (= ranker.backbones.BACKBONES)."""
    p = _parent()
    p.add_argument(
        "--backbone", choices=choices("train", "backbone"), help="backbone (default: train.backbone)"
    )
    return p
