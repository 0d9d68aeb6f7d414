"""`llm4msr bench ranker`: protocols, and one tiny end-to-end run of both (random-vector knowledge
instead of the LLM, one epoch of a tiny model) whose reports have the baseline, ΔAUC with SE,
verdicts, slices and the ΔAUC plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import bench.ranker as bench
from bench.ranker import PROTOCOLS, data_config, data_tag, dataset_root, knowledge_tag, main, report_path
from llm4msr.config import ConfigError, load_config
from ranker.baseline import BASELINE_VARIANT
from ranker.report import LLM, find_runs, slice_report
from ranker.slices import SCENARIOS, run_slice_aucs, train_rows
from tests.ranker.helpers import FAST_TRAIN, make_snapshot


def test_protocols_map_to_their_splits():
    rnd = data_config("ml-100k", [], PROTOCOLS["random"]).split
    assert (rnd.strategy, rnd.valid_ratio, rnd.test_ratio) == ("random", 0.1, 0.1)
    tmp = data_config("ml-100k", [], PROTOCOLS["temporal"]).split
    assert (tmp.strategy, tmp.n_valid, tmp.n_test) == ("leave_last_n", 1, 1)
    assert tmp == data_config("ml-100k", []).split  # temporal = the adapter defaults (data reused)
    # a --set that only refines the protocol's split is fine; one that contradicts it is refused
    assert data_config("ml-100k", ["data.split.test_ratio=0.2"], PROTOCOLS["random"]).split.test_ratio == 0.2
    with pytest.raises(ConfigError, match="use --protocol random"):
        data_config("ml-100k", ["data.split.strategy=random"], PROTOCOLS["temporal"])
    # own folders and reports; temporal keeps the names reports had before protocols existed
    assert dataset_root("ml-100k", Path("w"), [], PROTOCOLS["temporal"]) == Path("w/ml-100k")
    assert dataset_root("ml-100k", Path("w"), [], PROTOCOLS["random"]) == Path("w/ml-100k-random")
    names = [report_path(["ml-100k"], [], p, True, None, False).name for p in PROTOCOLS.values()]
    assert names == ["ranker-ml-100k-quick.md", "ranker-ml-100k-random-quick.md"]
    assert report_path(["d"], [], PROTOCOLS["random"], False, "x/r.md", True) == Path("x/r-random.md")


def test_contradicting_split_fails_before_anything_runs(capsys):
    assert main(["--quick", "--protocol", "both", "--set", "data.split.strategy=random"]) == 2
    assert "contradicts --protocol temporal" in capsys.readouterr().err


def test_bench_both_protocols_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setitem(bench.DATASETS, "tiny", {"dataset": "synthetic", "path": None})

    def fake_knowledge(data_dir, root, cfg, *a, **kw):  # random vectors, recording the data id
        return make_snapshot(Path(root), Path(data_dir), dim=16, drop_users=0)

    monkeypatch.setattr("knowledge_service.runner.build_knowledge", fake_knowledge)
    sets = [
        "data.synthetic.n_users=40",
        "data.synthetic.n_items=30",
        "data.synthetic.n_interactions=1500",
        *FAST_TRAIN,
    ]
    argv = ["--datasets", "tiny", "--backbones", "shared_bottom", "--seeds", "0,1", "--epochs", "1"]
    argv += ["--protocol", "both", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "rep.md")]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    for proto, split in (("temporal", "split leave_last_n"), ("random", "split random (valid_ratio=0.1")):
        md = (tmp_path / f"rep-{proto}.md").read_text()
        assert f"**Protocol: {proto}**" in md and split in md
        assert f"| {BASELINE_VARIANT} | **overall** |" in md
        assert "| shared_bottom | plain | **overall** |" in md and "| shared_bottom | +LLM4MSR |" in md
        assert "| shared_bottom | +LLM4MSR (select=auto) |" in md  # per seed, the run selection keeps
        # --epochs 1: every run peaked at its last epoch, so each was trained again with 2 epochs
        assert "Trained again with twice the epochs because their best epoch was the last:" in md
        assert "shared_bottom +LLM4MSR seed 0 (" in md and "shared_bottom plain seed 1 (" in md
        assert "Convergence" in md
        assert "ΔAUC ± SE" in md and "## Verdict per backbone" in md and "beats plain overall" in md
        assert "## Slices where knowledge should matter" in md and "| history 0 |" in md
        assert "multi-scenario user" in md
        assert (tmp_path / f"rep-{proto}.png").read_bytes()[:4] == b"\x89PNG"
    work = tmp_path / "work"
    for run in find_runs([work]):
        if not run.is_baseline:
            assert load_config(run.path / "config.yaml").train.epochs == 2, run.path
    # a second invocation reuses the extended runs instead of training them again
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    assert "(0 runs trained, 4 reused" in (tmp_path / "rep-temporal.md").read_text()
    assert {p.name for p in work.iterdir()} == {
        f"tiny{bench.data_tag(sets)}",
        f"tiny-random{bench.data_tag(sets)}",
    }
    assert (work / f"tiny-random{bench.data_tag(sets)}" / "runs" / "baseline" / "run.json").is_file()
    # the slice table aggregates each run's own slice AUCs over seeds and pairs them with plain
    runs = find_runs([work / f"tiny{bench.data_tag(sets)}" / "runs"])
    rows = {(s.family, s.name): s for s in slice_report(runs).rows}
    multi = rows[(SCENARIOS, "2+")]
    train = train_rows(runs[0].info["dataset"]["path"])
    per_run = {
        r.info["seed"] if not r.is_baseline else "baseline": {
            (s.family, s.name): s.auc for s in run_slice_aucs(r.path, train)
        }[(SCENARIOS, "2+")]
        for r in runs
        if r.is_baseline or r.variant == LLM
    }
    assert multi.other is not None and multi.other[0] == pytest.approx((per_run[0] + per_run[1]) / 2)
    assert multi.baseline == pytest.approx(per_run["baseline"])
    assert multi.diff is not None and multi.diff.n_a == multi.diff.n_b == 2


def test_knowledge_overrides_get_their_own_snapshot_runs_and_report(tmp_path, monkeypatch):
    """--set knowledge.* reaches the knowledge build (it used to be ignored), with its own snapshot
    root, +LLM4MSR runs and report name; plain runs are shared; the report states the encoder read
    from the snapshot's manifest."""
    monkeypatch.setitem(bench.DATASETS, "tiny", {"dataset": "synthetic", "path": None})
    built = []

    def fake_knowledge(data_dir, root, cfg, *a, **kw):
        built.append(
            (Path(root).name, cfg.model, cfg.pooling, cfg.max_history_per_scenario, cfg.snapshot_root)
        )
        return make_snapshot(Path(root), Path(data_dir), dim=16, drop_users=0)

    monkeypatch.setattr("knowledge_service.runner.build_knowledge", fake_knowledge)
    sets = ["data.synthetic.n_users=30", "data.synthetic.n_items=30", "data.synthetic.n_interactions=1000"]
    sets += FAST_TRAIN
    ksets = ["knowledge.pooling=MEAN", "knowledge.max_history_per_scenario=3"]
    work = tmp_path / "work"
    argv = ["--datasets", "tiny", "--backbones", "shared_bottom", "--seeds", "0", "--epochs", "1"]
    argv += ["--work", str(work), "--no-extend"]  # the run counts below are of one training each
    flags = [a for s in sets for a in ("--set", s)]
    assert main([*argv, *flags, "--out", str(tmp_path / "default.md")]) == 0
    kflags = [a for s in ksets for a in ("--set", s)]
    assert main([*argv, *flags, *kflags, "--out", str(tmp_path / "k.md")]) == 0
    tag = knowledge_tag(ksets)
    assert tag.startswith("+knowledge-") and tag == knowledge_tag([*sets, *reversed(ksets)])
    root = work / f"tiny{data_tag(sets)}"
    assert [b[:4] for b in built] == [
        ("knowledge", "minilm", "auto", 10),
        (f"knowledge{tag}", "minilm", "MEAN", 3),
    ]
    assert built[1][4] == str(root / f"knowledge{tag}")
    llm_run = json.loads((root / f"runs{tag}" / "shared_bottom-llm-seed0" / "run.json").read_text())
    assert f"knowledge{tag}" in llm_run["knowledge"]["path"]
    assert not (root / f"runs{tag}" / "shared_bottom-plain-seed0").exists()  # plain runs are shared
    md = (tmp_path / "k.md").read_text()
    assert "1 runs trained, 1 reused" in md and "| shared_bottom | +LLM4MSR |" in md
    assert "- tiny: model random, pooling MEAN, dimension 16, one-pass" in md  # from the manifest
    assert "Knowledge: knowledge.pooling=MEAN knowledge.max_history_per_scenario=3" in md
    name = report_path(["ml-100k"], [*sets, *ksets], PROTOCOLS["random"], False, None, False).name
    assert name == f"ranker-ml-100k-random{data_tag(sets)}{tag}.md"


@pytest.mark.parametrize(
    "key", ["knowledge.snapshot_root=/x", "knowledge.backend=vllm", "knowledge.poolin=MEAN"]
)
def test_bad_knowledge_overrides_fail_before_anything_runs(key, capsys):
    assert main(["--quick", "--set", key]) == 2
    assert key.split("=")[0].split(".")[1] in capsys.readouterr().err


def test_a_dataset_built_before_a_new_data_key_is_still_reused(tmp_path):
    """Before: adding movielens.max_users (default None: all users, what was built) made every
    ML-100K dataset built earlier 'built with other data settings', so its runs could not be reused."""
    from bench.ranker import prepare_data
    from llm4msr.config import DataConfig

    cfg = DataConfig.model_validate(
        {"dataset": "synthetic", "synthetic": {"n_users": 20, "n_items": 15, "n_interactions": 1000}}
    )
    data_dir = prepare_data(cfg, tmp_path / "data")
    manifest = data_dir / "manifest.json"
    doc = json.loads(manifest.read_text())
    del doc["source"]["config"]["movielens"]["max_users"]  # as written before the key existed
    manifest.write_text(json.dumps(doc))
    assert prepare_data(cfg, data_dir) == data_dir
    doc["source"]["config"]["seed"] = cfg.seed + 1  # a real difference is still refused
    manifest.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"built with other data settings \(\['seed'\]"):
        prepare_data(cfg, data_dir)
