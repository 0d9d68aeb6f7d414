"""`llm4msr explain` on real artifacts: a two-pass snapshot (tiny decoder, transformers backend),
a trained STAR + LLM4MSR run, its ONNX export registered as CURRENT. No Prefect, no mocks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from llm4msr.atomic import sha256_text
from llm4msr.config import KnowledgeConfig, load_config
from tests.ranker.helpers import FAST_TRAIN

torch.set_num_threads(1)


@dataclass
class Built:
    data_dir: Path
    knowledge_root: Path
    snapshot_dir: Path
    model_dir: Path  # the registered copy (registry CURRENT)
    registry: Path
    overrides: list[str]  # --set values that point the config at these artifacts


@pytest.fixture(scope="module")
def built(tiny_data_dir: Path, tiny_decoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Built:
    from feature_store.offline_store import OfflineStore
    from knowledge_service.backends import release_backends
    from knowledge_service.runner import build_knowledge
    from pipelines.flows.registry import ModelRegistry
    from ranker.export import export_run
    from ranker.train import train

    root = tmp_path_factory.mktemp("explain")
    kcfg = KnowledgeConfig(
        backend="transformers",
        model=str(tiny_decoder_dir),
        two_pass=True,
        two_pass_vector="last",
        max_new_tokens=6,
        max_prompt_tokens=384,
        num_shards=1,
    )
    kroot = root / "knowledge"
    try:
        build_knowledge(tiny_data_dir, kroot, kcfg)
    finally:
        release_backends()
    settings = load_config(overrides=[*FAST_TRAIN, "train.backbone=star"])
    run_dir = root / "run"
    train(settings, tiny_data_dir, kroot, run_dir)
    # the legacy exporter: the same parity gate, a quarter of dynamo's time on a busy machine
    export = ["export.exporter=legacy", "export.parity_batch_sizes=[1,2,7]", "export.variant_eval_rows=100"]
    settings = load_config(overrides=export)
    export_run(run_dir, root / "export", settings.export)
    registry = root / "registry"
    mid = ModelRegistry(registry).register(root / "export", {"validation_auc": 0.5})
    snapshot = OfflineStore(kroot).current_path()
    assert snapshot is not None
    overrides = [
        f"pipelines.registry_dir={registry}",
        f"knowledge.snapshot_root={kroot}",
        f"knowledge.model={tiny_decoder_dir}",
        "train.threads=1",
    ]
    return Built(tiny_data_dir, kroot, snapshot, ModelRegistry(registry).path_of(mid), registry, overrides)


def _explain(built: Built, **kw):
    from pipelines.explain import explain

    return explain(load_config(overrides=built.overrides), **kw)


def _some_user(built: Built) -> str:
    from feature_store.knowledge_snapshot import load_snapshot

    ids, _ = load_snapshot(built.snapshot_dir).vectors_of("user")
    return ids[0]


def test_explain_user_matches_snapshot_and_onnx(built: Built) -> None:
    from feature_store.knowledge_snapshot import load_snapshot
    from ranker.export import onnx_scores
    from ranker.serving.artifact import load_artifact, open_session

    user = _some_user(built)
    r = _explain(built, user_id=user, scenario_id=_scenario(built), top_k=5)
    # model and snapshot: the registry's CURRENT and the root's CURRENT
    assert Path(r.model_dir) == built.model_dir and r.model_id is not None
    assert Path(r.snapshot_path) == built.snapshot_dir and r.two_pass
    # the prompt shown is exactly the text that was encoded: same sha256 as stored with the vector
    snap = load_snapshot(built.snapshot_dir)
    stored = {
        (k, e): h for k, e, h in zip(snap.rows.kind, snap.rows.entity_id, snap.rows.prompt_hash, strict=True)
    }
    texts = {
        (p["kind"], p["entity_id"]): p["prompt"]
        for p in pq.read_table(built.snapshot_dir / "prompts.parquet").to_pylist()
    }
    for p in r.prompts:
        assert p.text == texts[(p.kind, p.entity_id)]
        assert p.matches_snapshot and sha256_text(p.text) == stored[(p.kind, p.entity_id)]
        assert "identical" in p.rerender  # knowledge_service.prompts renders the same text today
        assert isinstance(p.answer, str)  # two-pass: the decoder's answer is shown
    assert [p.kind for p in r.prompts] == ["user", "scenario"]
    # neighbours: faiss cosine, self excluded, sorted
    nn = r.neighbours["user"]
    assert nn and user not in [n.entity_id for n in nn]
    assert [n.similarity for n in nn] == sorted((n.similarity for n in nn), reverse=True)
    # the rankings equal direct ONNX scoring of the same inputs
    art = load_artifact(built.model_dir)
    sess = open_session(art.onnx_path)
    items = sorted(i.item_id for i in r.items)
    ids, vecs = snap.vectors_of("user")
    sids, svecs = snap.vectors_of("scenario")
    uvec, svec = vecs[ids.index(user)], svecs[sids.index(r.scenario_id)]
    n = len(items)
    x = {
        "sparse_ids": art.assembler.build(user, r.scenario_id, items),
        "user_knowledge": np.tile(uvec, (n, 1)).astype(np.float32),
        "user_has_knowledge": np.ones(n, np.float32),
        "scenario_knowledge": np.tile(svec, (n, 1)).astype(np.float32),
    }
    with_k = onnx_scores(sess, x)
    without = onnx_scores(
        sess,
        x
        | {
            "user_knowledge": np.zeros_like(x["user_knowledge"]),
            "user_has_knowledge": np.zeros(n, np.float32),
        },
    )
    by_id = {i.item_id: i for i in r.items}
    for j, item in enumerate(items):
        assert by_id[item].score_with == pytest.approx(float(with_k[j]), abs=1e-6)
        assert by_id[item].score_without == pytest.approx(float(without[j]), abs=1e-6)
    kept = [i for i in r.items if i.status != "out"]
    assert [i.rank_with for i in kept] == list(range(1, len(kept) + 1)) and len(kept) == 5
    assert sum(i.status != "in" for i in r.items) == 5  # fallback top-5: kept + out
    # meta levels: fallback from ONNX, both levels off from the run's torch model
    levels = {lv.name: lv for lv in r.levels}
    assert levels["user knowledge -> fallback vector"].model == "onnx"
    assert levels["scenario level off"].model == "torch" and levels["scenario level off"].available
    assert levels["user level off"].model == "torch"
    assert r.torch_onnx_max_diff is not None and r.torch_onnx_max_diff < 1e-4


def _scenario(built: Built) -> str:
    import polars as pl

    return pl.read_parquet(built.data_dir / "scenarios.parquet")["scenario_id"].sort()[0]


def test_cli_text_json_html_and_scenario_alone(built: Built, tmp_path: Path, capsys) -> None:
    from pipelines.cli import main

    sets = [a for s in built.overrides for a in ("--set", s)]
    user, scen = _some_user(built), _scenario(built)
    out = tmp_path / "report" / "explain.html"
    assert (
        main(["explain", "--user", user, "--scenario", scen, "--top-k", "4", "--out", str(out), *sets]) == 0
    )
    text = capsys.readouterr().out
    assert f"user {user} in scenario {scen}" in text and "top-4 of" in text and "scenario level off" in text
    page = out.read_text()
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page and user in page
    assert not list(out.parent.glob(".*.tmp"))  # atomic write left nothing behind
    assert main(["explain", "--scenario", scen, "--json", *sets]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (
        doc["user_id"] is None
        and doc["scenario_id"] == scen
        and [p["kind"] for p in doc["prompts"]] == ["scenario"]
    )
    assert "user" not in doc["neighbours"] and doc["neighbours"]["scenario"]


def test_unknown_ids_are_one_line_errors(built: Built, capsys) -> None:
    from pipelines.cli import main

    sets = [a for s in built.overrides for a in ("--set", s)]
    assert main(["explain", "--user", "nobody-42", "--scenario", _scenario(built), *sets]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'nobody-42'" in err and "unknown user" in err
    assert main(["explain", "--user", _some_user(built), "--scenario", "no-such-scenario", *sets]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'no-such-scenario'" in err and "unknown scenario" in err


def test_explicit_model_and_a_snapshot_of_another_family(built: Built, tmp_path: Path) -> None:
    from pipelines.explain import ExplainError
    from tests.ranker.helpers import make_snapshot

    r = _explain(built, user_id=_some_user(built), scenario_id=_scenario(built), model_dir=built.model_dir)
    assert r.model_id is None and Path(r.model_dir) == built.model_dir
    other = make_snapshot(tmp_path / "other", built.data_dir, dim=64)  # same width, random vectors
    with pytest.raises(ExplainError, match="family"):
        _explain(built, user_id=_some_user(built), scenario_id=_scenario(built), knowledge=other)
