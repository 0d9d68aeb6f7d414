"""`python -m bench.encoders` end to end on tiny settings: a tiny synthetic dataset, the tiny random
decoder in place of SmolLM2 (transformers backend, 4 answer tokens), one seed, one epoch. The report
has a row per variant, the throughput table, the churn refresh and the generated conclusion."""

from __future__ import annotations

import json

import pytest

import bench.ranker as rb
from bench.encoders import VARIANTS, main
from knowledge_service.backends import release_backends
from tests.ranker.helpers import FAST_TRAIN


@pytest.fixture(autouse=True)
def _release():
    yield
    release_backends()


def test_help_names_every_variant(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in VARIANTS) and "--decoder" in out


def test_unknown_variant_and_bad_setting_fail_before_anything_runs(capsys):
    assert main(["--variants", "minilm,gpt9"]) == 2
    assert main(["--set", "knowledge.snapshot_root=/x"]) == 2
    assert "gpt9" in capsys.readouterr().err


@pytest.mark.slow
def test_encoders_report_on_tiny_settings(tmp_path, monkeypatch, tiny_decoder_dir):
    monkeypatch.setitem(rb.DATASETS, "tiny", {"dataset": "synthetic", "path": None})
    sets = ["data.synthetic.n_users=30", "data.synthetic.n_items=30", "data.synthetic.n_interactions=1000"]
    sets += [*FAST_TRAIN, "knowledge.max_new_tokens=4", "knowledge.max_prompt_tokens=368"]
    sets += ["knowledge.num_shards=2"]
    out = tmp_path / "report.md"
    argv = ["--datasets", "tiny", "--backbones", "shared_bottom", "--seeds", "0", "--epochs", "1"]
    argv += [
        "--protocol",
        "temporal",
        "--knowledge-backend",
        "transformers",
        "--decoder",
        str(tiny_decoder_dir),
    ]
    argv += ["--work", str(tmp_path / "work"), "--out", str(out), "--churn", "0.1"]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    md = out.read_text()
    for v in VARIANTS.values():
        assert f"| {v.label} | tiny | shared_bottom | temporal |" in md  # ΔAUC row
        assert md.count(f"| {v.label} | tiny | temporal |") == 2  # throughput and refresh rows
    assert "## Encoding throughput" in md and "answer tokens/s" in md
    assert "## Nightly refresh at 10 % churn" in md and "| 3 of 30 |" in md
    assert "## Conclusion" in md and "Largest mean overall ΔAUC" in md
    assert "n/a (< 2 seeds)" in md  # one seed: no SE, the rule names no default
    assert "python -m bench.encoders --datasets tiny" in md
    # every variant has its own snapshot; the plain run is trained once and shared
    root = tmp_path / "work" / f"tiny{rb.data_tag(sets)}"
    snaps = sorted(p.name for p in root.iterdir() if p.name.startswith("knowledge"))
    assert len(snaps) == len(VARIANTS)
    plain = [p for p in root.glob("runs*/*plain*")]
    assert [p.parent.name for p in plain] == ["runs"]
    # two-pass snapshots record their answer-token throughput in the manifest
    for name in snaps:
        from feature_store.offline_store import OfflineStore

        man = json.loads((OfflineStore(root / name).current_path() / "manifest.json").read_text())
        assert man["encoding"]["prompts"] == man["n_encoded"] and man["encoding"]["prompts_per_s"] > 0
        assert (man["encoding"]["answer_tokens"] > 0) == bool(man["two_pass"])
    # a rerun reuses every snapshot and run (only the refresh copies are measured again)
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    assert "0 runs trained" in (tmp_path / "work" / "reports" / "ranker-minilm-temporal.md").read_text()
