"""Dataset adapters: each turns one source layout into the canonical tables (before splitting).

An adapter module exposes `load(cfg: DataConfig) -> RawData`. It reads or generates the data and
returns interactions without the `split` column; `feature_store.build` then splits, records each
user's training cutoff, fits vocabularies and validates. Adding a source touches one file here
plus one line in `ADAPTERS`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import polars as pl

from llm4msr.errors import MissingInputError, UserError

if TYPE_CHECKING:
    from llm4msr.config import DataConfig

# dataset name -> module implementing `load(cfg) -> RawData`
ADAPTERS: dict[str, str] = {
    "synthetic": "feature_store.adapters.synthetic",
    "movielens": "feature_store.adapters.movielens",
    "amazon": "feature_store.adapters.amazon",
    "kuaisar": "feature_store.adapters.kuaisar",
    "douban": "feature_store.adapters.douban",
}


@dataclass
class RawData:
    """What an adapter produces: canonical tables minus `split` (interactions) and `train_cutoff` (users).

    `has_timestamps` is False when the source has no real event order (then the split is random).
    `params` is recorded in the dataset manifest as the source description.
    """

    interactions: pl.DataFrame  # user_id, item_id, scenario_id (str), label (int8), timestamp (int64)
    users: pl.DataFrame  # user_id (str) + string attribute columns
    items: pl.DataFrame  # item_id, title, categories (list[str]), description + attribute columns
    scenarios: pl.DataFrame  # scenario_id, name, description
    has_timestamps: bool = True
    params: dict[str, Any] = field(default_factory=dict)


class Adapter(Protocol):
    def load(self, cfg: DataConfig) -> RawData: ...


def get_adapter(name: str) -> Adapter:
    """The adapter module for a dataset name; a clear error lists the known names."""
    if name not in ADAPTERS:
        raise ValueError(f"unknown dataset {name!r}: expected one of {sorted(ADAPTERS)}")
    return importlib.import_module(ADAPTERS[name])  # type: ignore[return-value]


def detect_datasets(path: str | Path) -> list[str]:
    """The datasets whose adapter recognises the files at `path` (each file-reading adapter has
    `matches(path)`); `data build --path` without --dataset uses this instead of building synthetic."""
    p = Path(path).expanduser()
    if not p.exists():
        raise MissingInputError(f"source path {p} does not exist")
    found = []
    for name, module in ADAPTERS.items():
        matches = getattr(importlib.import_module(module), "matches", None)
        if matches is not None and matches(p):
            found.append(name)
    return found


def require_path(cfg: DataConfig, dataset: str) -> Path:
    """The source folder (or file) from `data.path`; FileNotFoundError if it is missing."""
    if not cfg.path:
        raise UserError(f"dataset {dataset!r} needs a source path: pass --path DIR (data.path)")
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise MissingInputError(f"dataset {dataset!r}: source path {path} does not exist")
    return path
