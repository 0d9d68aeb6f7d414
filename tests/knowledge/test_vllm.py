"""Real vLLM (CPU build): parity with the transformers reference, two-pass generation, CLI end to end.

vLLM start-ups are the slow part, so each model is loaded once for the module through the cached
backend factory (same key as the builds below use) and released at the end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from feature_store.knowledge_snapshot import load_snapshot
from knowledge_service.backends import get_backend, release_backends
from knowledge_service.models import load_tokenizer, model_info
from knowledge_service.runner import build_knowledge, plan
from llm4msr.config import KnowledgeConfig
from pipelines.cli import main as cli_main

pytestmark = pytest.mark.slow

KV_GIB = 0.25  # small KV cache: the machine is shared


@pytest.fixture(scope="module", autouse=True)
def _release():
    yield
    release_backends()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _parity(model: str, dataset_dir: Path, tmp_path: Path, max_prompt_tokens: int) -> tuple[np.ndarray, str]:
    cfg = KnowledgeConfig(model=model, max_prompt_tokens=max_prompt_tokens, vllm_kv_cache_gib=KV_GIB)
    kp = plan(dataset_dir, tmp_path / "plan", cfg)
    ids = [p.token_ids for p in kp.prompts[:40]]
    info = model_info(model)
    v = get_backend("vllm", info, kp.pooling, max_model_len=kp.max_model_len, kv_cache_gib=KV_GIB).embed(ids)
    t = get_backend("transformers", info, kp.pooling, max_model_len=kp.max_model_len).embed(ids)
    assert v.shape == t.shape == (len(ids), info.hidden_size)
    assert np.isfinite(v).all() and (np.linalg.norm(v, axis=1) > 0).all()
    return _cosines(v, t), kp.pooling


def test_parity_minilm_mean(small_dataset_dir: Path, tmp_path: Path):
    cos, pooling = _parity("minilm", small_dataset_dir, tmp_path, 256)
    assert pooling == "MEAN"
    assert cos.min() >= 0.9999, cos.min()


def test_parity_tiny_decoder_last(small_dataset_dir: Path, tmp_path: Path, tiny_decoder_dir: Path):
    cos, pooling = _parity(str(tiny_decoder_dir), small_dataset_dir, tmp_path, 384)
    assert pooling == "LAST"
    assert cos.min() >= 0.9999, cos.min()


def test_two_pass_stores_answers(tiny_dataset_dir: Path, tmp_path: Path, tiny_decoder_dir: Path):
    # budget 368 + 16 new tokens = max_model_len 384: the same pooling engine as the parity test
    cfg = KnowledgeConfig(
        model=str(tiny_decoder_dir),
        two_pass=True,
        max_new_tokens=16,
        max_prompt_tokens=368,
        vllm_kv_cache_gib=KV_GIB,
        num_shards=2,
    )
    report = build_knowledge(tiny_dataset_dir, tmp_path / "snap", cfg)
    snap = load_snapshot(report.path)
    assert snap.manifest["two_pass"] is True and snap.manifest["backend"] == "vllm"
    assert len(snap.rows) == 3 + 5
    assert all(isinstance(a, str) and a for a in snap.rows.answer)
    # the vector pools prompt + answer: it differs from the one-pass vector of the same prompt
    kp = plan(tiny_dataset_dir, tmp_path / "plan", cfg.model_copy(update={"two_pass": False}))
    one_pass = get_backend(
        "vllm", model_info(str(tiny_decoder_dir)), "LAST", max_model_len=384, kv_cache_gib=KV_GIB
    ).embed([kp.prompts[0].token_ids])
    assert not np.allclose(one_pass[0], snap.rows.vectors[0])
    tok = load_tokenizer(model_info(str(tiny_decoder_dir)).path)
    assert tok.decode(tok.encode_batch([snap.rows.answer[0]])[0]).strip() == snap.rows.answer[0]


def test_cli_build_and_show_synthetic(small_dataset_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    root = tmp_path / "knowledge"
    rc = cli_main(
        [
            "knowledge",
            "build",
            "--data",
            str(small_dataset_dir),
            "--knowledge",
            str(root),
            "--set",
            f"knowledge.vllm_kv_cache_gib={KV_GIB}",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "encoded 303, carried over 0" in out
    snap = load_snapshot(root / "versions" / (root / "CURRENT").read_text().strip())
    from feature_store.dataset import load_dataset

    ds = load_dataset(small_dataset_dir)
    users_with_train = set(ds.interactions.filter(ds.interactions["split"] == "train")["user_id"].to_list())
    assert set(snap.vectors_of("scenario")[0]) == set(ds.scenarios["scenario_id"].to_list())
    assert set(snap.vectors_of("user")[0]) == users_with_train
    assert snap.manifest["backend"] == "vllm" and snap.manifest["model_id"].startswith("all-MiniLM-L6-v2@")
    uid = sorted(users_with_train)[0]
    assert cli_main(["knowledge", "show", "--knowledge", str(root), "--user", uid, "-k", "3"]) == 0
    shown = capsys.readouterr().out
    assert f"user {uid}" in shown and "vector norm" in shown and "nearest users by cosine" in shown
    assert "Question: what are this user's interests" in shown
    assert cli_main(["knowledge", "show", "--knowledge", str(tmp_path), "--user", uid]) == 2
    assert "is neither a knowledge snapshot" in capsys.readouterr().err


def test_cli_build_movielens_100k(tmp_path: Path, capsys: pytest.CaptureFixture):
    from feature_store.build import build_and_write
    from llm4msr.config import REPO_ROOT, DataConfig

    src = REPO_ROOT.parent / "shared" / "data" / "ml-100k"  # ../shared beside the checkout (README)
    data = build_and_write(DataConfig(dataset="movielens", path=str(src)), tmp_path / "ml-100k")
    root = tmp_path / "knowledge"
    assert (
        cli_main(
            [
                "knowledge",
                "build",
                "--data",
                str(data),
                "--knowledge",
                str(root),
                "--set",
                f"knowledge.vllm_kv_cache_gib={KV_GIB}",
            ]
        )
        == 0
    )
    capsys.readouterr()
    snap = load_snapshot(root / "versions" / (root / "CURRENT").read_text().strip())
    assert snap.manifest["counts"]["scenario"] >= 3
    assert snap.manifest["counts"]["user"] + snap.manifest["users_without_history"] == 943
    assert snap.manifest["counts"]["user"] >= 900
