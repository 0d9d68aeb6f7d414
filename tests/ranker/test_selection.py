"""Do-no-harm selection: DeLong's paired AUC test and the variant decision on real runs."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from ranker import metrics as M
from ranker.model_io import VALID_PREDICTIONS_FILE
from ranker.selection import LLM, PLAIN, paired_auc_delta, select_variant
from tests.ranker.conftest import fast_settings


def _scores(n: int, seed: int, signal_b: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    shared = rng.normal(size=n)
    a = y * 0.8 + shared + rng.normal(size=n) * 0.5
    b = y * (0.8 + signal_b) + shared + rng.normal(size=n) * 0.5
    return y, a, b


def test_delong_matches_auc_and_bootstrap():
    y, a, b = _scores(3000, 0, 0.1)
    auc_a, auc_b, se = paired_auc_delta(y, a, b)
    assert auc_a == pytest.approx(M.auc(y, a), abs=1e-12)
    assert auc_b == pytest.approx(M.auc(y, b), abs=1e-12)
    rng = np.random.default_rng(1)
    boot = []
    for _ in range(400):
        i = rng.integers(0, y.size, y.size)
        boot.append(M.auc(y[i], b[i]) - M.auc(y[i], a[i]))
    assert se == pytest.approx(np.std(boot, ddof=1), rel=0.15)
    with pytest.raises(ValueError, match="single class"):
        paired_auc_delta(np.zeros(5), a[:5], b[:5])


def test_noise_alone_rarely_passes_two_se():
    passed = 0
    for seed in range(200):
        y, a, b = _scores(800, seed, 0.0)  # same signal: any Δ is noise
        _, _, se = paired_auc_delta(y, a, b)
        d = M.auc(y, b) - M.auc(y, a)
        passed += d > 2 * se
    assert passed <= 10  # one-sided 2 SE: about 2.3 % expected


def test_select_variant_on_runs(tiny_data, tiny_knowledge, tmp_path):
    from ranker.train import train

    plain = train(fast_settings("train.use_llm=false"), tiny_data, None, tmp_path / "plain")
    llm = train(fast_settings("train.use_llm=true"), tiny_data, tiny_knowledge, tmp_path / "llm")
    for r in (plain, llm):
        dump = pl.read_parquet(r.run_dir / VALID_PREDICTIONS_FILE)
        assert dump.height == r.run_info["rows"]["valid"]
        assert M.auc(dump["label"].to_numpy(), dump["score"].to_numpy()) == pytest.approx(r.best_valid_auc)
    d = select_variant(plain.run_dir, llm.run_dir, min_z=2.0)
    assert d.plain_valid_auc == pytest.approx(plain.best_valid_auc)
    assert d.llm_valid_auc == pytest.approx(llm.best_valid_auc)
    assert d.keep == (LLM if d.delta > 2.0 * d.se else PLAIN)
    assert "SE" in d.reason and d.to_dict()["z"] == pytest.approx(d.z)
    # an impossible bar always keeps the plain model
    assert select_variant(plain.run_dir, llm.run_dir, min_z=1e9).keep == PLAIN
    # the same run against itself: Δ = 0, never beyond noise
    same = select_variant(plain.run_dir, plain.run_dir, min_z=0.0)
    assert same.keep == PLAIN and same.delta == 0 and same.z == 0 and "0.0 SE" in same.reason


def test_cli_select_auto_trains_both_and_records_the_decision(tmp_path, tiny_data, tiny_knowledge, capsys):
    import json

    from pipelines.cli import main as cli
    from tests.ranker.helpers import FAST_TRAIN

    sets = [a for s in FAST_TRAIN for a in ("--set", s)]
    out = tmp_path / "sel"
    args = ["train", "--data", str(tiny_data), "--knowledge", str(tiny_knowledge), *sets, "--select", "auto"]
    assert cli([*args, "--out", str(out)]) == 0
    decision = json.loads((out / "selection.json").read_text())
    assert decision["keep"] in (PLAIN, LLM)
    assert decision["kept_run"] == str(out / decision["keep"])
    assert (out / PLAIN / "model.safetensors").is_file() and (out / LLM / "model.safetensors").is_file()
    assert json.loads((out / PLAIN / "run.json").read_text())["use_llm"] is False
    assert "validation AUC" in capsys.readouterr().out
    assert cli([*args, "--seeds", "0,1", "--out", str(tmp_path / "x")]) == 2


def test_selected_runs_are_the_runs_selection_keeps(tiny_data, tiny_knowledge, tmp_path):
    """The benchmark's `+LLM4MSR (select=auto)` variant: per seed, the run select_variant keeps,
    with that run's own test metrics (no retraining, no test rows in the decision)."""
    from ranker.report import LLM as LLM_VARIANT
    from ranker.report import PLAIN as PLAIN_VARIANT
    from ranker.report import SELECTED, find_runs, selected_runs
    from ranker.train import train

    train(fast_settings("train.use_llm=false"), tiny_data, None, tmp_path / "plain")
    train(fast_settings("train.use_llm=true"), tiny_data, tiny_knowledge, tmp_path / "llm")
    runs = find_runs([tmp_path])
    by_variant = {r.variant: r for r in runs}
    assert set(by_variant) == {PLAIN_VARIANT, LLM_VARIANT}
    for min_z, kept in ((1e9, PLAIN_VARIANT), (-1e9, LLM_VARIANT)):
        (chosen,) = selected_runs(runs, min_z=min_z)
        assert chosen.variant == SELECTED and chosen.path == by_variant[kept].path
        assert chosen.metrics == by_variant[kept].metrics
        decision = chosen.info["selected_from"]
        assert decision["keep"] == (PLAIN if kept == PLAIN_VARIANT else LLM)
        assert decision["min_z"] == min_z
    # a pair without validation predictions (runs written before they were dumped) is skipped
    (by_variant[LLM_VARIANT].path / VALID_PREDICTIONS_FILE).unlink()
    assert selected_runs(runs) == []
