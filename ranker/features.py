"""The feature specification: one object shared by training, ONNX export and serving.

A `FeatureSpec` fixes the order of the sparse id features fed to every model (`sparse_ids`
int64 [B, F]), where each feature comes from (the user row, the item row or the request
context), the vocabulary of each (index 0 = unknown), the index of the scenario feature and the
knowledge dimension the model was trained with. It is plain JSON (`feature_spec.json` in a run
directory), so serving can rebuild the exact encoding without importing torch.

Feature order: user_id, item_id, scenario_id, user attribute columns (users table), item_category
(primary = first category), other item attribute columns (items table).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from feature_store.dataset import CanonicalDataset, DataError
from llm4msr.atomic import write_json_atomic
from llm4msr.errors import MissingInputError

log = logging.getLogger(__name__)

SPEC_VERSION = 1
SPEC_FILE = "feature_spec.json"
Source = Literal["user", "item", "context"]

# Columns of users/items that are never sparse features (keys, text, time).
_USER_SKIP = {"user_id", "train_cutoff"}
_ITEM_SKIP = {"item_id", "title", "categories", "description"}
# Integer attribute columns with more distinct values than this are not treated as categorical.
MAX_INT_CARDINALITY = 10_000


@dataclass
class SparseFeature:
    name: str  # feature name (key in vocabs)
    source: Source  # which row the value comes from
    column: str  # column in that table (item_category: derived from items.categories[0])
    vocab_size: int  # len(vocab) + 1 (index 0 = unknown)


@dataclass
class FeatureSpec:
    features: list[SparseFeature]
    scenario_index: int
    knowledge_dim: int
    vocabs: dict[str, dict[str, int]] = field(default_factory=dict)
    version: int = SPEC_VERSION
    # Features with one value per scenario in the training rows (Amazon: item_category is the
    # scenario). They carry nothing the scenario index does not, and per-scenario normalisation
    # turns them into rounding noise, so STAR keeps them out of its tower (`scenario_constant_features`).
    scenario_constant: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ accessors
    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def n_scenarios(self) -> int:
        """Size of the scenario vocabulary including the unknown index 0."""
        return self.features[self.scenario_index].vocab_size

    def index_of(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"feature {name!r} is not in the spec (have {self.names})") from None

    def indices_of(self, source: Source) -> list[int]:
        return [i for i, f in enumerate(self.features) if f.source == source]

    def scenario_ids(self) -> list[str]:
        """Scenario ids in vocabulary order (position i-1 has index i)."""
        vocab = self.vocabs["scenario_id"]
        return [k for k, _ in sorted(vocab.items(), key=lambda kv: kv[1])]

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        if data.get("version") != SPEC_VERSION:
            raise ValueError(f"feature spec version {data.get('version')!r}, expected {SPEC_VERSION}")
        feats = [SparseFeature(**f) for f in data["features"]]
        return cls(
            features=feats,
            scenario_index=int(data["scenario_index"]),
            knowledge_dim=int(data["knowledge_dim"]),
            vocabs=data.get("vocabs", {}),
            version=int(data["version"]),
            scenario_constant=[str(n) for n in data.get("scenario_constant", [])],
        )

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> FeatureSpec:
        path = Path(path)
        if path.is_dir():
            path = path / SPEC_FILE
        if not path.is_file():
            raise MissingInputError(f"feature spec {path} does not exist")
        return cls.from_dict(json.loads(path.read_text()))

    # ------------------------------------------------------------------ encoding
    def feature_frame(
        self, interactions: pl.DataFrame, users: pl.DataFrame, items: pl.DataFrame
    ) -> pl.DataFrame:
        """Join user and item attributes onto (user_id, item_id, scenario_id) rows; one column per feature."""
        for col in ("user_id", "item_id", "scenario_id"):
            if col not in interactions.columns:
                raise DataError(f"interactions: missing column {col!r} needed by the feature spec")
        user_cols = [f.column for f in self.features if f.source == "user" and f.column != "user_id"]
        item_cols = [f.column for f in self.features if f.source == "item" and f.column not in ("item_id",)]
        frame = interactions.select("user_id", "item_id", "scenario_id")
        if user_cols:
            frame = frame.join(_attr_table(users, "user_id", user_cols, "users"), on="user_id", how="left")
        if item_cols:
            frame = frame.join(_attr_table(items, "item_id", item_cols, "items"), on="item_id", how="left")
        return frame

    def encode(self, frame: pl.DataFrame) -> np.ndarray:
        """Rows with one column per feature (`feature_frame`) -> int64 [N, F]; unknown values -> 0."""
        cols = []
        for f in self.features:
            if f.column not in frame.columns:
                raise DataError(
                    f"cannot encode feature {f.name!r}: column {f.column!r} missing (have {frame.columns})"
                )
            vocab = self.vocabs[f.name]
            mapped = (
                frame[f.column]
                .cast(pl.String)
                .replace_strict(list(vocab.keys()), list(vocab.values()), default=0, return_dtype=pl.Int64)
            )
            cols.append(mapped.fill_null(0).to_numpy())
        if not cols:
            return np.zeros((frame.height, 0), dtype=np.int64)
        return np.ascontiguousarray(np.stack(cols, axis=1).astype(np.int64))

    def encode_rows(self, interactions: pl.DataFrame, users: pl.DataFrame, items: pl.DataFrame) -> np.ndarray:
        return self.encode(self.feature_frame(interactions, users, items))


def _attr_table(table: pl.DataFrame, key: str, cols: list[str], name: str) -> pl.DataFrame:
    exprs = [pl.col(key)]
    for c in cols:
        if c == "item_category" and c not in table.columns:
            if "categories" not in table.columns:
                raise DataError(f"{name}: column 'categories' missing, needed for item_category")
            exprs.append(pl.col("categories").list.first().alias("item_category"))
        elif c not in table.columns:
            raise DataError(f"{name}: column {c!r} missing, needed by the feature spec")
        else:
            exprs.append(pl.col(c).cast(pl.String))
    return table.select(exprs)


def _categorical_columns(table: pl.DataFrame, skip: set[str]) -> list[str]:
    out = []
    for col, dtype in table.schema.items():
        if col in skip:
            continue
        if dtype in (pl.String, pl.Categorical) or (
            dtype.is_integer() and table[col].n_unique() <= MAX_INT_CARDINALITY
        ):
            out.append(col)
    return out


def _fit_vocab(values: pl.Series) -> dict[str, int]:
    uniq = sorted(v for v in values.cast(pl.String).drop_nulls().unique().to_list())
    return {v: i + 1 for i, v in enumerate(uniq)}


def scenario_constant_features(
    spec: FeatureSpec, train: pl.DataFrame, users: pl.DataFrame, items: pl.DataFrame
) -> list[str]:
    """User and item features whose encoded value is the same for every training row of each
    scenario. Only the distinct (scenario, user) and (scenario, item) pairs are needed, so a
    distributed run's main process can pass those instead of the rows. The scenario itself is left
    out (it is the scenario); a dataset with one scenario has none."""
    if train.height == 0 or train["scenario_id"].n_unique() < 2:
        return []
    out: list[str] = []
    for source, key in (("user", "user_id"), ("item", "item_id")):
        names = [f.name for f in spec.features if f.source == source]
        pairs = train.select("scenario_id", key).drop_nulls().unique()
        if not names or pairs.height == 0:
            continue
        other = "item_id" if key == "user_id" else "user_id"
        rows = pairs.with_columns(pl.lit(None, dtype=pl.String).alias(other))
        ids = spec.encode_rows(rows, users, items)
        frame = pl.DataFrame({n: ids[:, spec.index_of(n)] for n in names}).with_columns(
            pairs["scenario_id"].alias("__scenario")
        )
        most = frame.group_by("__scenario").agg(pl.all().n_unique()).select(pl.col(names).max())
        out += [n for n in names if most[n][0] == 1]
    return out


def build_spec(ds: CanonicalDataset, knowledge_dim: int) -> FeatureSpec:
    """Fix the feature order and vocabularies for a dataset.

    Vocabularies come from the dataset's `vocabs.json` when it has the feature (fit on the
    training split by the data builder); otherwise they are fit here on the training split.
    Scenarios always get the full scenarios table so every scenario has an index.
    """
    train = ds.interactions.filter(pl.col("split") == "train")
    if train.height == 0:
        raise DataError("interactions: no rows with split == 'train'; cannot fit vocabularies")
    given = ds.vocabs or {}
    feats: list[SparseFeature] = []
    vocabs: dict[str, dict[str, int]] = {}

    def add(name: str, source: Source, column: str, values: pl.Series) -> None:
        vocab = given.get(name) or given.get(column)
        if not vocab:
            vocab = _fit_vocab(values)
        elif min(vocab.values()) < 1:
            raise DataError(
                f"vocabs.json: feature {name!r} uses index {min(vocab.values())}, expected >= 1 (0 = unknown)"
            )
        vocabs[name] = {str(k): int(v) for k, v in vocab.items()}
        feats.append(
            SparseFeature(name=name, source=source, column=column, vocab_size=max(vocab.values()) + 1)
        )

    add("user_id", "user", "user_id", train["user_id"])
    add("item_id", "item", "item_id", train["item_id"])
    # Scenario vocabulary: the whole scenarios table (sorted), so no scenario is unknown.
    scen_vocab = given.get("scenario_id") or _fit_vocab(ds.scenarios["scenario_id"])
    missing = set(ds.scenarios["scenario_id"].to_list()) - set(scen_vocab)
    if missing:
        raise DataError(f"vocabs.json: scenario_id vocabulary lacks scenarios {sorted(missing)}")
    vocabs["scenario_id"] = {str(k): int(v) for k, v in scen_vocab.items()}
    feats.append(SparseFeature("scenario_id", "context", "scenario_id", max(scen_vocab.values()) + 1))

    train_users = ds.users.join(train.select("user_id").unique(), on="user_id", how="semi")
    for col in _categorical_columns(ds.users, _USER_SKIP):
        add(col, "user", col, train_users[col])
    train_items = ds.items.join(train.select("item_id").unique(), on="item_id", how="semi")
    if "categories" in ds.items.columns and "item_category" not in ds.items.columns:
        add("item_category", "item", "item_category", train_items["categories"].list.first())
    elif "item_category" in ds.items.columns:
        add("item_category", "item", "item_category", train_items["item_category"])
    for col in _categorical_columns(ds.items, _ITEM_SKIP | {"item_category"}):
        name = col if col.startswith("item_") else f"item_{col}"
        if name in vocabs:
            name = f"item_attr_{col}"
        add(name, "item", col, train_items[col])
    spec = FeatureSpec(features=feats, scenario_index=2, knowledge_dim=int(knowledge_dim), vocabs=vocabs)
    spec.scenario_constant = scenario_constant_features(spec, train, ds.users, ds.items)
    log.debug("feature spec: %s", ", ".join(f"{f.name}({f.vocab_size})" for f in feats))
    return spec
