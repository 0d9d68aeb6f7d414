"""The trivial benchmark baseline: LR on smoothed user/item mean labels + scenario one-hot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.linear_model import LogisticRegression

from feature_store.dataset import load_dataset, write_dataset
from llm4msr.config import EvalConfig
from ranker import metrics as M
from ranker.baseline import (
    BASELINE_VARIANT,
    BaselineConfig,
    _out_of_fold_log_odds,
    baseline_reusable,
    fit_baseline,
    fit_logistic,
    run_baseline,
)
from ranker.report import NO_BACKBONE, find_runs, markdown, slice_report, summarize
from tests.ranker.helpers import make_dataset


def planted(n_users: int = 300, n_items: int = 200, rows: int = 12_000, seed: int = 0) -> pl.DataFrame:
    """Clicks from a user propensity + item popularity + scenario offset; a random 80/20 split."""
    rng = np.random.default_rng(seed)
    a, b, c = rng.normal(0, 1.5, n_users), rng.normal(0, 1.5, n_items), np.array([-0.5, 0.0, 0.7])
    u, i, s = rng.integers(0, n_users, rows), rng.integers(0, n_items, rows), rng.integers(0, 3, rows)
    y = (rng.random(rows) < 1 / (1 + np.exp(-(a[u] + b[i] + c[s])))).astype(np.int8)
    return pl.DataFrame(
        {
            "user_id": [f"u{x}" for x in u],
            "item_id": [f"i{x}" for x in i],
            "scenario_id": [f"s{x}" for x in s],
            "label": y,
            "split": np.where(rng.random(rows) < 0.8, "train", "test"),
        }
    )


def test_recovers_a_planted_signal_better_than_chance():
    rows = planted()
    train, test = rows.filter(pl.col("split") == "train"), rows.filter(pl.col("split") == "test")
    model = fit_baseline(train, ["s0", "s1", "s2"])
    auc = M.auc(test["label"].to_numpy(), model.predict(test))
    assert auc > 0.75, auc  # 0.84 here; the true logits reach 0.87, chance 0.5
    w = dict(zip(model.feature_names, model.weights, strict=True))
    assert w["user_mean_logit"] > 0.3 and w["item_mean_logit"] > 0.3
    assert w["scenario=s2"] > w["scenario=s0"]  # the planted scenario offsets, in order
    # deterministic: same seed, same weights; fold assignment is the only seeded part
    np.testing.assert_array_equal(model.weights, fit_baseline(train, ["s0", "s1", "s2"]).weights)


def test_newton_fit_equals_sklearn_logistic_regression():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 4))
    y = (rng.random(500) < 1 / (1 + np.exp(-(x @ [1.0, -2.0, 0.5, 0.0])))).astype(float)
    l2 = 1e-2
    w, steps = fit_logistic(x, y, l2=l2, max_iter=50, tol=1e-12)
    ref = LogisticRegression(C=1 / (l2 * len(y)), fit_intercept=False, tol=1e-12, max_iter=1000).fit(x, y)
    np.testing.assert_allclose(w, ref.coef_[0], atol=1e-6)
    assert steps < 20


def test_fitting_rows_never_see_their_own_label():
    # one user, one row per fold: out of fold it has no other rows, so its feature is the prior
    train = pl.DataFrame({"user_id": ["a", "b", "b"], "label": [1, 1, 0]})
    fold = np.array([0, 0, 1])
    g = 2 / 3
    got = _out_of_fold_log_odds(train, "user_id", fold, prior=g, alpha=10.0)
    prior = np.log(g / (1 - g))
    assert got[0] == pytest.approx(prior)
    # b's rows see each other's label only: row 1 sees the 0, row 2 sees the 1
    p_other0, p_other1 = (0 + 10 * g) / 11, (1 + 10 * g) / 11
    assert got[1] == pytest.approx(np.log(p_other0 / (1 - p_other0)))
    assert got[2] == pytest.approx(np.log(p_other1 / (1 - p_other1)))


def _with_heldout_labels_flipped(src: Path, out: Path) -> Path:
    ds = load_dataset(src)
    inter = ds.interactions.with_columns(
        label=pl.when(pl.col("split") == "train")
        .then(pl.col("label"))
        .otherwise(1 - pl.col("label"))
        .cast(pl.Int8)
    )
    ds.interactions = inter
    write_dataset(ds, out, source={"dataset": "ranker-test", "seed": 0})
    return out


def test_uses_train_rows_only_and_is_evaluated_like_a_trained_run(tmp_path):
    data, _ = make_dataset(tmp_path / "data")
    flipped = _with_heldout_labels_flipped(data, tmp_path / "flipped")
    ev = EvalConfig(n_negatives=10)
    a = run_baseline(data, ev, tmp_path / "runs" / "baseline")
    b = run_baseline(flipped, ev, tmp_path / "flipped_runs" / "baseline")
    pa, pb = (pl.read_parquet(r.run_dir / "predictions.parquet") for r in (a, b))
    ta, tb = (p.filter(pl.col("source") == "test") for p in (pa, pb))
    assert (ta["label"] != tb["label"]).all()  # the held-out labels really differ ...
    np.testing.assert_array_equal(ta["score"].to_numpy(), tb["score"].to_numpy())  # ... and nothing moved
    np.testing.assert_array_equal(a.model.weights, b.model.weights)
    # the same test rows as a trained run, plus the seeded sampled candidates, through M.evaluate
    test_rows = load_dataset(data).interactions.filter(pl.col("split") == "test")
    assert ta.height == test_rows.height and (pa["source"] == "sampled").sum() > 0
    metrics = json.loads((a.run_dir / "metrics.json").read_text())["final"]
    assert metrics["overall"]["auc"] == pytest.approx(M.evaluate(pa, ev.k)["overall"]["auc"])
    assert baseline_reusable(a.run_dir, data, ev, BaselineConfig())
    assert not baseline_reusable(a.run_dir, data, EvalConfig(n_negatives=11), BaselineConfig())
    assert not baseline_reusable(a.run_dir, flipped, ev, BaselineConfig())  # other dataset id
    # the report shows it as a variant of its own, first in its dataset
    summary = summarize(find_runs([tmp_path / "runs"]))
    assert [(g["backbone"], g["variant"]) for g in summary] == [(NO_BACKBONE, BASELINE_VARIANT)]
    assert f"| {NO_BACKBONE} | {BASELINE_VARIANT} | **overall** |" in markdown(summary, "t")


def test_slices_of_a_run_whose_dataset_is_gone_are_skipped_with_a_note(tmp_path):
    data, _ = make_dataset(tmp_path / "data")
    run = run_baseline(data, EvalConfig(n_negatives=5), tmp_path / "runs" / "baseline").run_dir
    info = json.loads((run / "run.json").read_text())
    info["dataset"]["path"] = str(tmp_path / "gone")
    (run / "run.json").write_text(json.dumps(info))
    report = slice_report(find_runs([tmp_path / "runs"]))
    assert report.rows == [] and len(report.skipped) == 1 and "does not exist" in report.skipped[0]
