"""Training flow: current data + current knowledge snapshot -> train -> evaluate -> export (parity
gated) -> register in the model registry, unless the candidate is worse than the current model.

The snapshot must have been built from the dataset id being trained on (`check-knowledge-dataset`,
before any training); `train.allow_foreign_knowledge` goes ahead and the registry entry says so.

Tasks pass run/model folders and content hashes. `train-ranker` is cached on (dataset content id,
snapshot manifest hash, train/eval config), so re-running the flow on unchanged inputs reuses the
run instead of training again; `export-model` is cached on the run's weights hash. Both store their
result as plain JSON in `pipelines.results_dir` (`common.cached_result`); Prefect persists no task result.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from prefect import flow, task

from llm4msr.config import ExportConfig, Settings
from pipelines.flows.common import (
    RESULT_SERIALIZER,
    StageTimer,
    cached_result,
    file_digest,
    folder_digest,
    load_settings,
    results_folder,
    run_logger,
    section_digest,
    with_config,
    write_report,
)
from pipelines.flows.knowledge import FlowError, locate_dataset
from pipelines.flows.registry import Decision, ModelRegistry, decide
from pipelines.flows.results import (
    Evaluation,
    ExportedModel,
    KnowledgeRef,
    Registration,
    TrainedRun,
    TrainFlowResult,
)


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def validation_auc(metrics: dict[str, Any]) -> float | None:
    """The overall validation AUC of a run's metrics.json (the registry's promotion criterion).

    The ranker writes it as the top-level `best_valid_auc` (the epoch/LR kept by early stopping);
    `final` holds test-split metrics and is never used for promotion.
    """
    for key in ("best_valid_auc", "valid_auc", "validation_auc"):
        if _finite(metrics.get(key)) is not None:
            return _finite(metrics[key])
    return None


# --------------------------------------------------------------------------- tasks
@task(name="current-knowledge", persist_result=False)
def current_knowledge(snapshot_root: str, use_llm: bool) -> KnowledgeRef:
    """The offline store's current snapshot (path + manifest hash); required unless training --no-llm."""
    from feature_store.offline_store import OfflineStore

    path = OfflineStore(snapshot_root).current_path()
    if path is None:
        if use_llm:
            raise FlowError(
                f"no current knowledge snapshot in {snapshot_root}: run the nightly-knowledge flow first "
                "(or train without knowledge: --set train.use_llm=false)"
            )
        return KnowledgeRef(path=None, snapshot_id=None, digest=None)
    return KnowledgeRef(path=str(path), snapshot_id=path.name, digest=folder_digest(path))


@task(name="check-knowledge-dataset", persist_result=False)
def check_knowledge_dataset(dataset_dir: str, snapshot_dir: str, allow_foreign: bool) -> dict[str, Any]:
    """Refuse a current snapshot built from another dataset id than the data the flow trains on
    (its prompts may describe held-out rows); returns the record kept in the report and registry."""
    from feature_store.dataset import read_version
    from feature_store.knowledge_snapshot import ForeignKnowledgeError, check_dataset, read_manifest

    try:
        return check_dataset(
            read_manifest(snapshot_dir),
            snapshot_dir,
            read_version(dataset_dir),
            dataset_dir,
            allow_foreign=allow_foreign,
        )
    except ForeignKnowledgeError as exc:
        raise FlowError(
            f"train flow: {exc}; the nightly-knowledge flow rebuilds it on the current data"
        ) from exc


def _run_changed(result: TrainedRun) -> str | None:
    """A cached training run holds only while its weights are still the ones it recorded."""
    run_dir = result.run_dir
    if not run_dir or file_digest(Path(run_dir) / "model.safetensors") != result.weights_sha256:
        return f"the weights of run {run_dir} are missing or changed"
    return None


def _export_gone(result: ExportedModel) -> str | None:
    """A cached export holds only while its model folder is still there."""
    if not result.model_dir or not (Path(result.model_dir) / "manifest.json").is_file():
        return f"the exported model {result.model_dir} is missing"
    return None


@task(name="train-ranker", persist_result=False)
@cached_result("dataset_digest", "knowledge_digest", "train_digest", check=_run_changed)
def train_ranker(
    config: str | None,
    overrides: list[str] | None,
    dataset_dir: str,
    dataset_digest: str | None,
    knowledge_dir: str | None,
    knowledge_digest: str | None,
    train_digest: str,
    runs_dir: str,
    results_dir: str,
) -> TrainedRun:
    """Train backbone + meta networks; returns the run folder (contract 4), cached as JSON. With
    train.select=auto both variants are trained and the one kept on validation is returned, with
    the decision."""
    from ranker.train import train

    settings = load_settings(config, overrides)
    out = Path(runs_dir) / f"flow-{time.strftime('%Y%m%dT%H%M%S')}-{train_digest[:8]}"
    t0 = time.perf_counter()
    selection = None
    if settings.train.select == "auto" and settings.train.use_llm and knowledge_dir is not None:
        from ranker.selection import train_selected

        chosen = train_selected(settings, Path(dataset_dir), knowledge_dir, out)
        run_dir, selection = chosen.kept.run_dir, chosen.decision.to_dict()  # ranker.selection logs it
    else:
        run_dir = train(settings, Path(dataset_dir), knowledge_dir, out).run_dir
    run_logger().debug(
        "trained %s in %.1fs -> %s", settings.train.backbone, time.perf_counter() - t0, run_dir
    )
    return TrainedRun(
        run_dir=str(run_dir),
        weights_sha256=file_digest(Path(run_dir) / "model.safetensors"),
        selection=selection,
    )


@task(name="evaluate-run", persist_result=False)
def evaluate_run(run_dir: str) -> Evaluation:
    """Read the run's metrics: overall validation AUC (for promotion) and the final per-scenario metrics."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise FlowError(f"training run {run_dir} has no metrics.json (contract 4)")
    metrics = json.loads(path.read_text())
    auc = validation_auc(metrics)
    final = metrics.get("final", {}) if isinstance(metrics.get("final"), dict) else {}
    run_logger().debug(
        "run %s: validation AUC %s", Path(run_dir).name, "n/a" if auc is None else f"{auc:.4f}"
    )
    return Evaluation(valid_auc=auc, final=final)


@task(name="export-model", persist_result=False)
@cached_result("run_dir", "weights_sha256", "export", check=_export_gone)
def export_model(
    run_dir: str,
    weights_sha256: str | None,
    export: dict[str, Any],
    staging_dir: str,
    dataset_dir: str,
    results_dir: str,
) -> ExportedModel:
    """ONNX export with the parity gate (ranker.export refuses to publish a model that fails parity)."""
    from ranker.export import export_run

    out = Path(staging_dir) / f"{Path(run_dir).name}-{(weights_sha256 or 'noweights')[:8]}"
    if (out / "manifest.json").is_file():  # idempotent: the same run was exported before
        manifest = json.loads((out / "manifest.json").read_text())
        parity = manifest.get("parity", {})
        run_logger().info("export %s already present; reusing it", out)
        return ExportedModel(model_dir=str(out), parity=parity, exporter=manifest.get("exporter"))
    report = export_run(Path(run_dir), out, ExportConfig.model_validate(export), dataset_dir=dataset_dir)
    # ranker.export logs report.headline() itself: each event is logged once
    return ExportedModel(model_dir=str(report.model_dir), parity=report.parity, exporter=report.exporter)


@task(name="register-model", persist_result=False)
def register_model(
    model_dir: str, registry_dir: str, entry: dict[str, Any], max_auc_regression: float, keep: int
) -> Registration:
    """Promote the candidate into the registry unless it is worse than the current model by > the margin."""
    logger = run_logger()
    registry = ModelRegistry(registry_dir)
    current = registry.current_entry()
    if (
        current is not None
        and current.get("weights_sha256")
        and current.get("weights_sha256") == entry.get("weights_sha256")
    ):
        mid = registry.current_id()
        logger.info("model %s (same weights) is already the current model: nothing to register", mid)
        return Registration(
            decision=Decision(
                True,
                f"same weights as the current model {mid}",
                entry.get("valid_auc"),
                current.get("valid_auc"),
                mid,
                max_auc_regression,
            ),
            registered=False,
            already_current=True,
            model_id=mid,
            current_model_id=mid,
            model_dir=str(registry.path_of(str(mid))),
        )
    decision = decide(
        entry.get("valid_auc"),
        None if current is None else current.get("valid_auc"),
        registry.current_id(),
        max_auc_regression,
    )
    out = Registration(
        decision=decision, registered=False, model_id=None, current_model_id=registry.current_id()
    )
    if not decision.accept:
        logger.warning("model NOT registered: %s", decision.reason)
        return out
    mid = registry.register(model_dir, {**entry, "decision": decision.to_dict()})
    deleted = registry.retain(keep)
    logger.info(
        "registered model %s as current (%s)%s",
        mid,
        decision.reason,
        f"; removed old versions {deleted}" if deleted else "",
    )
    out.registered, out.model_id, out.current_model_id = True, mid, mid
    out.model_dir = str(registry.path_of(mid))
    return out


# --------------------------------------------------------------------------- flow
@flow(name="train", log_prints=True, persist_result=False, result_serializer=RESULT_SERIALIZER)
def train_flow(config: str | None = None, overrides: list[str] | None = None) -> TrainFlowResult:
    """Train on the current data and knowledge snapshot, export with parity, register if not worse.

    Returns a report: run folder, validation AUC, export, the registry decision (`registered`,
    `reason`) and seconds per stage. A refused model is not an error: the flow completes and says
    why in the log and the report.
    """
    settings: Settings = load_settings(config, overrides)
    logger = run_logger()
    timer = StageTimer()

    with timer.stage("data"):
        dataset = with_config(locate_dataset, settings)(
            settings.data.model_dump(mode="json"), settings.pipelines.build_data_if_missing
        )
    with timer.stage("knowledge"):
        know = with_config(current_knowledge, settings)(
            settings.knowledge.snapshot_root, settings.train.use_llm
        )
        if settings.train.use_llm:
            know.dataset_check = with_config(check_knowledge_dataset, settings)(
                dataset.path, know.path, settings.train.allow_foreign_knowledge
            )
    train_digest = section_digest(settings, "train", "eval")
    with timer.stage("train"):
        run = with_config(train_ranker, settings)(
            config,
            overrides,
            dataset.path,
            dataset.digest,
            know.path if settings.train.use_llm else None,
            know.digest if settings.train.use_llm else None,
            train_digest,
            settings.train.runs_dir,
            results_folder(settings),
        )
    with timer.stage("evaluate"):
        ev = with_config(evaluate_run, settings)(run.run_dir)
    with timer.stage("export"):
        exp = with_config(export_model, settings)(
            run.run_dir,
            run.weights_sha256,
            settings.export.model_dump(mode="json"),
            str(Path(settings.pipelines.work_dir) / "exports"),
            dataset.path,
            results_folder(settings),
        )
    if not exp.parity.get("passed", False):
        raise FlowError(f"export {exp.model_dir} did not pass parity: {exp.parity}")
    entry = {
        "valid_auc": ev.valid_auc,
        "run_dir": run.run_dir,
        "weights_sha256": run.weights_sha256,
        "dataset_dir": dataset.path,
        "dataset_digest": dataset.digest,
        "knowledge_snapshot_id": know.snapshot_id,
        "knowledge_digest": know.digest,
        "knowledge_foreign": bool((know.dataset_check or {}).get("foreign")),
        "exporter": exp.exporter,
        "parity_max_abs_diff": exp.parity.get("max_abs_diff"),
        "train_config_digest": train_digest,
        "final_metrics": ev.final,
        # train.select=auto: which variant was kept and the validation numbers that decided it
        "selection": run.selection,
    }
    with timer.stage("register"):
        reg = with_config(register_model, settings)(
            exp.model_dir,
            settings.pipelines.registry_dir,
            entry,
            settings.pipelines.max_auc_regression,
            settings.pipelines.keep_models,
        )
    report = TrainFlowResult(
        flow="train",
        dataset=dataset,
        knowledge=know,
        run=run,
        evaluation=ev,
        export=exp,
        registry=reg,
        registered=reg.registered,
        reason=reg.decision.reason,
        timings=timer.timings,
    )
    logger.info(
        "train flow done: %s (%s) in %.1fs",
        "registered " + str(reg.model_id) if reg.registered else "NOT registered",
        reg.decision.reason,
        sum(timer.timings.values()),
    )
    report.report_path = str(write_report(settings, "train", report))
    return report
