"""A trivial baseline for every benchmark table: logistic regression on smoothed mean labels.

Why: a ΔAUC between two neural variants says nothing about whether either learned more than
"this user clicks a lot, this item is popular". The baseline answers that, with 2 + S numbers.

Features of a row (user u, item i, scenario s), all computed from **train rows only**:

- `user_mean_logit` = logit((pos_u + α·g) / (n_u + α)): the user's mean label, Bayesian-smoothed
  toward the global train mean g with prior strength α (`BaselineConfig.alpha`, default 10 =
  ten pseudo-rows at g). A user without train rows gets logit(g).
- `item_mean_logit`: the same for the item.
- `scenario=s`: one-hot over the dataset's scenarios (no separate intercept: the one-hot is a
  per-scenario intercept; a scenario unseen in the scenario table gets none).

The logistic regression (numpy Newton / IRLS with a small ridge, no sklearn) is fitted on the
train rows with **out-of-fold** means (seeded K folds: a row's own label never feeds its
features, otherwise the fit sees leaked labels and over-weights the means); valid/test rows and
sampled candidates are scored with the means of all train rows. It is evaluated exactly like a
trained run: the same test rows and sampled candidates (`ranker.train.sample_candidates`, seeded
by `eval.seed`) through `ranker.metrics.evaluate`, and written as a run-like folder
(`run.json` with `kind: "baseline"`, `metrics.json`, `predictions.parquet`) that
`ranker.report` shows as the variant "baseline (LR on user/item means)".
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from feature_store.dataset import CanonicalDataset, DataError, load_dataset, read_version
from llm4msr.atomic import atomic_directory, write_json_atomic
from llm4msr.config import EvalConfig
from llm4msr.provenance import provenance
from ranker import metrics as M
from ranker.model_io import METRICS_FILE, PREDICTIONS_FILE, RUN_FILE

log = logging.getLogger(__name__)

BASELINE_KIND = "baseline"
BASELINE_VARIANT = "baseline (LR on user/item means)"
_LOGIT_EPS = 1e-6


@dataclass(frozen=True)
class BaselineConfig:
    alpha: float = 10.0  # prior strength of the smoothed means (pseudo-rows at the global mean)
    l2: float = 1e-4  # ridge on the weights (per-row objective); keeps Newton finite if separable
    folds: int = 5  # out-of-fold means for the fitting rows
    max_iter: int = 50
    tol: float = 1e-9  # stop when the largest Newton step is below this


@dataclass(frozen=True)
class SmoothedMean:
    """Bayesian-smoothed mean label per id (`column`), from the rows it was fitted on."""

    column: str
    stats: pl.DataFrame  # column, n (rows), pos (positives)
    prior: float
    alpha: float

    @classmethod
    def fit(cls, rows: pl.DataFrame, column: str, prior: float, alpha: float) -> SmoothedMean:
        stats = rows.group_by(column).agg(n=pl.len().cast(pl.Int64), pos=pl.col("label").cast(pl.Int64).sum())
        return cls(column, stats.sort(column), prior, alpha)

    def log_odds(self, frame: pl.DataFrame) -> np.ndarray:
        """logit of the smoothed mean for each row of `frame` (ids without rows get the prior)."""
        joined = frame.select(self.column).join(self.stats, on=self.column, how="left", maintain_order="left")
        n = joined["n"].fill_null(0).to_numpy().astype(np.float64)
        pos = joined["pos"].fill_null(0).to_numpy().astype(np.float64)
        return _smoothed_logit(pos, n, self.prior, self.alpha)


def _smoothed_logit(pos: np.ndarray, n: np.ndarray, prior: float, alpha: float) -> np.ndarray:
    p = (pos + alpha * prior) / (n + alpha)
    p = np.clip(p, _LOGIT_EPS, 1 - _LOGIT_EPS)
    return np.log(p) - np.log1p(-p)


def _out_of_fold_log_odds(
    train: pl.DataFrame, column: str, fold: np.ndarray, prior: float, alpha: float
) -> np.ndarray:
    """Smoothed log-odds of each train row from the train rows of the *other* folds."""
    frame = train.select(column, "label").with_columns(_fold=pl.Series(fold, dtype=pl.Int64))
    total = frame.group_by(column).agg(n=pl.len().cast(pl.Int64), pos=pl.col("label").cast(pl.Int64).sum())
    per_fold = frame.group_by(column, "_fold").agg(
        n_f=pl.len().cast(pl.Int64), pos_f=pl.col("label").cast(pl.Int64).sum()
    )
    joined = (
        frame.join(total, on=column, how="left", maintain_order="left")
        .join(per_fold, on=[column, "_fold"], how="left", maintain_order="left")
        .select(n=pl.col("n") - pl.col("n_f"), pos=pl.col("pos") - pl.col("pos_f"))
    )
    return _smoothed_logit(
        joined["pos"].to_numpy().astype(np.float64), joined["n"].to_numpy().astype(np.float64), prior, alpha
    )


def fit_logistic(
    x: np.ndarray, y: np.ndarray, l2: float, max_iter: int, tol: float
) -> tuple[np.ndarray, int]:
    """Weights minimising mean logloss + l2/2·|w|² by Newton steps (with step halving) -> (w, steps).

    Why Newton: there are 2 + S weights, so the Hessian is tiny and a handful of exact steps
    converge to machine precision, deterministically (no learning rate, no seed).
    """
    n, d = x.shape
    if n == 0:
        raise DataError("baseline: no training rows to fit the logistic regression on")
    w = np.zeros(d)

    def objective(w: np.ndarray) -> float:
        z = x @ w
        return float(np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * w @ w)

    loss = objective(w)
    for step in range(1, max_iter + 1):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = x.T @ (p - y) / n + l2 * w
        hess = (x * (p * (1 - p))[:, None]).T @ x / n + l2 * np.eye(d)
        delta = np.linalg.solve(hess, grad)
        t = 1.0
        while True:  # halve the step until the objective does not increase (Newton can overshoot)
            cand = w - t * delta
            cand_loss = objective(cand)
            if cand_loss <= loss + 1e-15 or t < 1e-6:
                break
            t /= 2
        w, loss = cand, cand_loss
        if np.max(np.abs(t * delta)) < tol:
            return w, step
    log.warning("baseline logistic regression: no convergence in %d Newton steps", max_iter)
    return w, max_iter


@dataclass(frozen=True)
class BaselineModel:
    config: BaselineConfig
    seed: int
    global_mean: float
    user: SmoothedMean
    item: SmoothedMean
    scenarios: tuple[str, ...]
    weights: np.ndarray  # [2 + S], in the order of feature_names
    newton_steps: int

    @property
    def feature_names(self) -> list[str]:
        return ["user_mean_logit", "item_mean_logit", *(f"scenario={s}" for s in self.scenarios)]

    def features(self, frame: pl.DataFrame) -> np.ndarray:
        """[N, 2 + S] features of `frame` (user_id, item_id, scenario_id) from all train rows."""
        return _design(self.user.log_odds(frame), self.item.log_odds(frame), frame, self.scenarios)

    def predict(self, frame: pl.DataFrame) -> np.ndarray:
        """Click probability per row (float64)."""
        return 1.0 / (1.0 + np.exp(-(self.features(frame) @ self.weights)))


def _design(u: np.ndarray, i: np.ndarray, frame: pl.DataFrame, scenarios: Sequence[str]) -> np.ndarray:
    scen = frame["scenario_id"].to_numpy()
    onehot = (scen[:, None] == np.asarray(scenarios, dtype=object)[None, :]).astype(np.float64)
    return np.column_stack([u, i, onehot])


def fit_baseline(
    train: pl.DataFrame, scenarios: Sequence[str], config: BaselineConfig = BaselineConfig(), seed: int = 0
) -> BaselineModel:
    """Fit on `train` (user_id, item_id, scenario_id, label; the train split only: nothing else
    may reach the means) with seeded out-of-fold means for the fitting rows."""
    missing = {"user_id", "item_id", "scenario_id", "label"} - set(train.columns)
    if missing:
        raise DataError(f"baseline: training rows miss column(s) {sorted(missing)} (have {train.columns})")
    if train.height == 0:
        raise DataError("baseline: no training rows")
    if config.folds < 2:
        raise ValueError(f"baseline: folds must be >= 2 (got {config.folds})")
    y = train["label"].to_numpy().astype(np.float64)
    g = float(y.mean())
    fold = np.random.default_rng([seed, 17]).integers(0, config.folds, train.height)
    x = _design(
        _out_of_fold_log_odds(train, "user_id", fold, g, config.alpha),
        _out_of_fold_log_odds(train, "item_id", fold, g, config.alpha),
        train,
        scenarios,
    )
    w, steps = fit_logistic(x, y, config.l2, config.max_iter, config.tol)
    return BaselineModel(
        config=config,
        seed=seed,
        global_mean=g,
        user=SmoothedMean.fit(train, "user_id", g, config.alpha),
        item=SmoothedMean.fit(train, "item_id", g, config.alpha),
        scenarios=tuple(scenarios),
        weights=w,
        newton_steps=steps,
    )


@dataclass(frozen=True)
class BaselineRun:
    run_dir: Path
    model: BaselineModel
    metrics: dict[str, Any]  # ranker.metrics.evaluate output on the test rows + sampled candidates
    seconds: float


def baseline_predictions(model: BaselineModel, ds: CanonicalDataset, eval_cfg: EvalConfig) -> pl.DataFrame:
    """The prediction dump a trained run writes, scored by the baseline: the test rows
    (source "test") plus the same seeded sampled candidates (source "sampled")."""
    from ranker.train import sample_candidates  # the very sampler trained runs use

    cols = ["user_id", "item_id", "scenario_id", "label"]
    test = ds.interactions.filter(pl.col("split") == "test").select(cols)
    cands = sample_candidates(ds, eval_cfg)
    return pl.concat(
        [
            test.with_columns(score=pl.Series(model.predict(test), dtype=pl.Float32), source=pl.lit("test")),
            cands.with_columns(
                score=pl.Series(model.predict(cands), dtype=pl.Float32), source=pl.lit("sampled")
            ),
        ]
    )


def _settings_record(
    dataset_version: str, eval_cfg: EvalConfig, config: BaselineConfig, seed: int
) -> dict[str, Any]:
    """What a baseline run depends on (a run with the same record is reused)."""
    return {
        "dataset_version": dataset_version,
        "eval": eval_cfg.model_dump(mode="json"),
        "config": asdict(config),
        "seed": seed,
    }


def baseline_reusable(
    run_dir: Path, data_dir: str | Path, eval_cfg: EvalConfig, config: BaselineConfig, seed: int = 0
) -> bool:
    """A finished baseline run of the same dataset id, evaluation settings, config and seed."""
    run_file = Path(run_dir) / RUN_FILE
    if not run_file.is_file() or not (Path(run_dir) / METRICS_FILE).is_file():
        return False
    rec = (json.loads(run_file.read_text()).get("baseline") or {}).get("settings")
    return rec == _settings_record(read_version(data_dir), eval_cfg, config, seed)


def run_baseline(
    data_dir: str | Path,
    eval_cfg: EvalConfig,
    out: str | Path,
    *,
    config: BaselineConfig = BaselineConfig(),
    seed: int = 0,
    overwrite: bool = False,
) -> BaselineRun:
    """Fit on the train split of `data_dir`, evaluate like a trained run, write a run-like folder."""
    t0 = time.perf_counter()
    out = Path(out)
    ds = load_dataset(data_dir)
    train = ds.interactions.filter(pl.col("split") == "train")
    if train.height == 0:
        raise DataError(f"{data_dir}/interactions.parquet: no rows with split == 'train'")
    scenarios = sorted(ds.scenarios["scenario_id"].to_list())
    t_fit = time.perf_counter()
    model = fit_baseline(train, scenarios, config, seed)
    fit_seconds = time.perf_counter() - t_fit
    pred = baseline_predictions(model, ds, eval_cfg)
    final = M.evaluate(pred, eval_cfg.k)
    info = {
        "kind": BASELINE_KIND,
        "dataset": {
            "path": str(data_dir),
            "version": ds.version(),
            "source": (ds.manifest or {}).get("source"),
        },
        "knowledge": None,
        "backbone": None,
        "use_llm": False,
        "meta": None,
        "seed": seed,
        "baseline": {
            "description": BASELINE_VARIANT,
            "settings": _settings_record(ds.version(), eval_cfg, config, seed),
            "weights": dict(zip(model.feature_names, map(float, model.weights), strict=True)),
            "global_mean": model.global_mean,
            "newton_steps": model.newton_steps,
        },
        "timings": {
            "epoch_seconds": [fit_seconds],
            "mean_epoch_seconds": fit_seconds,
            "total_seconds": time.perf_counter() - t0,
        },
        "parameters": {"total": int(model.weights.size)},
        "rows": {
            "train": train.height,
            "test": int((pred["source"] == "test").sum()),
            "sampled_candidates": int((pred["source"] == "sampled").sum()),
        },
        "fallback": None,
        "provenance": provenance("polars", "numpy"),
    }
    with atomic_directory(out, overwrite=overwrite) as tmp:
        pred.write_parquet(tmp / PREDICTIONS_FILE)
        write_json_atomic(tmp / METRICS_FILE, {"final": final, "epochs": [], "best_epoch": None})
        write_json_atomic(tmp / RUN_FILE, info)
    log.info("baseline %s: test AUC %.4f (%d Newton steps)", out, final["overall"]["auc"], model.newton_steps)
    return BaselineRun(run_dir=out, model=model, metrics=final, seconds=time.perf_counter() - t0)
