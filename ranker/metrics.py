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
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

EPS = 1e-7


def midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of `x` with ties given their average rank (one stable sort)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    _, first, counts = np.unique(x[order], return_index=True, return_counts=True)
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return ranks


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC via the rank-sum (Mann-Whitney) statistic with average ranks for ties; NaN if one class.

    The project's one AUC (selection's DeLong test shares `midranks`; gAUC is its per-user form)."""
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((midranks(scores)[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(labels: np.ndarray, scores: np.ndarray) -> float:
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(scores, dtype=np.float64), EPS, 1 - EPS)
    if y.size == 0:
        return float("nan")
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> tuple[float, int, int]:
    """Impression-weighted mean of per-user AUC -> (gAUC, users used, users skipped for having one class)."""
    # every user's AUC at once: one sort by (user, score), average ranks over tied runs
    u = np.unique(np.asarray(users), return_inverse=True)[1].reshape(-1).astype(np.int64)
    y = np.asarray(labels).astype(np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if u.size == 0:
        return float("nan"), 0, 0
    order = np.lexsort((s, u))
    u, y, s = u[order], y[order], s[order]
    new_user = np.r_[True, u[1:] != u[:-1]]
    new_run = new_user | np.r_[True, s[1:] != s[:-1]]
    idx = np.arange(u.size)
    user_start = np.maximum.accumulate(np.where(new_user, idx, 0))
    run_id = np.cumsum(new_run) - 1
    run_first = idx[new_run] - user_start[new_run]  # 0-based position of each run in its user
    run_len = np.diff(np.r_[idx[new_run], u.size])
    rank = (run_first + (run_len + 1) / 2.0)[run_id]  # 1-based average rank within the user
    user_id = np.cumsum(new_user) - 1
    n = np.bincount(user_id)
    n_pos = np.bincount(user_id, weights=y).astype(np.int64)
    rank_pos = np.bincount(user_id, weights=rank * y)
    mixed = (n_pos > 0) & (n_pos < n)
    if not mixed.any():
        return float("nan"), 0, int(n.size)
    n_neg = n - n_pos
    per_user = (rank_pos[mixed] - n_pos[mixed] * (n_pos[mixed] + 1) / 2.0) / (n_pos[mixed] * n_neg[mixed])
    g = float((per_user * n[mixed]).sum() / n[mixed].sum())
    return g, int(mixed.sum()), int(n.size - mixed.sum())


def _topk_frame(pred: pl.DataFrame, k: int) -> tuple[float, float, int]:
    """(Recall@k, NDCG@k) of every (user, scenario) group at once: its positives ranked among its
    negatives, ties pessimistic (one sort; tests/ranker/test_metrics.py checks it against a per-group loop)."""
    test_pos = pred.filter((pl.col("source") == "test") & (pl.col("label") == 1))
    negs = pred.filter(pl.col("source") == "sampled")
    if test_pos.height == 0 or negs.height == 0:
        return float("nan"), float("nan"), 0
    keys = ["user_id", "scenario_id"]
    groups = (
        negs.select(keys).unique(maintain_order=True).with_row_index("g")
    )  # deterministic order  # groups that have negatives
    pos = test_pos.join(groups, on=keys, how="inner", maintain_order="left")
    if pos.height == 0:
        return float("nan"), float("nan"), 0
    neg = negs.join(groups, on=keys, how="inner", maintain_order="left")
    group = np.concatenate([neg["g"].to_numpy(), pos["g"].to_numpy()]).astype(np.int64)
    score = np.concatenate([neg["score"].to_numpy(), pos["score"].to_numpy()]).astype(np.float64)
    is_pos = np.concatenate([np.zeros(neg.height, np.int64), np.ones(pos.height, np.int64)])
    # within a group: score descending, a negative before a positive it ties with (pessimistic)
    order = np.lexsort((is_pos, -score, group))
    g, p = group[order], is_pos[order]
    first = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    start = np.repeat(first, np.diff(np.r_[first, g.size]))  # sorted position where each group starts
    rank = np.arange(g.size) - start  # rows of the group ranked above: negatives >= s, positives above
    hit_rank = rank[p == 1]
    pos_group = g[p == 1]
    n_groups = int(groups.height)
    n_pos = np.bincount(pos_group, minlength=n_groups)
    hits = hit_rank < k
    recall_num = np.bincount(pos_group, weights=hits.astype(np.float64), minlength=n_groups)
    dcg = np.bincount(pos_group[hits], weights=1.0 / np.log2(hit_rank[hits] + 2), minlength=n_groups)
    ideal = np.cumsum(1.0 / np.log2(np.arange(k) + 2))  # idcg for 1..k positives
    has = n_pos > 0
    cut = np.minimum(n_pos[has], k)
    recalls = recall_num[has] / cut
    ndcgs = dcg[has] / ideal[cut - 1]
    return float(recalls.mean()), float(ndcgs.mean()), int(has.sum())


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


@dataclass(frozen=True)
class MeanDiff:
    """`b − a` of two seed means (e.g. +LLM4MSR minus plain) with its Welch standard error.

    The two variants are trained independently per seed, so the seeds are not paired: the SE of the
    difference of means is sqrt(s_a²/n_a + s_b²/n_b) (Welch). `se` is NaN when either side has fewer
    than two seeds (no spread to estimate). `spread` is the larger of the two seed stds.
    """

    delta: float
    se: float
    spread: float
    n_a: int
    n_b: int

    @property
    def has_se(self) -> bool:
        return self.n_a >= 2 and self.n_b >= 2 and math.isfinite(self.se)

    def worse_by_spread(self) -> bool | None:
        """b below a by more than one seed std (the "never worse" criterion); None without spread."""
        if not self.has_se or not math.isfinite(self.delta):
            return None
        return self.delta < -self.spread

    def beats_by_se(self, k: float = 2.0) -> bool | None:
        """b above a by more than k standard errors; None without an SE."""
        if not self.has_se or not math.isfinite(self.delta):
            return None
        return self.delta > k * self.se


def mean_diff(a: tuple[float, float, int], b: tuple[float, float, int]) -> MeanDiff:
    """`b − a` for two `mean_std` results (mean, sample std, n) with the Welch SE (see MeanDiff)."""
    (ma, sa, na), (mb, sb, nb) = a, b
    if na == 0 or nb == 0:
        return MeanDiff(float("nan"), float("nan"), float("nan"), na, nb)
    se = math.sqrt(sa**2 / na + sb**2 / nb) if na >= 2 and nb >= 2 else float("nan")
    return MeanDiff(float(mb - ma), se, float(max(sa, sb)), na, nb)
