"""Model preparation (registered packaged models -> a converted local folder): pinned-hash refusal,
atomic writes, reuse. Fast: a fake package on sys.path holds the "model file"; the real SmolLM2
conversion is exercised by the slow test in test_smollm2.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from knowledge_service import models
from knowledge_service.models import (
    PREPARED_MANIFEST,
    PREPARED_MODELS,
    KnowledgeError,
    PreparedModelSpec,
    prepare_model,
    prepared_source,
)

CONTENT = b"not really a gguf file\n" * 100


@pytest.fixture
def fake_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A registered model whose file lives in an importable package created here."""
    pkg = tmp_path / "site" / "fake_llm_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('the package must never be imported')\n")
    (pkg / "model.gguf").write_bytes(CONTENT)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))

    def register(sha: str) -> PreparedModelSpec:
        spec = PreparedModelSpec(
            name="fake",
            package="fake_llm_pkg",
            file="model.gguf",
            sha256=sha,
            size=len(CONTENT),
            dtype="float32",
            version="v1",
        )
        monkeypatch.setitem(PREPARED_MODELS, "fake", spec)
        return spec

    return register, pkg


def test_smollm2_is_registered_and_found_without_import():
    spec = PREPARED_MODELS["smollm2"]
    path = prepared_source(spec)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size == spec.size == 98_362_432


def test_wrong_hash_is_refused(fake_spec, tmp_path: Path):
    register, pkg = fake_spec
    spec = register("0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(KnowledgeError) as err:
        prepare_model("fake", cache)
    msg = str(err.value)
    assert (
        str(pkg / "model.gguf") in msg and spec.sha256 in msg and hashlib.sha256(CONTENT).hexdigest() in msg
    )
    assert not cache.exists() or not any(cache.iterdir())  # nothing written


def test_failed_conversion_leaves_nothing(fake_spec, tmp_path: Path):
    register, _ = fake_spec
    spec = register(hashlib.sha256(CONTENT).hexdigest())  # right hash, but not a readable GGUF
    cache = tmp_path / "cache"
    with pytest.raises(KnowledgeError, match="cannot read"):
        prepare_model("fake", cache)
    assert list(cache.iterdir()) == []  # neither the final folder nor the temporary one
    assert not (cache / spec.folder_name).exists()


def test_prepared_folder_is_reused(fake_spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    register, pkg = fake_spec
    spec = register(hashlib.sha256(CONTENT).hexdigest())
    cache = tmp_path / "cache"
    calls: list[Path] = []

    def convert(spec: PreparedModelSpec, source: Path, out: Path) -> None:  # a stand-in converter
        calls.append(source)
        out.mkdir()
        (out / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))

    monkeypatch.setattr(models, "_convert", convert)
    first = prepare_model("fake", cache)
    man = json.loads((first / PREPARED_MANIFEST).read_text())
    assert man["settings"] == spec.settings() and man["source_sha256_verified"] == spec.sha256
    assert first.name == spec.folder_name and [p.name for p in cache.iterdir()] == [spec.folder_name]
    (pkg / "model.gguf").write_bytes(b"changed")  # reuse never needs (or re-reads) the source
    assert prepare_model("fake", cache) == first and len(calls) == 1


def test_incomplete_folder_is_an_error(fake_spec, tmp_path: Path):
    register, _ = fake_spec
    spec = register(hashlib.sha256(CONTENT).hexdigest())
    (tmp_path / "cache" / spec.folder_name).mkdir(parents=True)
    with pytest.raises(KnowledgeError, match="not a complete preparation"):
        prepare_model("fake", tmp_path / "cache")


def test_unknown_model_name(tmp_path: Path):
    with pytest.raises(KnowledgeError, match="does not exist"):
        models.resolve_model("no-such-model", tmp_path)
