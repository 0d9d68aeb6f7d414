"""Evaluation metrics, per scenario and overall, all from ONE prediction dump.

The dump (`predictions.parquet`) has one row per scored (user, item, scenario): the test split
(`source == "test"`, with its real label) plus, for top-K metrics, sampled negatives
(`source == "sampled"`, label 0) drawn from the same scenario. Pointwise metrics (AUC, gAUC,
Logloss) use the test rows only; Recall@K / NDCG@K rank each (user, scenario)'s held-out test
positives among that group's sampled negatives. Ties are broken pessimistically (a positive
tied with a negative ranks below it), so a constant model never looks good.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import polars as pl

EPS = 1e-7


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC via the rank-sum (Mann-Whitney) statistic with average ranks for ties; NaN if one class."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # average rank (1-based) over runs of equal scores
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(labels: np.ndarray, scores: np.ndarray) -> float:
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(scores, dtype=np.float64), EPS, 1 - EPS)
    if y.size == 0:
        return float("nan")
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> tuple[float, int, int]:
    """Impression-weighted mean of per-user AUC -> (gAUC, users used, users skipped for having one class)."""
    frame = pl.DataFrame(
        {
            "u": np.asarray(users),
            "y": np.asarray(labels).astype(np.int8),
            "s": np.asarray(scores, dtype=np.float64),
        }
    )
    total, weight, used, skipped = 0.0, 0, 0, 0
    for _, part in frame.group_by("u", maintain_order=True):
        y = part["y"].to_numpy()
        if y.min() == y.max():
            skipped += 1
            continue
        total += auc(y, part["s"].to_numpy()) * len(y)
        weight += len(y)
        used += 1
    return (total / weight if weight else float("nan")), used, skipped


def topk(pos_scores: np.ndarray, neg_scores: np.ndarray, k: int) -> tuple[float, float]:
    """(Recall@k, NDCG@k) of one group: positives ranked among negatives (pessimistic ties)."""
    pos = np.sort(np.asarray(pos_scores, dtype=np.float64))[::-1]
    neg = np.asarray(neg_scores, dtype=np.float64)
    if pos.size == 0:
        return float("nan"), float("nan")
    # 0-based rank of each positive: negatives scoring >= it, plus positives strictly above it.
    ranks = np.array([(neg >= s).sum() + i for i, s in enumerate(pos)])
    hits = ranks < k
    recall = hits.sum() / min(pos.size, k)
    dcg = (1.0 / np.log2(ranks[hits] + 2)).sum()
    idcg = (1.0 / np.log2(np.arange(min(pos.size, k)) + 2)).sum()
    return float(recall), float(dcg / idcg)


def _topk_frame(pred: pl.DataFrame, k: int) -> tuple[float, float, int]:
    test_pos = pred.filter((pl.col("source") == "test") & (pl.col("label") == 1))
    negs = pred.filter(pl.col("source") == "sampled")
    if test_pos.height == 0 or negs.height == 0:
        return float("nan"), float("nan"), 0
    neg_groups = {key: part["score"].to_numpy() for key, part in negs.group_by(["user_id", "scenario_id"])}
    recalls, ndcgs = [], []
    for key, part in test_pos.group_by(["user_id", "scenario_id"], maintain_order=True):
        neg = neg_groups.get(key)
        if neg is None:
            continue
        r, n = topk(part["score"].to_numpy(), neg, k)
        recalls.append(r)
        ndcgs.append(n)
    if not recalls:
        return float("nan"), float("nan"), 0
    return float(np.mean(recalls)), float(np.mean(ndcgs)), len(recalls)


def metrics_of(pred: pl.DataFrame, k: int = 10) -> dict[str, Any]:
    """All metrics for one slice of a prediction dump."""
    test = pred.filter(pl.col("source") == "test")
    y = test["label"].to_numpy()
    s = test["score"].to_numpy()
    g, used, skipped = gauc(test["user_id"].to_numpy(), y, s)
    rec, ndcg, groups = _topk_frame(pred, k)
    return {
        "rows": int(test.height),
        "positives": int(y.sum()) if y.size else 0,
        "auc": auc(y, s),
        "gauc": g,
        "gauc_users": used,
        "gauc_users_skipped": skipped,
        "logloss": logloss(y, s),
        f"recall@{k}": rec,
        f"ndcg@{k}": ndcg,
        "topk_groups": groups,
    }


def evaluate(pred: pl.DataFrame, k: int = 10) -> dict[str, Any]:
    """{"overall": metrics, "per_scenario": {scenario_id: metrics}} from one prediction dump."""
    required = {"user_id", "item_id", "scenario_id", "label", "score", "source"}
    missing = required - set(pred.columns)
    if missing:
        raise ValueError(f"prediction dump: missing column(s) {sorted(missing)} (have {pred.columns})")
    per = {}
    for scen in sorted(pred["scenario_id"].unique().to_list()):
        per[scen] = metrics_of(pred.filter(pl.col("scenario_id") == scen), k)
    return {"k": k, "overall": metrics_of(pred, k), "per_scenario": per}


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean and sample standard deviation (ddof=1; 0 for one value) ignoring NaN; (nan, nan, 0) if none."""
    v = np.array(
        [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], dtype=float
    )
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def aggregate(results: list[dict[str, Any]], keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Mean ± std over seeds of `evaluate` outputs: {"overall": {metric: (mean, std, n)}, "per_scenario": ...}."""
    if not results:
        raise ValueError("aggregate: no results to aggregate")
    k = results[0]["k"]
    keys = keys or ("auc", "gauc", "logloss", f"recall@{k}", f"ndcg@{k}")
    out: dict[str, Any] = {"k": k, "n_runs": len(results), "overall": {}, "per_scenario": {}}
    for key in keys:
        out["overall"][key] = mean_std(r["overall"][key] for r in results)
    scenarios = sorted({s for r in results for s in r["per_scenario"]})
    for scen in scenarios:
        out["per_scenario"][scen] = {
            key: mean_std(r["per_scenario"][scen][key] for r in results if scen in r["per_scenario"])
            for key in keys
        }
    return out
