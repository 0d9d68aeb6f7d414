"""Read, validate and atomically write canonical datasets (see `feature_store.schema`)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from feature_store import schema
from llm4msr.atomic import atomic_directory, sha256_file, sha256_text, write_json_atomic
from llm4msr.errors import MissingInputError, UserError
from llm4msr.provenance import provenance

log = logging.getLogger(__name__)


class DataError(UserError, ValueError):
    """Bad input data. The message names the file, the column, the offending value and what was expected."""


@dataclass
class CanonicalDataset:
    interactions: pl.DataFrame
    users: pl.DataFrame
    items: pl.DataFrame
    scenarios: pl.DataFrame
    vocabs: dict[str, dict[str, int]] | None = None
    manifest: dict[str, Any] | None = None

    def tables(self) -> dict[str, pl.DataFrame]:
        return {
            "interactions": self.interactions,
            "users": self.users,
            "items": self.items,
            "scenarios": self.scenarios,
        }

    def version(self) -> str:
        """Content id of the dataset: the hash of its interactions file, which holds the `split`
        column, so two splits of the same source have different ids. Knowledge snapshots record it
        (`dataset_version`) and training refuses a snapshot of another id: its user prompts may
        describe rows that are held out here."""
        return version_of(self.manifest)

    def source_id(self) -> str:
        """Id of where the data comes from and how it is split (source, path, seed, split and
        adapter settings), not of its rows: a rebuild with new interactions keeps it. Serving
        compares it, since fresher knowledge of the same source is what a refresh publishes."""
        return source_id((self.manifest or {}).get("source") or {})

    def build_config(self) -> dict[str, Any] | None:
        """The `data` config the dataset was built with (manifest source.config, without `out`);
        None for datasets written without one (hand-built tables, builds before it was recorded)."""
        cfg = ((self.manifest or {}).get("source") or {}).get("config")
        return dict(cfg) if isinstance(cfg, dict) else None


def read_version(folder: str | Path) -> str:
    """`CanonicalDataset.version()` of a dataset folder from its manifest alone (no table is read)."""
    path = Path(folder) / schema.MANIFEST_FILE
    if not path.is_file():
        raise DataError(f"{folder} is not a canonical dataset: {schema.MANIFEST_FILE} is missing")
    return version_of(json.loads(path.read_text()))


def version_of(manifest: dict[str, Any] | None) -> str:
    """The content id in a dataset manifest: the interactions file's sha256 (16 hex), "unsaved" if none."""
    if manifest is None or "files" not in manifest:
        return "unsaved"
    return str(manifest["files"][schema.INTERACTIONS_FILE]["sha256"][:16])


def source_id(source: dict[str, Any]) -> str:
    """Hash of the settings that pick the source and its split: from the recorded build config
    (dataset, path, seed, split and that dataset's own section), else the manifest's `source`
    block without what is derived from the rows (`features`)."""
    cfg = source.get("config")
    if isinstance(cfg, dict):
        core = {k: cfg.get(k) for k in ("dataset", "path", "seed", "split")}
        core["adapter"] = cfg.get(str(cfg.get("dataset")))
    else:
        core = {k: v for k, v in source.items() if k != "features"}
    return sha256_text(json.dumps(core, sort_keys=True, default=str))[:16]


def validate(ds: CanonicalDataset, source: str = "<memory>") -> None:
    """Check the contract: columns, dtypes, keys, labels, splits, referential integrity."""
    for table, (fname, required) in schema.TABLES.items():
        df = ds.tables()[table]
        where = f"{source}/{fname}"
        for col, dtype in required.items():
            if col not in df.columns:
                raise DataError(f"{where}: missing column {col!r} (have {df.columns})")
            if df.schema[col] != dtype:
                raise DataError(f"{where}: column {col!r} has dtype {df.schema[col]}, expected {dtype}")
        if df.height == 0:
            raise DataError(f"{where}: table is empty")
        for key in schema.KEY_COLUMNS[table]:
            nulls = df[key].null_count()
            if nulls:
                raise DataError(f"{where}: column {key!r} has {nulls} null values")
        if table != "interactions":
            key = schema.KEY_COLUMNS[table][0]
            dup = df.filter(pl.col(key).is_duplicated())[key]
            if dup.len():
                raise DataError(f"{where}: duplicate key {dup[0]!r} in column {key!r} (keys must be unique)")
    inter = ds.interactions
    where = f"{source}/{schema.INTERACTIONS_FILE}"
    bad = inter.filter(~pl.col("label").is_in([0, 1]))
    if bad.height:
        raise DataError(f"{where}: column 'label' has value {bad['label'][0]!r}, expected 0 or 1")
    bad = inter.filter(~pl.col("split").is_in(list(schema.SPLITS)))
    if bad.height:
        raise DataError(
            f"{where}: column 'split' has value {bad['split'][0]!r}, expected one of {schema.SPLITS}"
        )
    for col, table, key in (
        ("scenario_id", ds.scenarios, "scenario_id"),
        ("user_id", ds.users, "user_id"),
        ("item_id", ds.items, "item_id"),
    ):
        unknown = inter.select(pl.col(col).unique()).filter(~pl.col(col).is_in(table[key].implode()))
        if unknown.height:
            raise DataError(
                f"{where}: column {col!r} has value {unknown[col][0]!r} that is not in the {key} table"
            )


def summarize(ds: CanonicalDataset) -> dict[str, Any]:
    per = (
        ds.interactions.group_by("scenario_id")
        .agg(
            rows=pl.len(),
            users=pl.col("user_id").n_unique(),
            items=pl.col("item_id").n_unique(),
            positives=pl.col("label").cast(pl.Int64).sum(),
        )
        .sort("scenario_id")
    )
    splits = ds.interactions.group_by("split").agg(rows=pl.len()).sort("split")
    return {
        "rows": ds.interactions.height,
        "users": ds.users.height,
        "items": ds.items.height,
        "scenarios": ds.scenarios.height,
        "positive_rate": float(ds.interactions["label"].cast(pl.Float64).mean()),
        "per_scenario": per.to_dicts(),
        "per_split": {r["split"]: r["rows"] for r in splits.to_dicts()},
    }


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"rows={summary['rows']:,} users={summary['users']:,} items={summary['items']:,} "
        f"scenarios={summary['scenarios']} positive_rate={summary['positive_rate']:.3f}",
        f"splits: {summary['per_split']}",
        f"{'scenario':<24}{'rows':>12}{'users':>10}{'items':>10}{'positives':>12}",
    ]
    for r in summary["per_scenario"]:
        lines.append(
            f"{r['scenario_id']:<24}{r['rows']:>12,}{r['users']:>10,}{r['items']:>10,}{r['positives']:>12,}"
        )
    return "\n".join(lines)


def write_dataset(
    ds: CanonicalDataset, out: str | Path, *, source: dict[str, Any], overwrite: bool = True
) -> Path:
    """Validate, then write all tables + vocabs + manifest + summary into `out` atomically."""
    out = Path(out)
    validate(ds, source=str(source.get("path") or source.get("dataset", "<memory>")))
    with atomic_directory(out, overwrite=overwrite) as tmp:
        files: dict[str, dict[str, Any]] = {}
        for table, (fname, _) in schema.TABLES.items():
            df = ds.tables()[table]
            df.write_parquet(tmp / fname, compression="zstd", statistics=True)
            files[fname] = {"rows": df.height, "sha256": sha256_file(tmp / fname)}
        if ds.vocabs is not None:
            write_json_atomic(tmp / schema.VOCABS_FILE, ds.vocabs)
            files[schema.VOCABS_FILE] = {"sha256": sha256_file(tmp / schema.VOCABS_FILE)}
        summary = summarize(ds)
        write_json_atomic(tmp / schema.SUMMARY_FILE, summary)
        manifest = {
            "schema_version": schema.SCHEMA_VERSION,
            "source": source,
            "files": files,
            "counts": {t: ds.tables()[t].height for t in schema.TABLES},
            "provenance": provenance("polars", "pyarrow"),
        }
        write_json_atomic(tmp / schema.MANIFEST_FILE, manifest)
        ds.manifest = manifest
    log.info("wrote canonical dataset to %s (%s interactions)", out, f"{ds.interactions.height:,}")
    return out


def load_dataset(path: str | Path, *, verify_checksums: bool = False) -> CanonicalDataset:
    """Load a built dataset folder; errors name the missing file or the checksum that differs."""
    path = Path(path)
    if not path.is_dir():
        raise MissingInputError(f"dataset folder {path} does not exist")
    manifest_path = path / schema.MANIFEST_FILE
    if not manifest_path.is_file():
        raise DataError(f"{path} is not a canonical dataset: {schema.MANIFEST_FILE} is missing")
    manifest = json.loads(manifest_path.read_text())
    if verify_checksums:
        for fname, meta in manifest["files"].items():
            actual = sha256_file(path / fname)
            if actual != meta["sha256"]:
                raise DataError(
                    f"{path / fname}: sha256 {actual[:12]}… differs from manifest {meta['sha256'][:12]}…"
                )
    tables = {t: pl.read_parquet(path / fname) for t, (fname, _) in schema.TABLES.items()}
    vocab_path = path / schema.VOCABS_FILE
    vocabs = json.loads(vocab_path.read_text()) if vocab_path.is_file() else None
    return CanonicalDataset(**tables, vocabs=vocabs, manifest=manifest)
