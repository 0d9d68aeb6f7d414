"""End-to-end training runs on tiny data: run directory contract, reload parity, errors, CLI, report."""

import json

import numpy as np
import polars as pl
import pytest
import torch

from feature_store.knowledge_snapshot import SnapshotError
from pipelines.cli import main as cli
from ranker.backbones import BACKBONES
from ranker.model_io import example_inputs, load_run
from ranker.train import KnowledgeInputs, encode, train
from tests.ranker.conftest import fast_settings
from tests.ranker.helpers import make_snapshot

RUN_FILES = {
    "config.yaml",
    "feature_spec.json",
    "model.safetensors",
    "run.json",
    "metrics.json",
    "predictions.parquet",
    "valid_predictions.parquet",
    "checkpoints",
}


@pytest.fixture(scope="module")
def star_run(tmp_path_factory, tiny_data, tiny_knowledge):
    out = tmp_path_factory.mktemp("runs") / "star"
    result = train(fast_settings("train.epochs=2", "train.backbone=star"), tiny_data, tiny_knowledge, out)
    return out, result


def test_run_directory_is_complete(star_run, tiny_data):
    out, result = star_run
    assert {p.name for p in out.iterdir()} == RUN_FILES
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers
    info = json.loads((out / "run.json").read_text())
    assert info["knowledge"]["dimension"] == 16 and info["knowledge"]["snapshot_id"]
    assert info["dataset"]["version"] and info["seed"] == 0 and len(info["timings"]["epoch_seconds"]) == 2
    assert info["fallback"]["users"] == pytest.approx(5 / 60)  # the snapshot leaves 5 of 60 users out
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert metrics["best_is_last_epoch"] == (metrics["best_epoch"] == 2)
    assert set(metrics["final"]["per_scenario"]) == {"s0", "s1", "s2"}
    for m in metrics["final"]["per_scenario"].values():
        assert 0.0 <= m["auc"] <= 1.0 and m["logloss"] > 0 and m["recall@10"] >= 0
    pred = pl.read_parquet(out / "predictions.parquet")
    assert pred.columns == ["user_id", "item_id", "scenario_id", "label", "score", "source"]
    test_rows = pl.read_parquet(tiny_data / "interactions.parquet").filter(pl.col("split") == "test").height
    assert pred.filter(pl.col("source") == "test").height == test_rows
    sampled = pred.filter(pl.col("source") == "sampled")
    assert sampled.height > 0 and (sampled["label"] == 0).all()
    # sampled negatives come from the same scenario and are not the user's positives there
    positives = pl.read_parquet(tiny_data / "interactions.parquet").filter(pl.col("label") == 1)
    assert sampled.join(positives, on=["user_id", "item_id", "scenario_id"], how="semi").height == 0


def test_load_run_reproduces_predictions(star_run, tiny_data, tiny_knowledge):
    out, _ = star_run
    model, spec = load_run(out)
    from feature_store.dataset import load_dataset
    from ranker.knowledge import load_knowledge

    ds = load_dataset(tiny_data)
    kt = load_knowledge(tiny_knowledge)
    test = ds.interactions.filter(pl.col("split") == "test").select(
        "user_id", "item_id", "scenario_id", "label"
    )
    enc = encode(test, ds, spec, kt, "test")
    with torch.no_grad():
        scores = model(**KnowledgeInputs(kt).batch(enc, slice(None))).numpy()
    saved = (
        pl.read_parquet(out / "predictions.parquet").filter(pl.col("source") == "test")["score"].to_numpy()
    )
    np.testing.assert_allclose(scores, saved, atol=1e-6)
    assert model(**example_inputs(spec, 3)).shape == (3,)


def test_same_seed_same_result(tmp_path, tiny_data, tiny_knowledge):
    s = fast_settings("train.backbone=shared_bottom")
    a = train(s, tiny_data, tiny_knowledge, tmp_path / "a").metrics["final"]["overall"]
    b = train(s, tiny_data, tiny_knowledge, tmp_path / "b").metrics["final"]["overall"]
    assert a == b


@pytest.mark.slow
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbone_trains_with_and_without_meta(tmp_path, tiny_data, tiny_knowledge, backbone):
    for use_llm in (False, True):
        s = fast_settings(f"train.backbone={backbone}", f"train.use_llm={use_llm}")
        r = train(s, tiny_data, tiny_knowledge if use_llm else None, tmp_path / f"{use_llm}")
        assert r.metrics["epochs"][0]["train_loss"] < 0.8
        assert np.isfinite(r.metrics["final"]["overall"]["auc"])
        assert (r.run_info["parameters"]["user_meta"] > 0) == use_llm


def test_lr_sweep_keeps_best_and_records_all(tmp_path, tiny_data, tiny_knowledge):
    s = fast_settings("train.backbone=shared_bottom", "train.lr_sweep=[0.000001,0.01]")
    r = train(s, tiny_data, tiny_knowledge, tmp_path / "sweep")
    assert [x["lr"] for x in r.metrics["lr_sweep"]] == [1e-6, 0.01]
    best = max(r.metrics["lr_sweep"], key=lambda x: x["best_valid_auc"])
    assert r.lr == best["lr"]
    assert "lr: 0.01" in (tmp_path / "sweep" / "config.yaml").read_text() or r.lr != 0.01


def test_knowledge_dimension_mismatch(tmp_path, tiny_data, tiny_knowledge):
    with pytest.raises(SnapshotError, match=r"dimension 16.*expects 32"):
        train(fast_settings("train.knowledge_dim=32"), tiny_data, tiny_knowledge, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_scenario_missing_from_snapshot(tmp_path, tiny_data):
    root = make_snapshot(tmp_path / "store", tiny_data, dim=8, drop_scenarios=1)
    with pytest.raises(SnapshotError, match=r"scenario_id.*\['s2'\].*no vector"):
        train(fast_settings(), tiny_data, root, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_llm_needs_knowledge(tmp_path, tiny_data):
    with pytest.raises(ValueError, match="no knowledge snapshot"):
        train(fast_settings(), tiny_data, None, tmp_path / "x")
    with pytest.raises(SnapshotError, match="neither a knowledge snapshot"):
        train(fast_settings(), tiny_data, tmp_path, tmp_path / "x")


def test_existing_run_dir_is_not_overwritten(star_run, tiny_data, tiny_knowledge):
    out, _ = star_run
    with pytest.raises(FileExistsError, match="already exists"):
        train(fast_settings(), tiny_data, tiny_knowledge, out)


def test_cli_train_seeds_and_report(tmp_path, tiny_data, tiny_knowledge, capsys):
    sets = [
        a
        for s in [
            "train.threads=1",
            "train.epochs=1",
            "train.hidden_dims=[16]",
            "train.embedding_dim=4",
            "train.meta.knowledge_proj_dim=8",
            "eval.n_negatives=10",
        ]
        for a in ("--set", s)
    ]
    base = ["train", "--data", str(tiny_data), "--backbone", "shared_bottom", "--seeds", "0,1", *sets]
    assert cli([*base, "--knowledge", str(tiny_knowledge), "--out", str(tmp_path / "llm")]) == 0
    assert cli([*base, "--no-llm", "--out", str(tmp_path / "plain")]) == 0
    assert (tmp_path / "llm" / "seed_1" / "model.safetensors").is_file()
    assert (
        cli(["report", str(tmp_path / "llm"), str(tmp_path / "plain"), "--out", str(tmp_path / "rep")]) == 0
    )
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| shared_bottom | plain | s0 |" in md and "| shared_bottom | +LLM4MSR | s0 |" in md
    assert "ΔAUC" in md and " ± " in md
    assert (tmp_path / "rep" / "auc_per_scenario.png").read_bytes()[:4] == b"\x89PNG"
    # user mistakes: clear message, exit code 2
    assert cli(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "z")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli([*base, "--seeds", "a,b", "--no-llm", "--out", str(tmp_path / "z")]) == 2
    assert cli(["report", str(tmp_path / "rep"), "--out", str(tmp_path / "r2")]) == 2


@pytest.mark.parametrize("backbone", ["shared_bottom", "star"])
def test_warm_start_first_trains_the_plain_model_then_keeps_the_better(
    tmp_path, tiny_data, tiny_knowledge, backbone
):
    """meta.warm_start: the plain phase is the plain backbone (same validation AUC every epoch,
    the meta networks frozen at their identity start), the knowledge phase trains only the meta
    networks on its best epoch, and the run keeps the best validation epoch of both (a knowledge
    epoch only beyond the paired gate, meta.warm_start_min_z)."""
    common = ("train.epochs=3", "train.patience=3", f"train.backbone={backbone}")
    plain = train(fast_settings(*common, "train.use_llm=false"), tiny_data, None, tmp_path / "plain")
    warm = train(
        fast_settings(*common, "train.meta.warm_start=true"), tiny_data, tiny_knowledge, tmp_path / "warm"
    )
    epochs = warm.metrics["epochs"]
    phase1 = [e for e in epochs if e["phase"] == "plain"]
    phase2 = [e for e in epochs if e["phase"] == "knowledge"]
    assert [e["phase_epoch"] for e in phase1] == [1, 2, 3] and phase2
    assert [e["epoch"] for e in epochs] == list(range(1, len(epochs) + 1))
    assert [e["valid_auc"] for e in phase1] == pytest.approx(
        [e["valid_auc"] for e in plain.metrics["epochs"]], abs=1e-6
    )
    # the best of the plain epochs and the knowledge epochs that clear the paired gate (2 SE)
    eligible = phase1 + [e for e in phase2 if e["z_vs_plain"] is not None and e["z_vs_plain"] > 2.0]
    assert warm.best_valid_auc == max(e["valid_auc"] for e in eligible)
    assert warm.best_valid_auc >= plain.best_valid_auc - 1e-6  # the plain phase is matched above to 1e-6
    metrics = json.loads((tmp_path / "warm" / "metrics.json").read_text())
    assert metrics["best_is_last_epoch"] == (warm.best_epoch == len(epochs) and len(phase2) == 3)
    # the backbone's and embeddings' weights are the plain run's best epoch, untouched (buffers such
    # as STAR's running statistics follow the meta-transformed input, as training-mode batch
    # statistics do)
    warm_params = dict(load_run(tmp_path / "warm")[0].named_parameters())
    plain_params = dict(load_run(tmp_path / "plain")[0].named_parameters())
    shared = [k for k in plain_params if k.startswith(("embedding.", "backbone."))]
    assert shared
    for key in shared:
        assert torch.equal(warm_params[key], plain_params[key]), key


def test_meta_lr_scale_slows_only_the_meta_networks(tmp_path, tiny_data, tiny_knowledge):
    """meta.lr_scale: the meta networks' parameters step at lr × lr_scale (Adam steps scale with
    the learning rate), so the zero-initialised generators move about that much less."""
    common = ("train.epochs=1", "train.backbone=shared_bottom", "train.lr_schedule=none")
    moved = {}
    for scale in (1.0, 0.01):
        train(
            fast_settings(*common, f"train.meta.lr_scale={scale}"),
            tiny_data,
            tiny_knowledge,
            tmp_path / str(scale),
        )
        params = dict(load_run(tmp_path / str(scale))[0].named_parameters())
        zero_init = [k for k in params if k.startswith(("user_meta.", "scenario_meta.")) and ".gen_v." in k]
        assert zero_init
        moved[scale] = sum(float(params[k].detach().abs().max()) for k in zero_init)
    assert 0 < moved[0.01] < 0.05 * moved[1.0]


def test_warm_start_gate_keeps_the_plain_model_unless_knowledge_clears_it(
    tmp_path, tiny_data, tiny_knowledge
):
    """meta.warm_start_min_z: a knowledge epoch replaces the plain phase's best only beyond that many
    paired SE on validation; with an unreachable bar the kept model is the plain phase's best epoch,
    and every knowledge epoch records its z against it."""
    common = (
        "train.epochs=3",
        "train.patience=3",
        "train.backbone=shared_bottom",
        "train.meta.warm_start=true",
    )
    gated = train(
        fast_settings(*common, "train.meta.warm_start_min_z=1e9"),
        tiny_data,
        tiny_knowledge,
        tmp_path / "gated",
    )
    epochs = gated.metrics["epochs"]
    plain = [e for e in epochs if e["phase"] == "plain"]
    knowledge = [e for e in epochs if e["phase"] == "knowledge"]
    assert knowledge and all(e["z_vs_plain"] is not None for e in knowledge)
    assert gated.best_epoch in [e["epoch"] for e in plain]
    assert gated.best_valid_auc == max(e["valid_auc"] for e in plain)
    open_gate = train(
        fast_settings(*common, "train.meta.warm_start_min_z=0"), tiny_data, tiny_knowledge, tmp_path / "open"
    )
    # with no bar, any knowledge epoch whose z is positive and AUC higher may be kept
    best = max(open_gate.metrics["epochs"], key=lambda e: e["valid_auc"])
    assert open_gate.best_valid_auc == best["valid_auc"] >= gated.best_valid_auc


def test_mask_described_needs_a_snapshot_that_records_its_history_length(tmp_path, tiny_data):
    """A snapshot without max_history_per_scenario cannot say which rows its prompts list: a clear
    error before training, and no run directory left behind."""
    old = make_snapshot(tmp_path / "old", tiny_data, dim=16, max_history=None)
    with pytest.raises(SnapshotError, match="max_history_per_scenario"):
        train(fast_settings("train.meta.mask_described=true"), tiny_data, old, tmp_path / "run")
    assert not (tmp_path / "run").exists()
