"""Knowledge slices: history length in the row's scenario, multi- vs single-scenario users."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from ranker import metrics as M
from ranker.slices import HISTORY, SCENARIOS, history_bucket, label_slices, scenario_group, slice_aucs


@pytest.mark.parametrize(
    ("n", "bucket"), [(0, "0"), (1, "1-4"), (4, "1-4"), (5, "5-19"), (19, "5-19"), (20, "20+"), (999, "20+")]
)
def test_history_bucket_edges(n, bucket):
    assert history_bucket(n) == bucket


def test_scenario_group_and_bad_input():
    assert [scenario_group(n) for n in (0, 1, 2, 5)] == ["0", "1", "2+", "2+"]
    with pytest.raises(ValueError):
        history_bucket(-1)


def _train(counts: dict[tuple[str, str], int]) -> pl.DataFrame:
    rows = [(u, s) for (u, s), n in counts.items() for _ in range(n)]
    return pl.DataFrame(rows, schema={"user_id": pl.String, "scenario_id": pl.String}, orient="row")


def test_label_slices_counts_train_rows_in_the_rows_own_scenario():
    # a: 25 rows in x, 3 in y (multi-scenario); b: 7 in x only; c: no train rows
    train = _train({("a", "x"): 25, ("a", "y"): 3, ("b", "x"): 7})
    test = pl.DataFrame(
        {
            "user_id": ["a", "a", "a", "b", "b", "c"],
            "scenario_id": ["x", "y", "z", "x", "y", "x"],
            "label": [1, 0, 1, 0, 1, 0],
            "score": [0.9, 0.1, 0.8, 0.3, 0.6, 0.2],
        }
    )
    out = label_slices(test, train)
    assert out["history"].to_list() == [25, 3, 0, 7, 0, 0]
    assert out["history_bucket"].to_list() == ["20+", "1-4", "0", "5-19", "0", "0"]
    assert out["user_scenarios"].to_list() == [2, 2, 2, 1, 1, 0]
    assert out["scenario_group"].to_list() == ["2+", "2+", "2+", "1", "1", "0"]
    assert out.select("user_id", "scenario_id", "label", "score").equals(test)  # rows and order kept


def test_slice_aucs_per_slice_with_single_class_as_nan():
    train = _train({("a", "x"): 25, ("a", "y"): 3, ("b", "x"): 7})
    pred = pl.DataFrame(
        {
            "user_id": ["a", "a", "b", "b", "c", "c", "a"],
            "scenario_id": ["z", "y", "y", "x", "x", "x", "z"],
            "label": [1, 0, 1, 0, 0, 1, 0],
            "score": [0.9, 0.1, 0.2, 0.3, 0.6, 0.5, 0.4],
            "source": ["test"] * 6 + ["sampled"],  # sampled candidates are ignored
        }
    )
    got = {(s.family, s.name): s for s in slice_aucs(pred, train)}
    assert set(got) == {(HISTORY, b) for b in ("0", "1-4", "5-19", "20+")} | {
        (SCENARIOS, g) for g in ("0", "1", "2+")
    }
    h0 = got[(HISTORY, "0")]  # a/z (1, .9), b/y (1, .2), c/x (0, .6), c/x (1, .5)
    assert (h0.rows, h0.positives) == (4, 3)
    assert h0.auc == pytest.approx(M.auc(np.array([1, 1, 0, 1]), np.array([0.9, 0.2, 0.6, 0.5])))
    assert got[(HISTORY, "1-4")].rows == 1 and math.isnan(got[(HISTORY, "1-4")].auc)  # one class
    assert got[(HISTORY, "20+")].rows == 0 and math.isnan(got[(HISTORY, "20+")].auc)  # no rows
    multi = got[(SCENARIOS, "2+")]  # a/z (1, .9), a/y (0, .1)
    assert (multi.rows, multi.auc) == (2, 1.0)
    single = got[(SCENARIOS, "1")]  # b/y (1, .2), b/x (0, .3)
    assert single.auc == 0.0
