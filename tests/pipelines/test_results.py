"""Typed flow results (JSON round trip, cache), snapshot retention, and the printed summaries of
`llm4msr flow run` and `llm4msr demo` on small fixture artifacts (no flow runs: fast)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from feature_store.materialize import MaterializeReport
from llm4msr.config import load_config
from pipelines.flows.registry import Decision
from pipelines.flows.results import (
    DatasetRef,
    Evaluation,
    ExportedModel,
    KnowledgeFlowResult,
    KnowledgeRef,
    PlanSummary,
    Registration,
    ShardResult,
    SnapshotInfo,
    TrainedRun,
    TrainFlowResult,
)


def knowledge_result(root: Path) -> KnowledgeFlowResult:
    plan = PlanSummary("rk", str(root / "plan.json"), "ab", 2, [3, 2], [], 5, 5, 0, 1, None, False)
    snap = SnapshotInfo(
        "s2", str(root / "knowledge/versions/s2"), "fam", 8, {"user": 4, "scenario": 1}, 5, 0, "cd"
    )
    mat = MaterializeReport(
        "s2", snap.path, str(root / "online"), "local", "fam", {"user": 4}, keys_written=5
    )
    return KnowledgeFlowResult(
        flow="nightly-knowledge",
        full=False,
        snapshot_root=str(root / "knowledge"),
        dataset=DatasetRef(str(root / "data"), "d1"),
        base_snapshot_id=None,
        plan=plan,
        snapshot=snap,
        snapshot_id="s2",
        status="published",
        shards=[ShardResult(0, 3, "a.parquet", "x", 0.5), ShardResult(1, 2, "b.parquet", "y", 0.25)],
        materialize=mat,
        retained_deleted=["s0"],
        timings={"data": 0.1, "plan": 0.2, "encode": 1.0},
        report_path=str(root / "reports/nightly.json"),
    )


def _write_run(path: Path, use_llm: bool, auc: dict[str, float]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    per = {s: {"auc": a, "gauc": float("nan"), "ndcg@10": a / 2} for s, a in auc.items() if s != "overall"}
    final = {"per_scenario": per, "overall": {"auc": auc["overall"], "gauc": None, "ndcg@10": 0.3}}
    (path / "metrics.json").write_text(json.dumps({"final": final, "best_valid_auc": auc["overall"]}))
    (path / "run.json").write_text(json.dumps({"use_llm": use_llm}))
    (path / "model.safetensors").write_bytes(b"w")


def train_result(root: Path, selected: bool = True) -> TrainFlowResult:
    runs = root / "runs" / "flow-1"
    _write_run(runs / "plain", False, {"electronics": 0.7, "books": 0.65, "overall": 0.68})
    _write_run(runs / "llm4msr", True, {"electronics": 0.72, "books": 0.66, "overall": 0.7})
    selection = {"keep": "llm4msr", "reason": "+LLM4MSR beyond 2 SE"} if selected else None
    run_dir = runs / "llm4msr" if selected else runs / "plain"
    decision = Decision(True, "no current model: first registration", 0.7, None, None, 0.002)
    return TrainFlowResult(
        flow="train",
        dataset=DatasetRef(str(root / "data"), "d1"),
        knowledge=KnowledgeRef(str(root / "knowledge/versions/s2"), "s2", "cd", {"foreign": False}),
        run=TrainedRun(str(run_dir), "w1", selection),
        evaluation=Evaluation(0.7, {}),
        export=ExportedModel(str(root / "exports/x"), {"passed": True, "max_abs_diff": 1e-7}, "dynamo"),
        registry=Registration(decision, True, "m1", "m1", str(root / "registry/versions/m1")),
        registered=True,
        reason=decision.reason,
        timings={"train": 2.0},
        report_path=str(root / "reports/train.json"),
    )


def test_results_round_trip_through_json(tmp_path: Path) -> None:
    for result in (knowledge_result(tmp_path), train_result(tmp_path)):
        data = json.loads(json.dumps(result.to_dict()))  # strictly JSON: no objects left
        again = type(result).from_dict(data)
        assert again == result
        assert isinstance(again.dataset, DatasetRef)
    k = KnowledgeFlowResult.from_dict(knowledge_result(tmp_path).to_dict())
    assert isinstance(k.materialize, MaterializeReport) and isinstance(k.shards[1], ShardResult)
    t = train_result(tmp_path)
    assert isinstance(TrainFlowResult.from_dict(t.to_dict()).registry.decision, Decision)
    with pytest.raises(TypeError, match="unknown fields"):
        DatasetRef.from_dict({"path": "x", "digest": None, "pickle": "..."})


def test_cached_result_rebuilds_the_annotated_type(tmp_path: Path) -> None:
    from pipelines.flows.common import cached_result

    calls = []

    @cached_result("key")
    def work(key: str, results_dir: str) -> TrainedRun:
        calls.append(key)
        return TrainedRun(run_dir=f"/runs/{key}", weights_sha256="00", selection={"keep": "plain"})

    first = work("a", str(tmp_path))
    second = work("a", str(tmp_path))
    assert calls == ["a"] and second == first and isinstance(second, TrainedRun)
    (stored,) = tmp_path.glob("*.json")
    assert json.loads(stored.read_text())["result"] == first.to_dict()
    # a record that is JSON but not this type is replaced by a fresh result
    record = json.loads(stored.read_text())
    record["result"] = {"something": "else"}
    stored.write_text(json.dumps(record))
    assert work("a", str(tmp_path)) == first and calls == ["a", "a"]


def _version(
    root: Path, vid: str, mtime: int, marker: str = "manifest.json", body: dict | None = None
) -> None:
    folder = root / "versions" / vid
    folder.mkdir(parents=True)
    (folder / marker).write_text(json.dumps(body or {}))
    os.utime(folder / marker, (mtime, mtime))


def test_snapshot_retention_spares_current_and_pinned(tmp_path: Path) -> None:
    from feature_store.offline_store import OfflineStore
    from pipelines.flows.knowledge import retain_snapshots

    kroot, registry = tmp_path / "knowledge", tmp_path / "registry"
    for i, vid in enumerate(["s1", "s2", "s3", "s4", "s5"]):
        _version(kroot, vid, 1_000_000 + i)
    (kroot / "CURRENT").write_text("s3\n")  # e.g. rolled back: newer versions exist
    _version(registry, "m1", 1_000_000, "registry.json", {"knowledge_snapshot_id": "s1"})
    (registry / "CURRENT").write_text("m1\n")
    settings = load_config(
        None,
        [f"knowledge.snapshot_root={kroot}", f"pipelines.registry_dir={registry}", "store.keep_versions=2"],
    )
    assert retain_snapshots(settings) == ["s2"]  # s1: pinned by the current model, s3: current
    assert OfflineStore(kroot).list_versions() == ["s1", "s3", "s4", "s5"]
    (registry / "CURRENT").unlink()  # no current model: nothing pinned
    assert retain_snapshots(settings) == ["s1"]
    assert retain_snapshots(settings) == []  # idempotent


def test_flow_run_summaries(tmp_path: Path) -> None:
    assert knowledge_result(tmp_path).summary_lines() == [
        "nightly-knowledge: published, snapshot s2 (5 encoded, 0 carried over)",
        f"  snapshot   {tmp_path}/knowledge/versions/s2",
        f"  online     {tmp_path}/online version s2 (5 keys written)",
        "  removed    old snapshots s0 (store.keep_versions)",
        "  seconds    1.3 (data 0.1, plan 0.2, encode 1.0)",
        f"  report     {tmp_path}/reports/nightly.json",
    ]
    lines = train_result(tmp_path).summary_lines()
    assert lines[0] == "train: registered model m1"
    assert lines[1] == "  reason     no current model: first registration"
    assert lines[2].endswith("llm4msr (validation AUC 0.7000)")
    assert "  selection  +LLM4MSR beyond 2 SE" in lines


def test_flow_run_prints_summary_or_json(tmp_path: Path, monkeypatch, capsys) -> None:
    """`llm4msr flow run`: the summary by default, the full report with --json; exit 3 when refused."""
    import pipelines.flows as flows_pkg
    from pipelines.cli import main

    result = train_result(tmp_path)
    monkeypatch.setattr(flows_pkg, "flows", lambda: {"train": lambda **kw: result})
    assert main(["flow", "run", "train"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "train: registered model m1"
    assert main(["flow", "run", "train", "--json"]) == 0
    assert TrainFlowResult.from_dict(json.loads(capsys.readouterr().out)) == result
    result.registered = False
    result.registry.registered = False
    assert main(["flow", "run", "train"]) == 3


def test_demo_summary_table(tmp_path: Path) -> None:
    from pipelines.demo import DemoSummary, ScoredRequest, summary_lines

    settings = load_config(
        None, [f"store.url={tmp_path}/online", f"pipelines.registry_dir={tmp_path}/registry"]
    )
    req = ScoredRequest(
        "u1", "electronics", ["i1", "i2", "i3"], 1.25, [("i2", 0.9), ("i1", 0.5), ("i3", 0.1)]
    )
    summary = DemoSummary(
        seconds_total=12.5,
        knowledge=knowledge_result(tmp_path),
        train=train_result(tmp_path),
        model_dir=f"{tmp_path}/registry/versions/m1",
        settings=settings,
        requests=[req],
    )
    lines = summary_lines(summary)
    start = lines.index("test metrics per scenario (star; plain vs +LLM4MSR):")
    assert lines[start + 1 : start + 5] == [  # gAUC: '-' everywhere (one row per user), no column
        "  scenario       AUC plain  AUC +LLM4MSR  NDCG@10 plain  NDCG@10 +LLM4MSR     ΔAUC",
        "  electronics       0.7000        0.7200         0.3500            0.3600  +0.0200",
        "  books             0.6500        0.6600         0.3250            0.3300  +0.0100",
        "  overall           0.6800        0.7000         0.3000            0.3000  +0.0200",
    ]
    assert lines[start + 5] == "  kept: +LLM4MSR beyond 2 SE"
    assert lines[:3] == [
        "== LLM4MSR demo finished in 12.5s",
        "  knowledge flow  seconds 1.3 (data 0.1, plan 0.2, encode 1.0)",
        "  train flow      seconds 2.0 (train 2.0)",
    ]
    written = lines[lines.index("written:") + 1 : lines.index("written:") + 8]
    assert [w.split()[0] for w in written] == [
        "dataset",
        "knowledge",
        "online",
        "training",
        "registry",
        "knowledge",
        "train",
    ]
    assert written[4] == f"  registry            {tmp_path}/registry  (registered m1)"
    assert len({w.index("/") for w in written}) == 1  # values aligned in one column
    assert (
        "  user u1 scenario electronics: 3 candidates in 1.2 ms, top 3: i2 0.900, i1 0.500, i3 0.100" in lines
    )
    assert lines[-2] == f"  llm4msr serve --model {tmp_path}/registry/versions/m1 --store {tmp_path}/online"
    assert lines[-1] == (
        "  curl -s -X POST http://127.0.0.1:8080/score -H 'content-type: application/json' -d "
        '\'{"user_id": "u1", "scenario_id": "electronics", "item_ids": ["i1", "i2", "i3"]}\''
    )
    # a fixed-variant run: one column per metric, no delta
    summary.train = train_result(tmp_path / "fixed", selected=False)
    lines = summary_lines(summary)
    start = lines.index("test metrics per scenario (star; plain):")
    assert lines[start + 1].split() == ["scenario", "AUC", "NDCG@10"]
