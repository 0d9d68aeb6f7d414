"""Export: parity for every backbone with and without LLM4MSR, refusal on parity failure, fallback
to the legacy exporter, the manifest of a really trained run, and the CLI's errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from feature_store.dataset import load_dataset
from llm4msr.config import ExportConfig, TrainConfig
from ranker import export as E
from ranker.features import build_spec
from ranker.model import build_model
from ranker.serving import artifact as A
from tests.ranker.helpers import make_dataset
from tests.serving.conftest import DIM

BACKBONES = ["shared_bottom", "mmoe", "ple", "star", "pepnet", "m2m"]


@pytest.fixture(scope="module")
def tiny_ds(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    out, _ = make_dataset(tmp_path_factory.mktemp("export_data") / "data")
    return load_dataset(out)


def tiny_source(ds, backbone: str, use_llm: bool, model: torch.nn.Module | None = None) -> E.ExportSource:  # noqa: ANN001
    spec = build_spec(ds, DIM if use_llm else 0)
    torch.manual_seed(0)
    if model is None:
        cfg = TrainConfig(
            backbone=backbone,
            use_llm=use_llm,
            hidden_dims=[16, 8],
            embedding_dim=4,
            meta={"knowledge_proj_dim": 8, "rank": 2},
        )
        model = build_model(spec, cfg)
        # Random-init models sit near 0.5 and zero-initialised meta layers ignore knowledge: perturb
        # every parameter (seeded) so scores spread and knowledge matters, making parity a real test.
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    users, items = E.lookups_from_spec(spec, ds.users, ds.items)
    return E.ExportSource(
        model=model.eval(),
        layout=E.layout_from_spec(spec),
        vocabs=spec.vocabs,
        users=users,
        items=items,
        knowledge_dim=spec.knowledge_dim,
        use_llm=use_llm,
        knowledge={"family": "fam", "snapshot_id": "snap"},
        scenarios=spec.scenario_ids(),
    )


@pytest.mark.slow
@pytest.mark.parametrize("use_llm", [True, False], ids=["llm4msr", "plain"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_model_exports_with_parity(tiny_ds, tmp_path: Path, backbone: str, use_llm: bool) -> None:  # noqa: ANN001
    src = tiny_source(tiny_ds, backbone, use_llm)
    report = E.export_source(src, tmp_path / "m", ExportConfig())
    assert report.exporter == "dynamo"
    assert report.parity["passed"] and report.parity["max_abs_diff"] <= 1e-5
    seen = {(c["batch"], c["scenarios"], c["fallback"]) for c in report.parity["cases"]}
    for b in (1, 2, 7, 512):
        assert (b, "single", "none" if b == 1 else "some") in seen and (
            b,
            "mixed",
            "all" if b == 1 else "some",
        ) in seen
    assert (512, "mixed", "all") in seen
    assert [p.name for p in (tmp_path / "m").iterdir() if p.name.startswith("model.onnx")] == ["model.onnx"]

    # Independent check on fresh batches: the published file, onnxruntime vs PyTorch.
    art = A.load_artifact(tmp_path / "m")
    sess = A.open_session(art.onnx_path)
    for b, mixed, fb, seed in ((1, False, "all", 91), (7, True, "some", 92), (512, True, "some", 93)):
        x = E.make_inputs(src, b, mixed=mixed, fallback=fb, seed=seed)
        ref, got = E.torch_scores(src.model, x), E.onnx_scores(sess, x)
        assert got.shape == (b,)
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
        assert np.std(ref) > 1e-3 or b == 1  # scores actually vary, so the comparison means something
    if not use_llm:  # a plain model is served without touching the online store
        from feature_store.online import open_store
        from ranker.serving.runtime import Ranker
        from tests.serving.conftest import serve_cfg, store_cfg

        store = open_store(str(tmp_path / "online"), store_cfg())
        ranker = Ranker(tmp_path / "m", store, serve_cfg())
        users, items = src.users.ids, src.items.ids
        res = ranker.score_detailed(users[3], src.scenarios[1], items[:5])
        x = {"sparse_ids": ranker.assembler.build(users[3], src.scenarios[1], items[:5])}
        x |= {
            "user_knowledge": np.zeros((5, 1), np.float32),
            "user_has_knowledge": np.zeros(5, np.float32),
            "scenario_knowledge": np.zeros((5, 1), np.float32),
        }
        np.testing.assert_allclose(res.scores, E.torch_scores(src.model, x), atol=1e-5)
        assert res.fallback is None and ranker.readiness()[0] and store.counters.reads == 0
    # Knowledge really matters for LLM4MSR models: with vs without user knowledge differ.
    if use_llm:
        x = E.make_inputs(src, 64, mixed=True, fallback="none", seed=5)
        x_fb = dict(
            x, user_has_knowledge=np.zeros(64, np.float32), user_knowledge=np.zeros_like(x["user_knowledge"])
        )
        assert np.abs(E.onnx_scores(sess, x) - E.onnx_scores(sess, x_fb)).max() > 1e-4


class ExportSpecific(torch.nn.Module):
    """Wraps a model and behaves differently while being exported: a model that fails parity."""

    def __init__(self, inner: torch.nn.Module, offset: float = 1e-3):
        super().__init__()
        self.inner = inner
        self.offset = offset

    def forward(self, sparse_ids, user_knowledge, user_has_knowledge, scenario_knowledge):  # noqa: ANN001, ANN201
        out = self.inner(sparse_ids, user_knowledge, user_has_knowledge, scenario_knowledge)
        if torch.onnx.is_in_onnx_export():
            out = out + self.offset
        return out


class RoundingResidue(torch.nn.Module):
    """A correct model that is ill-conditioned in float32: its score carries the rounding residue of a
    large sum computed two ways (exactly zero in real arithmetic, ~scale x 1e-5 in float32), as a
    trained model whose logits come out of large cancelling terms does (the train flow's STAR +
    meta model had a row logit of -1.8 from terms whose absolute values summed to 178). onnxruntime
    and PyTorch round such sums differently, legitimately."""

    def __init__(self, inner: torch.nn.Module, k: int, scale: float):
        super().__init__()
        g = torch.Generator().manual_seed(2)
        self.inner = inner
        self.up = torch.nn.Linear(k, 256)
        self.w = torch.nn.Parameter(torch.randn(256, generator=g))
        with torch.no_grad():
            self.up.weight.copy_(torch.randn(256, k, generator=g))
            self.up.bias.zero_()
        self.scale = scale

    def forward(self, sparse_ids, user_knowledge, user_has_knowledge, scenario_knowledge):  # noqa: ANN001, ANN201
        out = self.inner(sparse_ids, user_knowledge, user_has_knowledge, scenario_knowledge)
        h = torch.relu(self.up(scenario_knowledge)) * self.scale
        return out + ((h * self.w).sum(-1) - h @ self.w)


def test_parity_failure_publishes_nothing(tiny_ds, tmp_path: Path) -> None:  # noqa: ANN001
    base = tiny_source(tiny_ds, "shared_bottom", False)
    src = tiny_source(tiny_ds, "shared_bottom", False, model=ExportSpecific(base.model))
    with pytest.raises(E.ParityError, match="refusing to publish") as info:
        E.export_source(src, tmp_path / "m", ExportConfig(parity_batch_sizes=[2, 7]))
    assert "dynamo: max |diff| 1.000e-03" in str(info.value) and "legacy" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no model dir, no temp leftovers


FAST_PARITY = {"parity_batch_sizes": [2, 7, 64], "exporter": "dynamo"}


def test_parity_absorbs_float32_rounding_but_not_a_real_mismatch(tiny_ds, tmp_path: Path) -> None:  # noqa: ANN001
    """The gate compares onnxruntime with the model's float64 evaluation, with atol plus a multiple of
    PyTorch's own float32 error: an ill-conditioned but correct model passes even where onnxruntime
    and PyTorch float32 differ by more than atol; an export that is really off does not."""
    base = tiny_source(tiny_ds, "shared_bottom", True)
    noisy = tiny_source(tiny_ds, "shared_bottom", True, model=RoundingResidue(base.model, DIM, 1.0))
    report = E.export_source(noisy, tmp_path / "m", ExportConfig(**FAST_PARITY))
    par = report.parity
    assert par["passed"] and par["reference"] == "float64"
    assert par["float32_noise"] > 1e-6  # the model is ill-conditioned: PyTorch float32 is itself off
    assert par["tolerance"] == pytest.approx(1e-5 + E.PARITY_NOISE_FACTOR * par["float32_noise"])
    assert par["max_abs_error"] <= par["tolerance"] <= 1e-5 * E.PARITY_MAX_TOLERANCE_FACTOR
    assert all({"max_abs_error", "float32_noise"} <= set(c) for c in par["cases"])
    manifest = json.loads((tmp_path / "m" / A.MANIFEST_FILE).read_text())
    assert manifest["parity"]["tolerance"] == par["tolerance"]

    # The same ill-conditioned model, exported wrong by 1e-3: refused.
    wrong = tiny_source(tiny_ds, "shared_bottom", True, model=ExportSpecific(noisy.model))
    with pytest.raises(E.ParityError, match="refusing to publish") as info:
        E.export_source(wrong, tmp_path / "w", ExportConfig(**FAST_PARITY))
    assert re.search(
        r"dynamo: max \|diff\| 1\.0\d+e-03, max \|onnx - float64\| 1\.0\d+e-03 > tolerance", str(info.value)
    )
    assert not (tmp_path / "w").exists()


def test_small_mismatch_of_a_well_conditioned_model_is_refused(tiny_ds, tmp_path: Path) -> None:  # noqa: ANN001
    """A model whose float32 evaluation is accurate keeps a gate close to atol: an export that is off
    by 5e-5 (5 x atol) fails."""
    base = tiny_source(tiny_ds, "shared_bottom", False)
    src = tiny_source(tiny_ds, "shared_bottom", False, model=ExportSpecific(base.model, offset=5e-5))
    with pytest.raises(E.ParityError, match="refusing to publish") as info:
        E.export_source(src, tmp_path / "m", ExportConfig(**FAST_PARITY))
    assert "max |diff| 5.0" in str(info.value) and "> tolerance 1." in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_model_unstable_in_float32_is_refused_with_the_reason(tiny_ds, tmp_path: Path) -> None:  # noqa: ANN001
    """When PyTorch's own float32 scores are too far from float64, parity cannot be established: the
    allowance is capped and the error says why, instead of passing anything."""
    base = tiny_source(tiny_ds, "shared_bottom", True)
    src = tiny_source(tiny_ds, "shared_bottom", True, model=RoundingResidue(base.model, DIM, 100.0))
    with pytest.raises(E.ParityError, match="numerically unstable in float32"):
        E.export_source(src, tmp_path / "m", ExportConfig(**FAST_PARITY))
    assert list(tmp_path.iterdir()) == []


class DataDependent(torch.nn.Module):
    """Python control flow on a tensor value: torch.export (dynamo) cannot export it, tracing can."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, sparse_ids, user_knowledge, user_has_knowledge, scenario_knowledge):  # noqa: ANN001, ANN201
        out = self.inner(sparse_ids, user_knowledge, user_has_knowledge, scenario_knowledge)
        if float(user_has_knowledge.sum()) >= 0.0:  # always true, but data dependent
            return out
        return out * 0


@pytest.mark.slow
def test_auto_falls_back_to_legacy_exporter(tiny_ds, tmp_path: Path) -> None:  # noqa: ANN001
    base = tiny_source(tiny_ds, "mmoe", True)
    src = tiny_source(tiny_ds, "mmoe", True, model=DataDependent(base.model))
    report = E.export_source(src, tmp_path / "m", ExportConfig(parity_batch_sizes=[1, 2, 7, 64]))
    assert report.exporter == "legacy"
    assert report.attempts[0]["exporter"] == "dynamo" and not report.attempts[0]["ok"]
    manifest = json.loads((tmp_path / "m" / A.MANIFEST_FILE).read_text())
    assert manifest["exporter"] == "legacy" and manifest["parity"]["passed"]
    assert manifest["inputs"][0]["shape"][0] not in (1, 2, 4, 7, 64)  # batch stays symbolic
    with pytest.raises(E.ExportError, match="no exporter produced"):
        E.export_source(src, tmp_path / "d", ExportConfig(exporter="dynamo", parity_batch_sizes=[2]))
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_trained_run_manifest(trained) -> None:  # noqa: ANN001
    m = json.loads((trained.model_dir / A.MANIFEST_FILE).read_text())
    run = json.loads((trained.run_dir / "run.json").read_text())
    assert m["exporter"] == "dynamo" and m["parity"]["passed"] and m["parity"]["atol"] == 1e-5
    assert [i["name"] for i in m["inputs"]] == list(A.ALL_INPUTS)
    assert m["inputs"][0]["dtype"] == "int64" and m["inputs"][1]["shape"][1] == DIM
    assert m["knowledge"]["family"] == run["knowledge"]["family"] and m["knowledge"]["dimension"] == DIM
    assert m["knowledge"]["snapshot_id"] == run["knowledge"]["snapshot_id"]
    assert m["training_run"]["path"] == str(trained.run_dir.resolve())
    assert m["metrics"]["final"]["overall"]["auc"] == pytest.approx(
        json.loads((trained.run_dir / "metrics.json").read_text())["final"]["overall"]["auc"]
    )
    assert m["layout"]["scenario_feature"] == "scenario_id" and m["scenarios"] == ["s0", "s1", "s2"]
    assert m["lookups"]["users"]["rows"] == 60 and m["lookups"]["items"]["rows"] == 40
    for kind in ("float16", "int8"):
        v = m["variants"][kind]
        assert (trained.model_dir / v["file"]).stat().st_size == v["bytes"] > 0
        assert v["eval_rows"] > 0 and v["auc"] is not None and abs(v["auc_delta"]) < 0.05
        assert v["max_abs_diff"] < 0.1
    assert m["variants"]["float16"]["bytes"] < m["model"]["bytes"]
    assert m["provenance"]["packages"]["onnxruntime"]
    # The lookup tables reproduce the spec's own encoding of every user and item.
    art = A.load_artifact(trained.model_dir)
    ds = load_dataset(trained.data_dir)
    rows = ds.interactions.head(50)
    from ranker.features import FeatureSpec

    spec = FeatureSpec.load(trained.run_dir)
    expected = spec.encode_rows(rows, ds.users, ds.items)
    got = art.assembler.build_rows(
        rows["user_id"].to_list(), rows["scenario_id"].to_list(), rows["item_id"].to_list()
    )
    np.testing.assert_array_equal(got, expected)


def test_export_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.cli import main

    assert main(["export", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "m")]) == 2
    assert "nope" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    assert main(["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "m")]) == 2
    assert "is not a complete training run" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
