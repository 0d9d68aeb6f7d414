"""AUC on slices of the test rows where LLM knowledge should matter.

Why: LLM4MSR's claim is that knowledge of a user's history in *other* scenarios (and of the
scenario itself) helps where the id embeddings have little to go on. An overall AUC averages
that away; these slices show it:

- `history`: the user's number of **train** interactions in the row's scenario, bucketed
  `0`, `1-4`, `5-19`, `20+` (0 = cold start in that scenario).
- `scenarios`: the number of scenarios the user has train interactions in: `0` (no train rows),
  `1` (single-scenario user), `2+` (multi-scenario user, the case cross-scenario knowledge is for).

Computed from a run's `predictions.parquet` (test rows only, `source == "test"`) and the
dataset's train split; AUC is `ranker.metrics.auc` (NaN for a slice with one class or no rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from feature_store.dataset import DataError, load_dataset
from llm4msr.errors import MissingInputError
from ranker import metrics as M
from ranker.model_io import PREDICTIONS_FILE

# (label, lowest, highest inclusive or None) of the history buckets
HISTORY_BUCKETS: tuple[tuple[str, int, int | None], ...] = (
    ("0", 0, 0),
    ("1-4", 1, 4),
    ("5-19", 5, 19),
    ("20+", 20, None),
)
SCENARIO_GROUPS: tuple[str, ...] = ("0", "1", "2+")
HISTORY = "history"
SCENARIOS = "scenarios"
FAMILIES: dict[str, str] = {
    HISTORY: "user's train interactions in the row's scenario",
    SCENARIOS: "scenarios the user has train interactions in",
}


@dataclass(frozen=True)
class SliceAuc:
    """AUC of one run on one slice of its test rows."""

    family: str  # HISTORY | SCENARIOS
    name: str  # bucket label
    rows: int
    positives: int
    auc: float  # NaN: no rows or a single class


def history_bucket(n: int) -> str:
    """Bucket label of a train-history length (0, 1-4, 5-19, 20+)."""
    if n < 0:
        raise ValueError(f"history length must be >= 0, got {n}")
    for label, lo, hi in HISTORY_BUCKETS:
        if n >= lo and (hi is None or n <= hi):
            return label
    raise AssertionError("unreachable: the buckets cover every n >= 0")


def scenario_group(n: int) -> str:
    """Label of a user's number of train scenarios (0, 1, 2+)."""
    if n < 0:
        raise ValueError(f"number of scenarios must be >= 0, got {n}")
    return "2+" if n >= 2 else str(n)


def _bucket_expr(column: str) -> pl.Expr:
    expr = pl.lit(HISTORY_BUCKETS[-1][0])
    for label, lo, hi in reversed(HISTORY_BUCKETS[:-1]):
        assert hi is not None
        expr = pl.when(pl.col(column).is_between(lo, hi)).then(pl.lit(label)).otherwise(expr)
    return expr


def label_slices(test: pl.DataFrame, train: pl.DataFrame) -> pl.DataFrame:
    """`test` with `history` (train rows of the user in the row's scenario), `history_bucket`,
    `user_scenarios` (scenarios with train rows of the user) and `scenario_group` added."""
    hist = train.group_by("user_id", "scenario_id").agg(history=pl.len().cast(pl.Int64))
    n_scen = train.group_by("user_id").agg(user_scenarios=pl.col("scenario_id").n_unique().cast(pl.Int64))
    out = (
        test.join(hist, on=["user_id", "scenario_id"], how="left", maintain_order="left")
        .join(n_scen, on="user_id", how="left", maintain_order="left")
        .with_columns(pl.col("history").fill_null(0), pl.col("user_scenarios").fill_null(0))
    )
    return out.with_columns(
        history_bucket=_bucket_expr("history"),
        scenario_group=pl.when(pl.col("user_scenarios") >= 2)
        .then(pl.lit("2+"))
        .otherwise(pl.col("user_scenarios").cast(pl.String)),
    )


def slice_aucs(pred: pl.DataFrame, train: pl.DataFrame) -> list[SliceAuc]:
    """AUC per slice (every defined slice, empty ones included) of the test rows of a dump."""
    missing = {"user_id", "scenario_id", "label", "score", "source"} - set(pred.columns)
    if missing:
        raise ValueError(f"prediction dump: missing column(s) {sorted(missing)} (have {pred.columns})")
    test = pred.filter(pl.col("source") == "test").select("user_id", "scenario_id", "label", "score")
    labelled = label_slices(test, train.select("user_id", "scenario_id"))
    out = []
    for family, column, names in (
        (HISTORY, "history_bucket", [b[0] for b in HISTORY_BUCKETS]),
        (SCENARIOS, "scenario_group", list(SCENARIO_GROUPS)),
    ):
        for name in names:
            part = labelled.filter(pl.col(column) == name)
            y = part["label"].to_numpy()
            value = M.auc(y, part["score"].to_numpy()) if part.height else float("nan")
            out.append(SliceAuc(family, name, part.height, int(np.sum(y)), value))
    return out


def train_rows(data_dir: str | Path, expected_version: str | None = None) -> pl.DataFrame:
    """(user_id, scenario_id) of the train split of a dataset; with `expected_version`, refuses a
    dataset folder rebuilt since the run (its train split may differ from the one trained on)."""
    ds = load_dataset(data_dir)
    if expected_version is not None and ds.version() != expected_version:
        raise DataError(
            f"{data_dir}: dataset id {ds.version()} is not the one the run was trained on "
            f"({expected_version}); slices need the run's own train split"
        )
    return ds.interactions.filter(pl.col("split") == "train").select("user_id", "scenario_id")


def run_slice_aucs(run_dir: str | Path, train: pl.DataFrame) -> list[SliceAuc]:
    """`slice_aucs` of one run folder's prediction dump (its test rows only are read)."""
    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.is_file():
        raise MissingInputError(f"{run_dir}: {PREDICTIONS_FILE} is missing (needed for slices)")
    pred = (
        pl.scan_parquet(path)
        .filter(pl.col("source") == "test")
        .select("user_id", "scenario_id", "label", "score", "source")
        .collect()
    )
    return slice_aucs(pred, train)
