import math

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from ranker import metrics as M


def topk(pos_scores: np.ndarray, neg_scores: np.ndarray, k: int) -> tuple[float, float]:
    """Reference (Recall@k, NDCG@k) of one group, a loop per positive (pessimistic ties); the product
    computes all groups at once (`ranker.metrics._topk_frame`)."""
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


def test_auc_equals_the_pairwise_definition_with_ties():
    """P(score_pos > score_neg) + P(tie) / 2 over all pairs, brute force."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    s = rng.integers(0, 15, 200).astype(np.float64)  # many ties
    pos, neg = s[y == 1], s[y == 0]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert M.auc(y, s) == pytest.approx(pairs, abs=1e-12)


def test_auc_hand_computed():
    # pairs (pos, neg): (0.8,0.1) ok, (0.8,0.4) ok, (0.35,0.1) ok, (0.35,0.4) wrong -> 3/4
    assert M.auc(np.array([1, 0, 1, 0]), np.array([0.8, 0.1, 0.35, 0.4])) == pytest.approx(0.75)
    # a tie between a positive and a negative counts one half
    assert M.auc(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert math.isnan(M.auc(np.array([1, 1]), np.array([0.2, 0.3])))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.random(500) + 0.3 * y, 1)  # rounding creates many ties
    assert M.auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_logloss_hand_computed():
    expected = -(math.log(0.9) + math.log(0.8)) / 2
    assert M.logloss(np.array([1, 0]), np.array([0.9, 0.2])) == pytest.approx(expected)
    assert np.isfinite(M.logloss(np.array([1]), np.array([0.0])))  # clipped, not inf


def test_gauc_weights_users_and_counts_skipped():
    users = np.array(["a", "a", "a", "a", "b", "b", "c", "c"])
    labels = np.array([1, 0, 1, 0, 1, 0, 1, 1])
    scores = np.array([0.8, 0.1, 0.35, 0.4, 0.2, 0.9, 0.5, 0.6])
    value, used, skipped = M.gauc(users, labels, scores)
    # a: AUC 0.75 over 4 rows, b: AUC 0 over 2 rows, c skipped (one class)
    assert value == pytest.approx((0.75 * 4 + 0.0 * 2) / 6)
    assert (used, skipped) == (2, 1)


def test_topk_hand_computed():
    # one positive at rank 2 (0-based 1) among negatives -> recall 1, ndcg 1/log2(3)
    r, n = topk(np.array([0.7]), np.array([0.9, 0.5, 0.1]), k=2)
    assert (r, n) == (pytest.approx(1.0), pytest.approx(1 / math.log2(3)))
    r, n = topk(np.array([0.7]), np.array([0.9, 0.8, 0.75]), k=2)
    assert (r, n) == (0.0, 0.0)
    # ties are pessimistic: a constant model ranks its positive last
    r, _ = topk(np.array([0.5]), np.full(10, 0.5), k=10)
    assert r == 0.0
    # two positives, k=2: ranks 0 and 2 -> recall 1/2, ndcg = 1 / (1 + 1/log2(3))
    r, n = topk(np.array([0.9, 0.5]), np.array([0.6, 0.1]), k=2)
    assert r == pytest.approx(0.5)
    assert n == pytest.approx(1.0 / (1 + 1 / math.log2(3)))


def _dump() -> pl.DataFrame:
    rows = [
        ("u1", "i1", "A", 1, 0.9, "test"),
        ("u1", "i2", "A", 0, 0.2, "test"),
        ("u2", "i3", "A", 1, 0.3, "test"),
        ("u2", "i4", "A", 0, 0.6, "test"),
        ("u1", "i5", "B", 1, 0.7, "test"),
        ("u3", "i6", "B", 0, 0.1, "test"),
        ("u1", "n1", "A", 0, 0.5, "sampled"),
        ("u2", "n2", "A", 0, 0.95, "sampled"),
        ("u1", "n3", "B", 0, 0.8, "sampled"),
    ]
    return pl.DataFrame(
        rows, schema=["user_id", "item_id", "scenario_id", "label", "score", "source"], orient="row"
    )


def test_evaluate_per_scenario_from_one_dump():
    res = M.evaluate(_dump(), k=1)
    a, b = res["per_scenario"]["A"], res["per_scenario"]["B"]
    assert a["rows"] == 4 and b["rows"] == 2
    assert a["auc"] == pytest.approx(roc_auc_score([1, 0, 1, 0], [0.9, 0.2, 0.3, 0.6]))
    assert b["auc"] == pytest.approx(1.0)
    # top-1: A/u1 positive 0.9 beats sampled 0.5 (hit); A/u2 0.3 < 0.95 (miss); B/u1 0.7 < 0.8 (miss)
    assert a["recall@1"] == pytest.approx(0.5) and b["recall@1"] == 0.0
    assert res["overall"]["recall@1"] == pytest.approx(1 / 3)
    assert res["overall"]["rows"] == 6  # sampled rows never enter AUC/Logloss


def test_evaluate_rejects_incomplete_dump():
    with pytest.raises(ValueError, match="source"):
        M.evaluate(_dump().drop("source"))


def test_aggregate_mean_std():
    r1 = M.evaluate(_dump(), k=1)
    d2 = _dump().with_columns(
        pl.when(pl.col("item_id") == "i4").then(0.1).otherwise(pl.col("score")).alias("score")
    )
    r2 = M.evaluate(d2, k=1)
    agg = M.aggregate([r1, r2])
    mean, std, n = agg["per_scenario"]["A"]["auc"]
    vals = [r1["per_scenario"]["A"]["auc"], r2["per_scenario"]["A"]["auc"]]
    assert n == 2 and mean == pytest.approx(np.mean(vals)) and std == pytest.approx(np.std(vals, ddof=1))


def test_grouped_topk_and_gauc_equal_the_per_group_definitions():
    """The vectorised Recall/NDCG@k and gAUC match a plain loop over groups using `topk` / `auc`
    (ties included: scores are rounded to a coarse grid; groups without negatives or positives)."""
    import polars as pl

    rng = np.random.default_rng(5)
    rows = []
    for u in range(60):
        for scen in ("a", "b"):
            n_test, n_neg = int(rng.integers(0, 5)), int(rng.integers(0, 12)) if u % 7 else 0
            for _ in range(n_test):
                rows.append((f"u{u}", scen, int(rng.random() < 0.6), round(rng.random(), 1), "test"))
            for _ in range(n_neg):
                rows.append((f"u{u}", scen, 0, round(rng.random(), 1), "sampled"))
    pred = pl.DataFrame(
        rows, schema=["user_id", "scenario_id", "label", "score", "source"], orient="row"
    ).with_columns(item_id=pl.lit("i"))
    for k in (1, 3, 10):
        recalls, ndcgs = [], []
        for (u, scen), part in pred.filter(pl.col("source") == "test", pl.col("label") == 1).group_by(
            ["user_id", "scenario_id"]
        ):
            neg = pred.filter(
                pl.col("source") == "sampled", pl.col("user_id") == u, pl.col("scenario_id") == scen
            )
            if neg.height:
                r, n = topk(part["score"].to_numpy(), neg["score"].to_numpy(), k)
                recalls.append(r)
                ndcgs.append(n)
        got = M._topk_frame(pred, k)
        assert got[2] == len(recalls) > 20
        assert got[0] == pytest.approx(np.mean(recalls)) and got[1] == pytest.approx(np.mean(ndcgs))
    test = pred.filter(pl.col("source") == "test")
    total = weight = used = skipped = 0
    for _, part in test.group_by("user_id"):
        y = part["label"].to_numpy()
        if y.min() == y.max():
            skipped += 1
            continue
        total += M.auc(y, part["score"].to_numpy()) * len(y)
        weight += len(y)
        used += 1
    g = M.gauc(test["user_id"].to_numpy(), test["label"].to_numpy(), test["score"].to_numpy())
    assert g[1:] == (used, skipped) and used > 10 and skipped > 0
    assert g[0] == pytest.approx(total / weight)
