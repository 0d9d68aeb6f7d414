"""ΔAUC vs plain: Welch SE, the "never worse" / "beats by > 2 SE" verdicts, the report and plot."""

from __future__ import annotations

import math

import pytest

from ranker.baseline import BASELINE_VARIANT
from ranker.metrics import mean_diff, mean_std
from ranker.report import LLM, NO_BACKBONE, PLAIN, deltas, markdown, plot, verdicts


def test_mean_diff_is_the_welch_se_of_the_difference_of_means():
    plain, llm = [0.70, 0.71, 0.72], [0.73, 0.75, 0.74, 0.76]
    d = mean_diff(mean_std(plain), mean_std(llm))
    assert d.delta == pytest.approx(sum(llm) / 4 - sum(plain) / 3)
    var_p = sum((x - 0.71) ** 2 for x in plain) / 2
    var_l = sum((x - 0.745) ** 2 for x in llm) / 3
    assert d.se == pytest.approx(math.sqrt(var_p / 3 + var_l / 4))
    assert d.spread == pytest.approx(max(math.sqrt(var_p), math.sqrt(var_l)))
    assert (d.n_a, d.n_b) == (3, 4) and d.beats_by_se() is True and d.worse_by_spread() is False


def test_verdicts_need_two_seeds_and_follow_their_thresholds():
    one_seed = mean_diff((0.70, 0.0, 1), (0.60, 0.0, 1))
    assert math.isnan(one_seed.se) and one_seed.worse_by_spread() is None and one_seed.beats_by_se() is None
    # worse by more than one std (spread 0.01): -0.011 yes, -0.009 no
    assert mean_diff((0.70, 0.01, 3), (0.689, 0.005, 3)).worse_by_spread() is True
    assert mean_diff((0.70, 0.01, 3), (0.691, 0.005, 3)).worse_by_spread() is False
    # beats by > 2 SE: SE = sqrt(2 * 0.01² / 3) = 0.00816
    assert mean_diff((0.70, 0.01, 3), (0.717, 0.01, 3)).beats_by_se() is True
    assert mean_diff((0.70, 0.01, 3), (0.715, 0.01, 3)).beats_by_se() is False
    assert math.isnan(mean_diff((math.nan, math.nan, 0), (0.7, 0.0, 3)).delta)


def _group(backbone: str, variant: str, aucs: dict[str, tuple[float, float, int]]) -> dict:
    n = aucs["overall"][2]
    metric = {key: (0.5, 0.0, n) for key in ("gauc", "logloss", "recall@10", "ndcg@10")}
    return {
        "dataset": "toy (abcd1234)",
        "backbone": backbone,
        "variant": variant,
        "seeds": list(range(n)),
        "metrics": {
            "k": 10,
            "overall": {"auc": aucs["overall"], **metric},
            "per_scenario": {s: {"auc": v, **metric} for s, v in aucs.items() if s != "overall"},
        },
        "epoch_seconds": (1.0, 0.1, n),
        "parameters": 10,
        "fallback_users": None,
    }


SUMMARY = [
    _group(
        NO_BACKBONE, BASELINE_VARIANT, {"a": (0.60, 0.0, 1), "b": (0.61, 0.0, 1), "overall": (0.605, 0.0, 1)}
    ),
    _group("star", PLAIN, {"a": (0.70, 0.01, 3), "b": (0.72, 0.002, 3), "overall": (0.71, 0.002, 3)}),
    _group("star", LLM, {"a": (0.71, 0.01, 3), "b": (0.70, 0.002, 3), "overall": (0.73, 0.002, 3)}),
]


def test_delta_rows_verdicts_and_report_columns():
    rows = deltas(SUMMARY)
    assert [(d.backbone, d.scenario) for d in rows] == [("star", "a"), ("star", "b"), ("star", "overall")]
    b = rows[1]
    assert b.diff.delta == pytest.approx(-0.02) and b.diff.worse_by_spread() is True
    assert b.baseline == pytest.approx(0.61)
    (v,) = verdicts(rows)
    assert v.worse_scenarios == ["b"] and v.beats_overall is True
    md = markdown(SUMMARY, "toy")
    assert (
        "| toy (abcd1234) | star | +LLM4MSR | b | 0.7200 ± 0.0020 | 0.7000 ± 0.0020 | -0.0200 ± 0.0016 |"
        in md
    )
    assert "| +0.1100 |" in md  # plain − baseline in scenario b
    assert "| toy (abcd1234) | star | +LLM4MSR | no (b) | +0.0200 ± 0.0016 | **yes** |" in md
    assert f"| toy (abcd1234) | {NO_BACKBONE} | {BASELINE_VARIANT} | **overall** |" in md


def test_delta_plot_renders_with_and_without_standard_errors():
    assert plot(SUMMARY)[:4] == b"\x89PNG"
    single = [
        _group("star", PLAIN, {"a": (0.7, 0.0, 1), "overall": (0.7, 0.0, 1)}),
        _group("star", LLM, {"a": (0.71, 0.0, 1), "overall": (0.71, 0.0, 1)}),
    ]
    assert plot(single)[:4] == b"\x89PNG"
    md = markdown(single, "one seed")
    assert "n/a (< 2 seeds)" in md and "| +0.0100 |" in md
    assert plot(single[:1])[:4] == b"\x89PNG"  # nothing to compare: the per-scenario AUC bars


def test_never_worse_counts_the_overall_row_too():
    worse_overall = [
        SUMMARY[1],
        _group("star", LLM, {"a": (0.70, 0.01, 3), "b": (0.72, 0.002, 3), "overall": (0.70, 0.002, 3)}),
    ]
    (v,) = verdicts(deltas(worse_overall))
    assert v.worse_scenarios == ["overall"] and v.beats_overall is False
    assert "| no (overall) |" in markdown(worse_overall, "toy")
