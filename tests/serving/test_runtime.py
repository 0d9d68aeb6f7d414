"""The serving runtime against a real Redis: online/offline consistency, fallbacks, version refresh,
model/store mismatch, Redis going away and coming back, missing or corrupt model files, and the
no-LLM-imports guarantee."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from feature_store.materialize import materialize
from feature_store.offline_store import OfflineStore
from feature_store.online import open_store
from ranker.serving.artifact import MODEL_FILE, ModelLoadError, load_artifact
from ranker.serving.runtime import KnowledgeMismatchError, Ranker, ScoringRequestError
from tests.ranker.helpers import make_snapshot
from tests.serving.conftest import DIM, serve_cfg, store_cfg


def metric(ranker: Ranker, name: str, labels: dict[str, str] | None = None) -> float:
    return ranker.metrics.registry.get_sample_value(name, labels or {}) or 0.0


@pytest.mark.redis
def test_online_scores_equal_offline_predictions(trained, redis_server) -> None:  # noqa: ANN001
    store = open_store(redis_server.url, store_cfg())
    materialize(trained.snapshot_dir, store, store_cfg())
    ranker = Ranker(trained.model_dir, store, serve_cfg())
    pred = pl.read_parquet(trained.run_dir / "predictions.parquet")
    test = pred.filter(pl.col("source") == "test")
    # All users without knowledge (u0..u4, fallback) plus a seeded sample of the others.
    sample = pl.concat(
        [test.filter(pl.col("user_id").is_in(["u0", "u1", "u2", "u3", "u4"])), test.sample(n=40, seed=0)]
    ).unique(maintain_order=True)
    assert sample.height >= 40
    for (user, scen), grp in sample.group_by(["user_id", "scenario_id"], maintain_order=True):
        res = ranker.score_detailed(user, scen, grp["item_id"].to_list())
        np.testing.assert_allclose(
            res.scores, grp["score"].to_numpy(), atol=1e-5, rtol=0, err_msg=f"user {user} scenario {scen}"
        )
        assert (res.fallback == "missing") == (user in {"u0", "u1", "u2", "u3", "u4"})
    assert metric(ranker, "llm4msr_knowledge_fallback_total", {"reason": "missing"}) >= 1
    assert metric(ranker, "llm4msr_store_errors_total") == 0
    # Unknown users and items are scored (unknown index), the user falls back.
    res = ranker.score_detailed("new-user", "s1", ["i1", "not-an-item"])
    assert res.fallback == "missing" and res.scores.shape == (2,) and np.isfinite(res.scores).all()
    ranker.close()


@pytest.mark.redis
def test_store_outage_falls_back_and_recovers(trained, redis_server) -> None:  # noqa: ANN001
    store = open_store(redis_server.url, store_cfg())
    materialize(trained.snapshot_dir, store, store_cfg())
    ranker = Ranker(trained.model_dir, store, serve_cfg())
    items = ["i1", "i2", "i3"]
    with_knowledge = ranker.score_detailed("u10", "s0", items)
    assert with_knowledge.fallback is None and ranker.readiness()[0]

    redis_server.stop()
    for _ in range(3):
        res = ranker.score_detailed("u10", "s0", items)  # keeps succeeding
        assert res.fallback == "store_error"
    assert metric(ranker, "llm4msr_knowledge_fallback_total", {"reason": "store_error"}) == 3
    assert metric(ranker, "llm4msr_store_errors_total") >= 3
    ok, details = ranker.readiness()
    assert not ok and "unreachable" in details["store"]
    fallback_scores = ranker.score("u10", "s0", items)
    assert np.abs(fallback_scores - with_knowledge.scores).max() > 1e-6  # knowledge really changed the score

    redis_server.start()  # empty server (no persistence): the knowledge has to be materialized again
    materialize(trained.snapshot_dir, open_store(redis_server.url, store_cfg()), store_cfg())
    res = ranker.score_detailed("u10", "s0", items)
    assert res.fallback is None
    np.testing.assert_allclose(res.scores, with_knowledge.scores, atol=1e-6)
    assert ranker.readiness()[0]
    ranker.close()


@pytest.mark.redis
def test_version_change_reloads_scenario_knowledge(trained, redis_server, tmp_path: Path) -> None:  # noqa: ANN001
    store = open_store(redis_server.url, store_cfg())
    materialize(trained.snapshot_dir, store, store_cfg())
    ranker = Ranker(trained.model_dir, store, serve_cfg())
    first = ranker.score_detailed("u10", "s1", ["i1", "i2"])
    # A new snapshot of the same family (same model id, pooling, dimension), different vectors.
    root = make_snapshot(tmp_path / "k2", trained.data_dir, dim=DIM, seed=7)
    new_snap = OfflineStore(root).current_path()
    materialize(new_snap, store, store_cfg())
    second = ranker.score_detailed("u10", "s1", ["i1", "i2"])
    assert second.knowledge_version == new_snap.name != first.knowledge_version
    assert metric(ranker, "llm4msr_knowledge_version_changes_total") == 1
    # Exactly what the model gives with the new snapshot's vectors.
    from feature_store.knowledge_snapshot import load_snapshot

    snap = load_snapshot(new_snap)
    uids, uvec = snap.vectors_of("user")
    sids, svec = snap.vectors_of("scenario")
    art = ranker.artifact
    x = {
        "sparse_ids": art.assembler.build("u10", "s1", ["i1", "i2"]),
        "user_knowledge": np.repeat(uvec[uids.index("u10")][None], 2, 0),
        "user_has_knowledge": np.ones(2, np.float32),
        "scenario_knowledge": np.repeat(svec[sids.index("s1")][None], 2, 0),
    }
    np.testing.assert_allclose(second.scores, ranker.session.run(None, x)[0], atol=1e-6)
    ranker.close()


def test_knowledge_mismatch_refused_or_fallback(trained, tmp_path: Path) -> None:  # noqa: ANN001
    root = make_snapshot(tmp_path / "k16", trained.data_dir, dim=16)  # another dimension and family
    url = str(tmp_path / "online")
    materialize(OfflineStore(root).current_path(), url, store_cfg())
    with pytest.raises(KnowledgeMismatchError, match=r"dimension 16 != 8.*refusing to serve"):
        Ranker(trained.model_dir, open_store(url, store_cfg()), serve_cfg())
    ranker = Ranker(
        trained.model_dir, open_store(url, store_cfg()), serve_cfg(on_knowledge_mismatch="fallback")
    )
    res = ranker.score_detailed("u10", "s0", ["i1", "i2"])
    assert res.fallback == "mismatch"
    ok, details = ranker.readiness()
    assert (
        ok
        and details["knowledge"] == "fallback only (configured)"
        and "dimension 16 != 8" in details["problem"]
    )
    ranker.close()


def test_request_validation_and_no_version(trained, tmp_path: Path) -> None:  # noqa: ANN001
    ranker = Ranker(
        trained.model_dir, open_store(str(tmp_path / "empty"), store_cfg()), serve_cfg(max_candidates=5)
    )
    with pytest.raises(ScoringRequestError, match="unknown scenario_id 'nope'"):
        ranker.score("u1", "nope", ["i1"])
    with pytest.raises(ScoringRequestError, match="empty"):
        ranker.score("u1", "s0", [])
    with pytest.raises(ScoringRequestError, match="more than serve.max_candidates=5") as info:
        ranker.score("u1", "s0", ["i1"] * 6)
    assert info.value.status == 413
    res = ranker.score_detailed("u1", "s0", ["i1"])  # empty store: served with fallback, not ready
    assert res.fallback == "no_version" and not ranker.readiness()[0]


def test_missing_or_corrupt_model(trained, tmp_path: Path) -> None:  # noqa: ANN001
    store = open_store(str(tmp_path / "online"), store_cfg())
    with pytest.raises(ModelLoadError, match="does not exist"):
        Ranker(tmp_path / "nothing", store, serve_cfg())
    bad = tmp_path / "bad"
    shutil.copytree(trained.model_dir, bad)
    (bad / MODEL_FILE).unlink()
    with pytest.raises(ModelLoadError, match=r"model file .*model.onnx is missing"):
        Ranker(bad, store, serve_cfg())
    shutil.copy(trained.model_dir / MODEL_FILE, bad / MODEL_FILE)
    with open(bad / MODEL_FILE, "r+b") as fh:  # flip bytes in the middle of the weights
        fh.seek(fh.seek(0, 2) // 2)
        fh.write(b"\x00garbage\x00")
    with pytest.raises(ModelLoadError, match="is corrupt: sha256"):
        Ranker(bad, store, serve_cfg())
    (bad / MODEL_FILE).write_bytes(b"not an onnx file")
    manifest = json.loads((bad / "manifest.json").read_text())
    from llm4msr.atomic import sha256_file

    manifest["model"]["sha256"] = sha256_file(bad / MODEL_FILE)  # checksum matches, content is garbage
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="cannot be loaded by onnxruntime"):
        Ranker(bad, store, serve_cfg())
    (bad / "manifest.json").write_text("{")
    with pytest.raises(ModelLoadError, match="manifest.json: not valid JSON"):
        load_artifact(bad)
    with pytest.raises(ModelLoadError, match="no 'int4' variant was exported"):
        load_artifact(trained.model_dir, "int4")


def test_serving_imports_no_llm_code() -> None:
    code = (
        "import sys\n"
        "import ranker.serving.runtime, ranker.serving.http, feature_store.online, pipelines.commands.serve\n"
        "from pipelines.cli import build_parser; build_parser()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('vllm', 'transformers', 'knowledge_service',"
        " 'torch', 'sentence_transformers'))\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"serving path imported: {out.stdout.strip()[:500]}"
