"""Do-no-harm selection: keep +LLM4MSR only where it beats its plain backbone on validation beyond noise.

Knowledge helps where ids know little (short histories, cold scenarios) and can hurt where ids
already know the user, so a production train flow trains both variants and ships the plain model
unless the knowledge variant's validation AUC is higher by more than `min_z` standard errors.

The standard error is DeLong's for two correlated AUCs on the same validation rows (DeLong et al.
1988, midrank form of Sun & Xu 2014): exact, one sort per model, no resampling, so it costs the
same on 10k or 10M validation rows. Test rows are never looked at.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from llm4msr.config import Settings
from llm4msr.errors import MissingInputError
from ranker.metrics import midranks
from ranker.model_io import VALID_PREDICTIONS_FILE

if TYPE_CHECKING:
    from ranker.train import RunResult

log = logging.getLogger(__name__)

PLAIN, LLM = "plain", "llm4msr"
KEYS = ["user_id", "item_id", "scenario_id"]


@dataclass(frozen=True)
class VariantDecision:
    """Which variant a selecting train flow keeps, with the validation numbers that decided it."""

    keep: str  # PLAIN or LLM
    plain_valid_auc: float
    llm_valid_auc: float
    delta: float  # llm - plain
    se: float  # DeLong standard error of delta
    min_z: float
    n_rows: int
    reason: str

    @property
    def z(self) -> float:
        return z_score(self.delta, self.se)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: a non-finite z is written as null."""
        return asdict(self) | {"z": self.z if math.isfinite(self.z) else None}


def z_score(delta: float, se: float) -> float:
    """Δ in standard errors (±inf when the rows leave no noise but Δ is not 0; 0 for identical scores)."""
    if se > 0:
        return delta / se
    return 0.0 if delta == 0 else math.copysign(math.inf, delta)


def paired_auc_delta(
    labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray
) -> tuple[float, float, float]:
    """(AUC_a, AUC_b, SE of AUC_b - AUC_a) on the same rows, by DeLong's method.

    Raises ValueError when the rows hold a single class (no AUC)."""
    y = np.asarray(labels).astype(bool)
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        raise ValueError(f"validation rows have a single class ({m} positives, {n} negatives): no AUC")
    v10, v01 = [], []
    for s in (np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)):
        pos, neg = s[y], s[~y]
        tz = midranks(np.concatenate([pos, neg]))
        v10.append((tz[:m] - midranks(pos)) / n)  # per positive: share of negatives ranked below
        v01.append(1.0 - (tz[m:] - midranks(neg)) / m)  # per negative: share of positives above
    auc_a, auc_b = float(v10[0].mean()), float(v10[1].mean())
    s10 = np.cov(np.vstack(v10)) if m > 1 else np.zeros((2, 2))
    s01 = np.cov(np.vstack(v01)) if n > 1 else np.zeros((2, 2))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    return auc_a, auc_b, float(math.sqrt(max(var, 0.0)))


def _valid_predictions(run_dir: Path) -> pl.DataFrame:
    path = run_dir / VALID_PREDICTIONS_FILE
    if not path.is_file():
        raise MissingInputError(
            f"{path} does not exist: the run predates validation dumps; train it again to select on it"
        )
    return pl.read_parquet(path)


def select_variant(plain_run: str | Path, llm_run: str | Path, min_z: float) -> VariantDecision:
    """Compare two runs of the same data on their validation predictions."""
    a, b = _valid_predictions(Path(plain_run)), _valid_predictions(Path(llm_run))
    # Both runs dump the validation split in dataset order, so the same data gives the same rows.
    if not a.select(*KEYS, "label").equals(b.select(*KEYS, "label")):
        raise ValueError(
            f"validation rows of {plain_run} ({a.height}) and {llm_run} ({b.height}) differ in keys or "
            "labels: the runs were not trained on the same dataset"
        )
    plain_auc, llm_auc, se = paired_auc_delta(
        a["label"].to_numpy(), a["score"].to_numpy(), b["score"].to_numpy()
    )
    delta = llm_auc - plain_auc
    keep = LLM if delta > min_z * se else PLAIN
    verdict = "beyond" if keep == LLM else "not beyond"
    decision = VariantDecision(keep, plain_auc, llm_auc, delta, se, min_z, a.height, "")
    reason = (
        f"validation AUC +LLM4MSR {llm_auc:.4f} vs plain {plain_auc:.4f}: Δ {delta:+.4f} = "
        f"{decision.z:.1f} SE, {verdict} the {min_z:g} SE bar: keeping {keep}"
    )
    return replace(decision, reason=reason)


@dataclass
class SelectedRun:
    """`train_selected`'s result: both candidate runs, the decision and the kept run folder."""

    plain: RunResult
    llm: RunResult
    decision: VariantDecision

    @property
    def kept(self) -> RunResult:
        return self.llm if self.decision.keep == LLM else self.plain


SELECTION_FILE = "selection.json"


def train_selected(
    settings: Settings,
    data_dir: str | Path,
    knowledge: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
) -> SelectedRun:
    """Train plain and +LLM4MSR (same seed) into OUT/plain and OUT/llm4msr, decide on validation, and
    write OUT/selection.json (the decision and the kept run). `settings.train.use_llm` is ignored."""
    from llm4msr.atomic import write_json_atomic
    from ranker.train import train

    out = Path(out)
    runs = {}
    for name, use_llm in ((PLAIN, False), (LLM, True)):
        s = settings.model_copy(deep=True)
        s.train.use_llm = use_llm
        runs[name] = train(s, data_dir, knowledge if use_llm else None, out / name, overwrite=overwrite)
    decision = select_variant(runs[PLAIN].run_dir, runs[LLM].run_dir, settings.train.select_min_z)
    result = SelectedRun(runs[PLAIN], runs[LLM], decision)
    write_json_atomic(out / SELECTION_FILE, decision.to_dict() | {"kept_run": str(result.kept.run_dir)})
    log.info("selection: %s", decision.reason)
    return result
