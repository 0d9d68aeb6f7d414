"""Runner: incremental carry-over, crash-and-resume, PCA, float16, bad input.

Uses the transformers backend on the tiny random decoder (fast); vLLM is covered in test_vllm.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from feature_store.dataset import DataError
from feature_store.knowledge_snapshot import SnapshotError, load_snapshot
from feature_store.offline_store import OfflineStore
from knowledge_service.backends import release_backends
from knowledge_service.models import KnowledgeError
from knowledge_service.runner import build_knowledge, encode_shard, plan
from llm4msr.config import KnowledgeConfig
from tests.knowledge.conftest import churn, tiny_dataset, write_tiny


@pytest.fixture(scope="module", autouse=True)
def _release():
    yield
    release_backends()


@pytest.fixture(scope="module")
def cfg(tiny_decoder_dir: Path) -> KnowledgeConfig:
    return KnowledgeConfig(
        backend="transformers",
        model=str(tiny_decoder_dir),
        num_shards=4,
        batch_size=64,
        max_prompt_tokens=384,
        max_history_per_scenario=3,
    )


def _by_id(snap) -> dict[tuple[str, str], tuple[np.ndarray, str]]:
    r = snap.rows
    return {(r.kind[i], r.entity_id[i]): (r.vectors[i], r.prompt_hash[i]) for i in range(len(r))}


@pytest.mark.slow
def test_incremental_one_percent_churn(small_dataset_dir: Path, tmp_path: Path, cfg: KnowledgeConfig):
    root = tmp_path / "snap"
    first = build_knowledge(small_dataset_dir, root, cfg)
    assert first.n_carried == 0 and first.n_encoded == first.n_scenarios + first.n_users
    a = load_snapshot(first.path)
    churned, changed = churn(small_dataset_dir, tmp_path / "churned", fraction=0.01)
    assert len(changed) == 3
    second = build_knowledge(churned, root, cfg)
    b = load_snapshot(second.path)
    # re-encoded: exactly the changed users, plus the scenarios whose statistics moved
    assert second.n_carried + second.n_encoded == first.n_encoded
    assert len(changed) <= second.n_encoded <= len(changed) + first.n_scenarios
    va, vb = _by_id(a), _by_id(b)
    for key, (vec, h) in vb.items():
        if key[0] == "user" and key[1] in changed:
            assert h != va[key][1]
        elif key[0] == "user":
            assert h == va[key][1] and np.array_equal(vec, va[key][0])  # bit-identical carry-over
    assert b.manifest["n_carried"] == second.n_carried and b.manifest["base_snapshot"] == str(first.path)
    assert OfflineStore(root).current_id() == second.snapshot_id
    assert not (root / ".work").exists() or not any((root / ".work").iterdir())


@pytest.mark.slow
def test_crash_and_resume_matches_uninterrupted_run(
    small_dataset_dir: Path, tmp_path: Path, cfg: KnowledgeConfig
):
    crashed, clean = tmp_path / "crashed", tmp_path / "clean"
    seen: list[int] = []

    def crash_after_two(i: int) -> None:
        seen.append(i)
        if len(seen) == 2:
            raise RuntimeError("injected crash")

    with pytest.raises(RuntimeError, match="injected crash"):
        build_knowledge(small_dataset_dir, crashed, cfg, after_shard=crash_after_two)
    store = OfflineStore(crashed)
    assert store.current_id() is None and store.list_versions() == []  # nothing partial is visible
    resumed = build_knowledge(small_dataset_dir, crashed, cfg)
    assert resumed.shards_resumed == 2
    reference = build_knowledge(small_dataset_dir, clean, cfg)
    assert reference.shards_resumed == 0
    a, b = load_snapshot(resumed.path), load_snapshot(reference.path)
    assert a.rows.entity_id == b.rows.entity_id and a.rows.kind == b.rows.kind
    assert a.rows.prompt_hash == b.rows.prompt_hash
    assert np.array_equal(a.rows.vectors, b.rows.vectors)
    assert a.manifest["knowledge_family"] == b.manifest["knowledge_family"]


def test_encode_shard_subset_then_build(tiny_dataset_dir: Path, tmp_path: Path, cfg: KnowledgeConfig):
    """A worker that encoded only some shards: the next build encodes the rest only."""
    kp = plan(tiny_dataset_dir, tmp_path / "snap", cfg)
    encode_shard(kp, 0)
    assert kp.missing_shards() == [1, 2, 3]
    report = build_knowledge(tiny_dataset_dir, tmp_path / "snap", cfg)
    assert report.shards_resumed == 1 and report.n_users == 5 and report.n_users_without_history == 1


@pytest.mark.slow
def test_pca_and_float16(small_dataset_dir: Path, tmp_path: Path, cfg: KnowledgeConfig):
    root = tmp_path / "snap"
    c = cfg.model_copy(update={"pca_dim": 16, "storage_dtype": "float16"})
    first = build_knowledge(small_dataset_dir, root, c)
    snap = load_snapshot(first.path)
    assert snap.manifest["dimension"] == 16 and snap.manifest["dtype"] == "float16"
    assert snap.rows.vectors.dtype == np.float16 and snap.rows.vectors.shape[1] == 16
    assert (first.path / "pca.npz").is_file() and snap.manifest["pca"]["raw_dimension"] == 64
    assert 0 < snap.manifest["pca"]["explained_variance"] <= 1.0
    # incremental: the PCA transform is reused, so carried and new vectors share one space/family
    churned, _ = churn(small_dataset_dir, tmp_path / "churned")
    second = build_knowledge(churned, root, c)
    snap2 = load_snapshot(second.path)
    assert snap2.manifest["pca"]["reused_from"] == str(first.path)
    assert snap2.manifest["knowledge_family"] == snap.manifest["knowledge_family"]
    with np.load(first.path / "pca.npz") as p1, np.load(second.path / "pca.npz") as p2:
        assert np.array_equal(p1["components"], p2["components"])
    assert second.n_carried > 0


def test_dimension_mismatch_keeps_current(tiny_dataset_dir: Path, tmp_path: Path, cfg: KnowledgeConfig):
    root = tmp_path / "snap"
    first = build_knowledge(tiny_dataset_dir, root, cfg)
    other = cfg.model_copy(update={"model": "minilm"})  # 384-dim vs the tiny decoder's 64
    with pytest.raises(KnowledgeError, match=r"dimension mismatch.*dimension 64.*produce 384.*--full"):
        build_knowledge(tiny_dataset_dir, root, other)
    assert OfflineStore(root).current_id() == first.snapshot_id
    with pytest.raises(KnowledgeError, match="larger than the model's dimension 64"):
        build_knowledge(tiny_dataset_dir, root, cfg.model_copy(update={"pca_dim": 100}))


def test_bad_models(tiny_dataset_dir: Path, tmp_path: Path, cfg: KnowledgeConfig, tiny_decoder_dir: Path):
    root = tmp_path / "snap"
    first = build_knowledge(tiny_dataset_dir, root, cfg)
    with pytest.raises(
        KnowledgeError, match=r"model '/nonexistent/model': folder /nonexistent/model does not exist"
    ):
        build_knowledge(tiny_dataset_dir, root, cfg.model_copy(update={"model": "/nonexistent/model"}))
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_decoder_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(KnowledgeError, match=r"broken-model: transformers cannot load it"):
        build_knowledge(tiny_dataset_dir, root, cfg.model_copy(update={"model": str(broken)}), full=True)
    assert OfflineStore(root).current_id() == first.snapshot_id
    with pytest.raises(KnowledgeError, match="two_pass needs a decoder"):
        build_knowledge(tiny_dataset_dir, root, cfg.model_copy(update={"model": "minilm", "two_pass": True}))


def test_bad_datasets(tmp_path: Path, cfg: KnowledgeConfig):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a canonical dataset"):
        build_knowledge(tmp_path / "empty", tmp_path / "snap", cfg)
    ds = tiny_dataset()
    ds.interactions = ds.interactions.with_columns(split=ds.interactions["split"].replace("train", "valid"))
    from feature_store.dataset import write_dataset

    no_train = write_dataset(ds, tmp_path / "no-train", source={"dataset": "t"})
    with pytest.raises(KnowledgeError, match="no user has training interactions"):
        build_knowledge(no_train, tmp_path / "snap", cfg)
    long = write_tiny(tmp_path / "long", scenario_description="word " * 400)
    with pytest.raises(KnowledgeError, match=r"scenario 's1': prompt has \d+ tokens, over the budget of 384"):
        build_knowledge(long, tmp_path / "snap", cfg)
    assert OfflineStore(tmp_path / "snap").current_id() is None


def test_not_a_snapshot(tiny_dataset_dir: Path, tmp_path: Path, cfg: KnowledgeConfig):
    with pytest.raises(SnapshotError, match="is not a knowledge snapshot"):
        load_snapshot(tmp_path)
    root = tmp_path / "snap"
    first = build_knowledge(tiny_dataset_dir, root, cfg)
    manifest = json.loads((first.path / "manifest.json").read_text())
    manifest["format_version"] = 99
    (first.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(KnowledgeError, match="current snapshot of .* is broken: .*format_version 99"):
        build_knowledge(tiny_dataset_dir, root, cfg)
    assert OfflineStore(root).current_id() == first.snapshot_id
