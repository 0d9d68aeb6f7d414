"""Two-pass vector rules on the transformers reference backend (fast: tiny decoder + MiniLM)."""

from __future__ import annotations

from pathlib import Path

import pytest

from feature_store.knowledge_snapshot import load_snapshot
from knowledge_service.backends import release_backends
from knowledge_service.runner import build_knowledge
from llm4msr.config import KnowledgeConfig


@pytest.fixture(scope="module", autouse=True)
def _release():
    yield
    release_backends()


def test_encoder_rule_embeds_answers_with_minilm(
    tiny_dataset_dir: Path, tmp_path: Path, tiny_decoder_dir: Path
):
    cfg = KnowledgeConfig(
        backend="transformers",
        model=str(tiny_decoder_dir),
        two_pass=True,
        two_pass_vector="encoder",
        max_new_tokens=8,
        max_prompt_tokens=368,
        num_shards=2,
    )
    root = tmp_path / "snap"
    first = build_knowledge(tiny_dataset_dir, root, cfg)
    snap = load_snapshot(first.path)
    assert snap.rows.vectors.shape == (8, 384) and snap.manifest["pooling"] == "MEAN"
    assert snap.manifest["answer_model_id"].startswith("all-MiniLM-L6-v2@")
    assert snap.manifest["chat_template_sha256"] is None  # the tiny decoder ships no chat template
    assert all(isinstance(a, str) for a in snap.rows.answer)
    again = build_knowledge(tiny_dataset_dir, root, cfg)
    assert (again.n_encoded, again.n_carried) == (0, 8)
    other = build_knowledge(tiny_dataset_dir, root, cfg.model_copy(update={"max_new_tokens": 6}))
    assert (other.n_encoded, other.n_carried) == (8, 0)


def test_minilm_limit_is_its_sentence_transformers_max_seq_length():
    """vLLM derives MiniLM's limit from sentence_bert_config.json (256), not config.json (512): the
    answer encoder of the `encoder` rule must be loaded within it or vLLM refuses to start."""
    from knowledge_service.models import model_info

    assert model_info("minilm").max_len == 256
