"""Build a canonical dataset: adapter -> split -> users.train_cutoff -> vocabularies -> validate.

`build_dataset(cfg)` returns it in memory; `build_and_write(cfg, out)` also writes it atomically
(nothing appears at `out` unless the whole build succeeded).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import polars as pl

from feature_store import schema
from feature_store.adapters import ADAPTERS, RawData, get_adapter
from feature_store.dataset import CanonicalDataset, DataError, validate, write_dataset
from feature_store.splits import assign_splits, train_cutoffs
from feature_store.vocab import feature_tables, fit_vocabs
from llm4msr.config import DataConfig

log = logging.getLogger(__name__)


def _conform(raw: RawData, source: str) -> RawData:
    """Check the adapter's tables against the contract (minus split/cutoff) and cast exact dtypes."""
    required = {
        "interactions": {k: v for k, v in schema.INTERACTIONS_SCHEMA.items() if k != "split"},
        "users": {"user_id": pl.String()},
        "items": schema.ITEMS_SCHEMA,
        "scenarios": schema.SCENARIOS_SCHEMA,
    }
    out = {}
    for table, cols in required.items():
        df: pl.DataFrame = getattr(raw, table)
        for col, dtype in cols.items():
            if col not in df.columns:
                raise DataError(f"{source}: {table} table is missing column {col!r} (have {df.columns})")
            if df.schema[col] != dtype:
                try:
                    df = df.with_columns(pl.col(col).cast(dtype, strict=True))
                except pl.exceptions.PolarsError as exc:
                    raise DataError(
                        f"{source}: {table} column {col!r} has dtype {df.schema[col]} and cannot be read as {dtype}: {exc}"
                    ) from exc
        if df.height == 0:
            raise DataError(f"{source}: {table} table is empty")
        out[table] = df
    return RawData(**out, has_timestamps=raw.has_timestamps, params=raw.params)


def build_dataset(cfg: DataConfig, *, check: bool = True) -> CanonicalDataset:
    """Load the configured source, split it, record cutoffs and fit vocabularies (validated, not written).

    check=False skips the final contract validation (write_dataset validates anyway).
    """
    if cfg.dataset == "synthetic" and cfg.path:
        raise DataError(
            f"data.path is {cfg.path!r} but data.dataset is 'synthetic', which generates its data and reads "
            "no files; name the source with --dataset (data.dataset): one of "
            f"{sorted(n for n in ADAPTERS if n != 'synthetic')}"
        )
    t0 = time.perf_counter()
    raw = get_adapter(cfg.dataset).load(cfg)
    log.debug("loaded %s in %.1fs", cfg.dataset, time.perf_counter() - t0)
    return build_from_raw(cfg, raw, check=check)


def build_from_raw(cfg: DataConfig, raw: RawData, *, check: bool = True) -> CanonicalDataset:
    """The steps after the adapter: conform dtypes, split, users.train_cutoff, vocabularies, validate."""
    t0 = time.perf_counter()
    source = str(cfg.path) if cfg.path else cfg.dataset
    raw = _conform(raw, source)
    inter = assign_splits(raw.interactions, cfg.split, seed=cfg.seed, has_timestamps=raw.has_timestamps)
    inter = inter.select(list(schema.INTERACTIONS_SCHEMA))
    users = raw.users.drop("train_cutoff", strict=False)
    users = users.join(train_cutoffs(inter), on="user_id", how="left")
    users = users.select(
        ["user_id", "train_cutoff", *[c for c in users.columns if c not in ("user_id", "train_cutoff")]]
    )
    items = raw.items.select(
        [*schema.ITEMS_SCHEMA, *[c for c in raw.items.columns if c not in schema.ITEMS_SCHEMA]]
    )
    vocabs = fit_vocabs(inter, users, raw.items)
    manifest_source = {
        **raw.params,
        "dataset": cfg.dataset,
        "path": str(cfg.path) if cfg.path else None,
        "seed": cfg.seed,
        "split": cfg.split.model_dump(),
        "split_strategy_used": cfg.split.strategy if raw.has_timestamps else "random",
        "features": feature_tables(vocabs, users, items),
        # The whole data section (not `out`: the folder is wherever it was written), so a run can
        # record the data it trained on instead of its own config's defaults.
        "config": cfg.model_dump(mode="json", exclude={"out"}),
    }
    ds = CanonicalDataset(
        interactions=inter,
        users=users,
        items=items,
        scenarios=raw.scenarios,
        vocabs=vocabs,
        manifest={"source": manifest_source},
    )
    if check:
        validate(ds, source=source)
    log.debug(
        "built %s: %s interactions (split, cutoffs, vocabularies) in %.1fs",
        cfg.dataset,
        f"{inter.height:,}",
        time.perf_counter() - t0,
    )
    return ds


def build_and_write(cfg: DataConfig, out: str | Path | None = None) -> Path:
    """Build and write the dataset atomically into `out` (default: cfg.out); returns the folder."""
    ds = build_dataset(cfg, check=False)
    target = Path(out if out is not None else cfg.out)
    assert ds.manifest is not None
    return write_dataset(ds, target, source=ds.manifest["source"])


def recorded_data_config(ds: CanonicalDataset, folder: str | Path) -> DataConfig | None:
    """The data config `ds` was built with, `out` set to the folder it was read from; None when its
    manifest records none (hand-built tables, older builds) or the recorded one no longer validates.

    A run's resolved config takes its `data` section from here, not from its own (default) settings.
    """
    recorded = ds.build_config()
    if recorded is None:
        return None
    try:
        return DataConfig.model_validate({**recorded, "out": str(folder)})
    except ValueError as exc:
        log.warning("%s/manifest.json: source.config is not a valid data config (%s); not used", folder, exc)
        return None
