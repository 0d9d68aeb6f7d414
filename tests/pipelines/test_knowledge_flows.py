"""Knowledge flows under Prefect's test harness: nightly run, idempotent re-run, interrupted run +
resume, feature refresh, Dask fan-out and real vLLM. Real LLMs (MiniLM), real stores, real Prefect."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from feature_store.offline_store import OfflineStore
from feature_store.online import open_store
from llm4msr.config import load_config
from pipelines.flows.common import FAIL_SHARD_ENV
from tests.pipelines.conftest import assert_json_only, snapshot_vectors, write_flow_config


def _pointers(cfg_path: Path) -> tuple[str | None, str | None, list[str]]:
    s = load_config(cfg_path)
    offline = OfflineStore(s.knowledge.snapshot_root)
    with open_store(s.store.url, s.store) as online:
        cur = online.current()
    return offline.current_id(), (cur.version if cur else None), offline.list_versions()


def _copy_state(src_root: Path, dst_root: Path) -> None:
    for name in ("knowledge", "online"):
        shutil.copytree(src_root / name, dst_root / name)


def test_nightly_publishes_offline_and_online(nightly_run: dict) -> None:
    report = nightly_run["report"]
    assert report.status == "published"
    sid = report.snapshot_id
    offline_id, online_id, versions = _pointers(nightly_run["config"])
    assert offline_id == sid and online_id == sid and versions == [sid]
    plan = report.plan
    assert plan.n_encode == plan.n_prompts > 0 and plan.n_carry == 0
    assert report.snapshot.counts["scenario"] >= 3
    assert report.snapshot.counts["user"] + plan.n_users_without_history == 40
    assert report.materialize.keys_written == plan.n_prompts
    assert set(report.timings) == {"data", "plan", "encode", "assemble", "materialize"}
    assert Path(report.report_path).is_file()
    # every planned shard was encoded by its own task
    assert sorted(s.shard for s in report.shards) == [0, 1, 2]
    assert sum(s.n for s in report.shards) == plan.n_encode


def test_rerun_is_a_noop(nightly_run: dict) -> None:
    from pipelines.flows.knowledge import nightly_knowledge

    sid = nightly_run["report"].snapshot_id
    again = nightly_knowledge(config=str(nightly_run["config"]))
    assert again.status == "up-to-date"
    assert again.snapshot_id == sid
    assert again.plan.n_encode == 0 and again.plan.n_carry == again.plan.n_prompts
    assert again.materialize.already_current is True
    assert _pointers(nightly_run["config"]) == (sid, sid, [sid])


def test_interrupted_run_never_exposes_a_partial_version(
    nightly_run: dict, tiny_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.flows.knowledge import nightly_knowledge

    old = nightly_run["report"].snapshot_id
    cfg = write_flow_config(tmp_path, tiny_data_dir)
    _copy_state(nightly_run["root"], tmp_path)

    monkeypatch.setenv(FAIL_SHARD_ENV, "1")
    with pytest.raises(RuntimeError, match="failing shard 1"):
        nightly_knowledge(config=str(cfg), full=True)
    # both current pointers still on the old version, and no new version folder is visible
    assert _pointers(cfg) == (old, old, [old])
    work = list((tmp_path / "knowledge" / ".work").iterdir())
    assert len(work) == 1 and (work[0] / "shard-00000.parquet").is_file()
    assert not (work[0] / "shard-00001.parquet").exists()
    # the results folder holds the finished shards' cached results and the failure's record, all JSON
    results = tmp_path / "pipelines" / "results"
    cached = assert_json_only(results)
    assert cached and all(p.name.startswith("llm4msr-encode-shard-") for p in cached)
    failures = [json.loads(p.read_text()) for p in results.iterdir() if not p.name.startswith("llm4msr-")]
    assert [json.loads(f["result"])["__exc_type__"] for f in failures] == ["builtins.RuntimeError"]

    monkeypatch.delenv(FAIL_SHARD_ENV)
    report = nightly_knowledge(config=str(cfg), full=True)
    assert report.status == "published"
    assert 1 in report.plan.missing_shards and 0 not in report.plan.missing_shards
    new = report.snapshot_id
    assert new != old
    assert _pointers(cfg) == (new, new, sorted([old, new]))
    # the resumed run produced the same vectors as the uninterrupted one
    a, b = (
        snapshot_vectors(report.snapshot.path),
        snapshot_vectors(nightly_run["report"].snapshot.path),
    )
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_feature_refresh_reencodes_only_changed_users(
    nightly_run: dict, tiny_data_dir: Path, tmp_path: Path
) -> None:
    from feature_store.dataset import load_dataset, write_dataset
    from pipelines.flows.knowledge import feature_refresh

    # a new training interaction lands for one user (before their cutoff, so their prompt changes)
    ds = load_dataset(tiny_data_dir)
    train = ds.interactions.filter(pl.col("split") == "train").sort("user_id", "timestamp")
    row = train.filter(pl.col("user_id") == train["user_id"][0]).tail(1)  # their latest training row
    user = row["user_id"][0]
    seen = set(ds.interactions.filter(pl.col("user_id") == user)["item_id"].to_list())
    new_item = next(i for i in ds.items["item_id"].to_list() if i not in seen)
    added = row.with_columns(
        pl.lit(new_item).alias("item_id"),
        pl.lit(1, pl.Int8).alias("label"),
        (pl.col("timestamp") - 1).alias("timestamp"),
    )
    ds.interactions = pl.concat([ds.interactions, added])
    data2 = write_dataset(ds, tmp_path / "data2", source={"dataset": "synthetic", "note": "refresh test"})

    old = nightly_run["report"].snapshot_id
    cfg = write_flow_config(tmp_path, data2)
    _copy_state(nightly_run["root"], tmp_path)
    report = feature_refresh(config=str(cfg))
    assert report.status == "published"
    plan = report.plan
    # the user (and the scenario whose statistics moved) are re-encoded; everyone else is carried
    assert 1 <= plan.n_encode <= 1 + report.snapshot.counts["scenario"]
    assert plan.n_carry == plan.n_prompts - plan.n_encode
    new = report.snapshot_id
    assert _pointers(cfg) == (new, new, sorted([old, new]))
    assert report.snapshot.knowledge_family == nightly_run["report"].snapshot.knowledge_family
    a, b = (
        snapshot_vectors(report.snapshot.path),
        snapshot_vectors(nightly_run["report"].snapshot.path),
    )
    changed = {k for k in a if not np.array_equal(a[k], b[k])}
    assert ("user", user) in changed and len(changed) == plan.n_encode

    # nothing new: the refresh does nothing
    again = feature_refresh(config=str(cfg))
    assert again.status == "up-to-date" and again.snapshot_id == new


def test_feature_refresh_refuses_another_knowledge_family(
    nightly_run: dict, tiny_data_dir: Path, tmp_path: Path
) -> None:
    from pipelines.flows.knowledge import FlowError, feature_refresh

    cfg = write_flow_config(tmp_path, tiny_data_dir, knowledge={"pooling": "LAST"})
    _copy_state(nightly_run["root"], tmp_path)
    with pytest.raises(FlowError, match="pooling"):
        feature_refresh(config=str(cfg))


@pytest.mark.slow
def test_dask_cluster_gives_the_same_snapshot(nightly_run: dict, tiny_data_dir: Path, tmp_path: Path) -> None:
    """Shards on a LocalCluster with 2 worker processes (each loads MiniLM once) == sequential run."""
    from pipelines.flows.knowledge import nightly_knowledge

    cfg = write_flow_config(
        tmp_path,
        tiny_data_dir,
        pipelines={"task_runner": "dask", "dask_n_workers": 2, "dask_processes": True},
    )
    report = nightly_knowledge(config=str(cfg), materialize=False)
    assert report.status == "published" and report.materialize is None
    a, b = (
        snapshot_vectors(report.snapshot.path),
        snapshot_vectors(nightly_run["report"].snapshot.path),
    )
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_nightly_with_real_vllm(nightly_run: dict, tiny_data_dir: Path, tmp_path: Path) -> None:
    """The default backend (vLLM on CPU, MiniLM, MEAN pooling) agrees with the transformers run."""
    from pipelines.flows.knowledge import nightly_knowledge

    cfg = write_flow_config(tmp_path, tiny_data_dir, knowledge={"backend": "vllm", "num_shards": 2})
    report = nightly_knowledge(config=str(cfg))
    assert report.status == "published"
    sid = report.snapshot_id
    assert _pointers(cfg)[:2] == (sid, sid)
    a, b = (
        snapshot_vectors(report.snapshot.path),
        snapshot_vectors(nightly_run["report"].snapshot.path),
    )
    assert a.keys() == b.keys()
    cos = [float(np.dot(a[k], b[k]) / (np.linalg.norm(a[k]) * np.linalg.norm(b[k]))) for k in a]
    assert min(cos) > 0.999
